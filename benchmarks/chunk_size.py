"""Wall time of stage1.optimize on the same kernels, split into chunks of different sizes.

    PYTHONPATH=.:tests:benchmarks python benchmarks/chunk_size.py --preset fast --kernels 8 \
        --chunks 8,4,2,1
    PYTHONPATH=.:tests:benchmarks python benchmarks/chunk_size.py --preset paper \
        --layer Mixed_3b --kernels 16 --steps 4 --chunks 16,4,1

The question: on this backend, does vmapping more kernels into one program make each kernel
cheaper? On a GPU it fills the device; on a CPU the step is already compute-bound and larger
programs only carry more memory. Every chunk size runs the same request (kernels 0..N-1, the
same seed, so the same result up to float rounding of batched ops): first one call each to
compile, then `--reps` rounds of one call per chunk size, alternating so the VM's drift falls
on all alike. A call's time is its wall time (stage1.optimize: programs of up to four steps, the
start and final measurements included). The float32 matmul rate is measured before and after
each call. Results: a printed table and benchmarks/results/chunk_size_<stamp>.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import jax
import numpy as np

import kvjax
from kvjax import stage1
from machine import save_results
from stage1 import RESULTS, _ints, machine, matmul_gflops  # benchmarks/stage1.py


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="fast", help="kvjax.Config preset (fast, paper)")
    p.add_argument("--layer", default=None, help="default: the model's default layer")
    p.add_argument("--kernels", type=int, default=8, help="kernels 0..N-1")
    p.add_argument("--chunks", type=_ints, default=(8, 4, 2, 1))
    p.add_argument("--steps", type=int, default=None, help="default: the preset's")
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args(argv)

    info = machine()
    print(json.dumps(info), flush=True)
    config = kvjax.Config(args.preset)
    model = kvjax.load_model("i3d")
    layer = args.layer or model.default_layer
    features = model.features(layer, input_size=config.input_size, relu_grad=config.relu_grad)
    s1 = config.stage1
    if args.steps is not None:
        s1 = dataclasses.replace(s1, steps=args.steps)
    memory = {c: stage1.program_memory(features, s1, c) for c in args.chunks}
    calls = []

    def call(chunk: int, timed: bool) -> None:
        cfg = dataclasses.replace(s1, chunk_size=chunk)
        mm0 = matmul_gflops(repeats=3)
        t0 = time.perf_counter()
        res = stage1.optimize(features, range(args.kernels), cfg, jax.random.key(0))
        seconds = time.perf_counter() - t0
        mm1 = matmul_gflops(repeats=3)
        calls.append({"chunk": chunk, "timed": timed, "s": seconds,
                      "s_per_kernel_step": seconds / args.kernels / cfg.steps,
                      "matmul_gflops_before_after": [mm0, mm1],
                      "mean_activation": float(np.mean(res.activation)),
                      "loadavg": os.getloadavg()})
        print(json.dumps(calls[-1]), flush=True)

    for c in args.chunks:
        call(c, timed=False)
    for _ in range(args.reps):
        for c in args.chunks:
            call(c, timed=True)

    rows = []
    for c in args.chunks:
        ts = [q["s"] for q in calls if q["chunk"] == c and q["timed"]]
        first = next(q["s"] for q in calls if q["chunk"] == c and not q["timed"])
        rows.append({"chunk": c, "programs": -(-args.kernels // c),
                     "program_mib": None if memory[c] is None else memory[c] / 2 ** 20,
                     "first_call_s": first, "median_s": float(np.median(ts)),
                     "range_s": [min(ts), max(ts)],
                     "median_s_per_kernel_step": float(np.median(ts)) / args.kernels / s1.steps})
    best = min(r["median_s"] for r in rows)
    print(f"\nI3D {layer}, preset {args.preset}, video {'x'.join(map(str, s1.size))}, "
          f"{args.kernels} kernels x {s1.steps} steps, {args.reps} timed calls per chunk size")
    print("| chunk | programs | program MiB | first call s (compiling) | median s (range) | "
          "s per kernel-step | vs best |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['chunk']} | {r['programs']} | {r['program_mib'] or float('nan'):.0f} | "
              f"{r['first_call_s']:.1f} | {r['median_s']:.1f} ({r['range_s'][0]:.1f}-"
              f"{r['range_s'][1]:.1f}) | {r['median_s_per_kernel_step']:.3f} | "
              f"{r['median_s'] / best:.2f} |")
    info["loadavg_end"] = os.getloadavg()
    out = {"machine": info, "args": vars(args), "layer": layer, "size": list(s1.size),
           "steps": s1.steps, "rows": rows, "calls": calls}
    save_results(out, "chunk_size", RESULTS)


if __name__ == "__main__":
    main()
