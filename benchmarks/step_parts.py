"""Where a stage-1 step's time goes: the network with one kind of op made (nearly) free.

    PYTHONPATH=.:tests:benchmarks python benchmarks/step_parts.py
    PYTHONPATH=.:tests:benchmarks python benchmarks/step_parts.py --layer Mixed_3b --kernels 4

What is timed: I3D truncated after `--layer`, forward plus the input gradient of the mean of
one channel per video (stage 1's one-channel readout, K videos vmapped, traced inside
`kvjax.ops.reverse_mode_only()`, compiled with kvjax.jit): the network part of a stage-1 step
at the `paper` preset (16x128x128 videos, model input 32x224x224), without the transform,
the parameterisation and the optimiser. Each part is that program with one change, for
measurement only (its values are wrong):
- `base`: unchanged;
- `no_pools`: every max pool replaced by a strided slice of the same output shape (a pool's
  cost is memory traffic; its floor is zero);
- `cheap_strided_convs`: every strided convolution (I3D: the stem, Conv3d_1a_7x7) replaced by
  a strided slice and one 3 -> 64 matrix product, so its FLOPs nearly vanish.
`base` minus a part is what that kind of op costs inside the network, fused as XLA fuses it.
The parts alternate round by round, in an order that rotates (the VM's drift falls on all
alike, and no part always runs first); each program is compiled anew (a fresh jit), timed as
the median of `--calls` calls; the float32 matmul rate is measured right after each, and each
part's floor is its convolutions' forward FLOPs, twice, at that rate (benchmarks/stage1.py's
floor). Results: a printed table and benchmarks/results/step_parts_<stamp>.json with the
machine.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

import kvjax
from kvjax import ops
from machine import save_results
from stage1 import (RESULTS, conv_flops, forward_gflops, machine,  # benchmarks/stage1.py
                    matmul_gflops)

SIZE = (16, 128, 128)  # the paper preset's optimised video


def _pool_as_slice(x, window, strides, padding="SAME", **_):
    """A strided slice with the pool's output shape (measurement only: wrong values)."""
    pads = ops.resolve_padding(x.shape[1:4], window, strides, padding)
    return ops._tap(x, (0, 0, 0), ops._out_sizes(x.shape[1:4], window, strides, pads), strides)


def _strided_conv_as_dot(x, w, strides, pads):
    """A strided slice and one Cin -> Cout matmul with the conv's output shape (measurement
    only: wrong values, FLOPs kt*kh*kw times fewer)."""
    xs = ops._tap(x, (0, 0, 0), ops._out_sizes(x.shape[1:4], w.shape[:3], strides, pads),
                  strides)
    return jnp.einsum("nthwc,cd->nthwd", xs, w[tuple(k // 2 for k in w.shape[:3])])


def _patch(part: str):
    if part == "base":
        return contextlib.nullcontext()
    if part == "no_pools":
        return mock.patch.object(ops, "max_pool3d", _pool_as_slice)
    if part == "cheap_strided_convs":
        return mock.patch.dict(ops.CONV_IMPLS, {"s2d": _strided_conv_as_dot})
    raise ValueError(f"unknown part {part!r}; expected one of {PARTS}")


PARTS = ("base", "no_pools", "cheap_strided_convs")


def strided_conv_gflops(features) -> tuple[float, float]:
    """The forward GFLOPs of the strided convolutions alone, counted as benchmarks/stage1.py
    counts all of them, and of what `cheap_strided_convs` leaves of them (one tap instead of
    kt*kh*kw)."""
    strided = [(math.prod(window), f) for strides, window, f in conv_flops(features, SIZE)
               if any(s > 1 for s in strides)]
    return sum(f for _, f in strided) / 1e9, sum(f / taps for taps, f in strided) / 1e9


def time_part(features, part: str, k: int, calls: int, gflop: float) -> dict:
    """One fresh compilation of `part`, then the median of `calls` timed calls; gflop: the
    part's forward GFLOPs per kernel (its floor's)."""
    videos = jax.random.uniform(jax.random.key(0), (k, *SIZE, 3))
    kernels = jnp.arange(k)

    def loss(v, ks):
        return -jax.vmap(lambda v, c: features(v, channel=c).mean())(v, ks).sum()

    with _patch(part):
        with ops.reverse_mode_only():  # as stage1.step traces its gradient
            grad = kvjax.jit(jax.grad(loss))
            t = time.perf_counter()
            jax.block_until_ready(grad(videos, kernels))
            compile_s = time.perf_counter() - t
            times = []
            for _ in range(calls):
                t = time.perf_counter()
                jax.block_until_ready(grad(videos, kernels))
                times.append(time.perf_counter() - t)
    rate = matmul_gflops(repeats=3)
    s = float(np.median(times))
    floor = 2 * gflop * k / rate
    return {"part": part, "s": s, "calls_s": times, "compile_s": compile_s,
            "forward_gflop_per_kernel": gflop, "matmul_gflops_after": rate, "floor_s": floor,
            "over_floor": s / floor}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layer", default="Mixed_4b")
    p.add_argument("--kernels", type=int, default=1, help="K videos vmapped")
    p.add_argument("--parts", default=",".join(PARTS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=4, help="timed calls per program")
    args = p.parse_args(argv)
    parts = args.parts.split(",")
    for part in parts:
        _patch(part)  # unknown names fail here, before any compiling
    info = machine()
    print(json.dumps(info), flush=True)
    model = kvjax.load_model("i3d")
    # the paper preset's gradient, as the reference's (kvjax.Config("paper").relu_grad)
    features = model.features(args.layer, relu_grad="exact")
    # counted on fresh features functions: jax.eval_shape caches a function's trace
    gflop = forward_gflops(model.features(args.layer), SIZE)
    strided, left = strided_conv_gflops(model.features(args.layer))
    gflops = {part: gflop + (left - strided if part == "cheap_strided_convs" else 0.0)
              for part in parts}
    rows = []
    for r in range(args.rounds):
        # the order rotates round by round: the part run first in a round is not always the same
        for part in parts[r % len(parts):] + parts[:r % len(parts)]:
            row = {"round": r, **time_part(features, part, args.kernels, args.calls,
                                               gflops[part])}
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = []
    base = float(np.median([q["s"] for q in rows if q["part"] == "base"])) \
        if "base" in parts else None
    print(f"\n{args.layer}, K = {args.kernels}, seconds per program (K kernels), "
          f"median of {args.rounds} rounds")
    print("| part | s | range | floor s | over floor | base minus part s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for part in parts:
        mine = [q for q in rows if q["part"] == part]
        s = float(np.median([q["s"] for q in mine]))
        item = {"part": part, "s": s, "range": [min(q["s"] for q in mine),
                                                 max(q["s"] for q in mine)],
                "floor_s": float(np.median([q["floor_s"] for q in mine])),
                "over_floor": float(np.median([q["over_floor"] for q in mine])),
                "base_minus_part_s": None if base is None else base - s}
        summary.append(item)
        delta = "" if base is None or part == "base" else f"{base - s:.3f}"
        print(f"| {part} | {s:.3f} | {item['range'][0]:.3f}-{item['range'][1]:.3f} | "
              f"{item['floor_s']:.3f} | {item['over_floor']:.2f} | {delta} |")
    info["loadavg_end"] = os.getloadavg()
    save_results({"machine": info, "args": vars(args), "size": SIZE, "rows": rows,
                  "summary": summary}, "step_parts", RESULTS)


if __name__ == "__main__":
    main()
