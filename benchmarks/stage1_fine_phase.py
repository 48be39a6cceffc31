"""What the full-size phase of coarse to fine does after the tiling, and what its learning rate
and the coarse phase's length change (an experiment behind benchmarks/results/stage1.md).

    PYTHONPATH=.:tests:benchmarks python benchmarks/stage1_fine_phase.py \
        --reference benchmarks/results/reference_quality_20261126T083941Z.json \
        --coarse 400,800 --fine-lrs 0.1,0.2 --aligns corner,centre --rolls

The task of benchmarks/stage1_coarse.py (I3D Mixed_3b, kernels 0-3, model input 16x112x112,
the `fast` preset at lr 0.2 with shift-only jitter; its first phase on 16x56x56). The coarse
phase runs once, for each count in --coarse in turn (each continuing the last); from its
states, for each tiling in --aligns (param.tile's: "corner", what optimize does for this
channel objective, or "centre") and each learning rate in --fine-lrs, the videos are tiled
(kvjax.stage1's own tiling program, a fresh Adam at that rate) and --fine steps run at full
size. The mean objective (no transform: kvjax's final activation) is measured right after the
tiling and every --every full-size steps; the reference's robust objective (--robust) of the
last videos. --rolls: the objective of the coarse videos tiled and rolled by r pixels in H and
W, for every even r (r = 0: "corner"). Built from
kvjax.stage1's programs (not `optimize`, which has one learning rate for both phases), so
one coarse phase serves every variant; the programs are the ones `optimize` runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import kvjax
from kvjax import param, stage1
from kvjax import transforms as transforms_lib
from machine import describe, save_results
from stage1_coarse import RESULTS, robust


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",")]


def _floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",")]


def program(features, config) -> tuple:
    """(weights, static part, program config) of stage 1's programs for a channel objective."""
    arrays, static = stage1.partition((features, kvjax.objectives.channel()))
    return arrays, static, stage1._program_config(config)


def run(prog, states, kernels, n: int):
    """n steps of stage 1's own step programs (as optimize groups them on this backend)."""
    n_segments, seg_len, unrolled = stage1._plan(n, 1, jax.default_backend())
    for _ in range(n_segments):
        states, _ = stage1._segment(*prog[:2], states, kernels, None if unrolled else
                                    jnp.int32(seg_len), prog[2], seg_len, unrolled)
    return states


def roll_scan(features, videos, kernels, step: int = 2) -> dict:
    """{r: mean channel objective of videos f32[K,T,h,w,3] tiled 2x2 and rolled r px in H and
    W}, for r = 0, step, ... < h (the same objective as measure's, on NumPy-tiled videos)."""
    value = jax.jit(jax.vmap(lambda v, k: jnp.mean(features(v, channel=k))))
    tiled = np.tile(np.asarray(videos), (1, 1, 2, 2, 1))
    return {r: float(np.mean(value(jnp.asarray(np.roll(tiled, (r, r), axis=(2, 3))), kernels)))
            for r in range(0, videos.shape[2], step)}


def measure(prog, states, kernels) -> tuple:
    """(videos, mean objective without transform) of the states, as optimize's result."""
    videos, values = stage1._finish(*prog[:2], states, kernels, prog[2])
    return videos, float(np.mean(values))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reference", required=True, help="a reference_torch.py quality JSON")
    p.add_argument("--coarse", type=_ints, default=[400, 800],
                   help="coarse step counts, increasing (each continues the last)")
    p.add_argument("--fine-lrs", type=_floats, default=[0.1, 0.2])
    p.add_argument("--aligns", type=lambda t: t.split(","), default=list(param.ALIGNS))
    p.add_argument("--rolls", action="store_true")
    p.add_argument("--lr", type=float, default=0.2, help="the coarse phase's Adam lr")
    p.add_argument("--fine", type=int, default=90)
    p.add_argument("--every", type=int, default=15)
    p.add_argument("--robust", action="store_true")
    p.add_argument("--layer", default=None,
                   help="another I3D layer than the reference's (no target then)")
    p.add_argument("--kernels", type=_ints, default=None,
                   help="other kernels than the reference's (no target then)")
    args = p.parse_args(argv)
    if args.coarse != sorted(args.coarse) or args.fine < args.every or args.fine % args.every:
        p.error("--coarse must increase and --every divide --fine (at least once)")
    with open(args.reference) as f:
        rows = json.load(f)["rows"]
    layer, size = rows[0]["layer"], tuple(rows[0]["model_input"])
    kernels = [r["kernel"] for r in rows]
    target = float(np.mean([r["activation"][-1] for r in rows]))
    if args.layer or args.kernels:  # another task at the same size: no reference value
        layer, kernels, target = args.layer or layer, args.kernels or kernels, None
    model = kvjax.load_model("i3d")
    features = model.features(layer, input_size=size)
    ks = jnp.asarray(kernels, jnp.int32)
    config = stage1.Stage1Config.preset(
        "fast", lr=args.lr, size=size, steps=args.coarse[-1] + args.fine,
        coarse_steps=args.coarse[-1], transform=transforms_lib.Affine(scales=(1.0,)))
    coarse_cfg, fine_cfg = config.phases()

    coarse = program(stage1.coarse_features(features, config.coarse_factor), coarse_cfg)
    out = {"machine": describe(), "args": vars(args), "layer": layer, "kernels": kernels,
           "model_input": size, "target": target, "rows": []}
    print(f"{layer}, kernels {kernels}: target (reference, 1500 steps) "
          f"{'none' if target is None else f'{target:.3f}'}", flush=True)
    t0 = time.perf_counter()
    states, _ = stage1._start(*coarse[:2], jax.random.key(0), ks, coarse[2])
    done = 0
    for n in args.coarse:
        states = jax.block_until_ready(run(coarse, states, ks, n - done))
        done = n
        coarse_s = time.perf_counter() - t0
        if args.rolls:
            small, value = measure(coarse, states, ks)
            row = {"coarse_steps": n, "coarse_objective": value,
                   "rolled": roll_scan(features, small, ks)}
            out["rows"].append(row)
            print(json.dumps(row), flush=True)
        for align, lr in [(a, lr) for a in args.aligns for lr in args.fine_lrs]:
            fine = program(features, dataclasses.replace(fine_cfg, lr=lr))
            s = stage1._tile(states, coarse[2], fine[2], align)
            curve = [measure(fine, s, ks)[1]]
            t1 = time.perf_counter()
            for _ in range(args.fine // args.every):
                s = run(fine, s, ks, args.every)
                videos, value = measure(fine, s, ks)
                curve.append(value)
            row = {"coarse_steps": n, "coarse_seconds_so_far": coarse_s, "align": align,
                   "fine_lr": lr,
                   "fine_steps": list(range(0, args.fine + 1, args.every)), "objective": curve,
                   "fine_seconds": time.perf_counter() - t1, "loadavg": os.getloadavg()}
            if args.robust:
                row["mean_robust"] = float(np.mean(robust(model, np.asarray(videos), layer,
                                                          kernels, size)))
            out["rows"].append(row)
            print(json.dumps(row), flush=True)
        t0 = time.perf_counter() - coarse_s  # the coarse clock resumes without the fine runs
    out["machine"]["loadavg_end"] = os.getloadavg()
    save_results(out, "stage1_fine_phase", RESULTS)


if __name__ == "__main__":
    main()
