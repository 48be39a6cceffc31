"""Coarse to fine over three levels (16x28x28 -> 16x56x56 -> 16x112x112) on the task of
benchmarks/stage1_coarse.py: does a coarser first level buy the time-to-quality target?

    PYTHONPATH=.:tests:benchmarks python benchmarks/stage1_three_levels.py \
        --reference benchmarks/results/reference_quality_20261126T083941Z.json \
        --settings 800:200:75,400:300:60

Each setting `n28:n56:n112` runs n28 steps on a 16x28x28 video (the network seen at 16x28x28:
`stage1.coarse_features(features, 4)`), tiles it 2x2 (`stage1._tile`, a fresh Adam), n56 steps
at 16x56x56, tiles again, n112 steps at full size; the `fast` preset at lr 0.2, shift-only
jitter, as stage1_coarse.py's `shift` settings. kvjax.stage1.optimize has two levels (coarse
and full size); this script chains its programs for three. Recorded per level: the mean
objective (no transform) of the 4 kernels as that level's network sees the video, right after
the tiling and after the level's steps, with the seconds since the first program started
(compilation included; the first setting compiles, the next ones reuse its programs).
"""
from __future__ import annotations

import argparse
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
from stage1_coarse import RESULTS
from stage1_fine_phase import measure, program, run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reference", required=True, help="a reference_torch.py quality JSON")
    p.add_argument("--settings", default="800:200:75",
                   help="comma-separated n28:n56:n112 step counts")
    p.add_argument("--align", default="corner", choices=param.ALIGNS,
                   help="param.tile's alignment at each tiling (corner: what optimize does for "
                        "a channel objective; stage1_three_levels_20261203T170101Z.json: centre)")
    args = p.parse_args(argv)
    settings = [tuple(int(n) for n in s.split(":")) for s in args.settings.split(",")]
    with open(args.reference) as f:
        rows = json.load(f)["rows"]
    layer, size = rows[0]["layer"], tuple(rows[0]["model_input"])
    kernels = [r["kernel"] for r in rows]
    model = kvjax.load_model("i3d")
    features = model.features(layer, input_size=size)
    ks = jnp.asarray(kernels, jnp.int32)

    def at_factor(factor):
        cfg = stage1.Stage1Config.preset(
            "fast", lr=0.2, size=(size[0], size[1] // factor, size[2] // factor), steps=1,
            transform=transforms_lib.Affine(scales=(1.0,)), coarse_factor=2)
        f = stage1.coarse_features(features, factor) if factor > 1 else features
        return program(f, cfg)

    progs = [at_factor(4), at_factor(2), at_factor(1)]
    out = {"machine": describe(), "args": vars(args), "layer": layer, "kernels": kernels,
           "model_input": size, "target": float(np.mean([r["activation"][-1] for r in rows])),
           "rows": []}
    for steps in settings:
        t0 = time.perf_counter()
        states, _ = stage1._start(*progs[0][:2], jax.random.key(0), ks, progs[0][2])
        levels = []
        for i, (prog, n) in enumerate(zip(progs, steps)):
            level = {"size": prog[2].size, "steps": n}
            if i:
                states = stage1._tile(states, progs[i - 1][2], prog[2], args.align)
                level["tiled"] = measure(prog, states, ks)[1]
            states = run(prog, states, ks, n)
            level["objective"] = measure(prog, states, ks)[1]
            level["seconds"] = time.perf_counter() - t0
            levels.append(level)
        row = {"setting": ":".join(map(str, steps)), "levels": levels,
               "mean_activation": levels[-1]["objective"], "seconds": levels[-1]["seconds"],
               "loadavg": os.getloadavg()}
        out["rows"].append(row)
        print(json.dumps(row), flush=True)
    out["machine"]["loadavg_end"] = os.getloadavg()
    save_results(out, "stage1_three_levels", RESULTS)


if __name__ == "__main__":
    main()
