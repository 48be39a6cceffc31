"""Time to quality with coarse to fine (Stage1Config.coarse_steps), against the reference.

    PYTHONPATH=.:tests:benchmarks python benchmarks/stage1_coarse.py \
        --reference benchmarks/results/reference_quality_20261126T083941Z.json \
        --settings shift:400:90,fast:400:200 --robust

The task (issue 3; benchmarks/stage1.py `quality`): I3D Mixed_3b, kernels 0-3, model input
16x112x112; reach the mean objective (no transform) that the reference algorithm reaches after
its 1500 steps, as stored in its quality JSON (reference_torch.py `quality`).

Each setting `transform:coarse:fine` is one call of kvjax.stage1.optimize on the 4 kernels: the
`fast` preset at lr 0.2 (spectral, decay 1.5) on a 16x112x112 video that the network sees at
that size, its first `coarse` steps on 16x56x56 (seen at 16x56x56), then `fine` steps at full
size (`Stage1Config.coarse_steps`), every step under the named transform: `fast` (the preset's
Affine(): shifts up to 1 frame and 4 px both ways, scale 0.95-1.05), `shift` (the same shifts,
no scaling), `paper` (the reference's) or `none`. Its time is the call's wall time, compilation
included (jax.clear_caches() before each setting); its result the call's final activation.

The reference's time on this machine, in the same run: its per-step time measured here
(`--reference-steps` steps of kernel 0 after two warm-up steps; the same network, sizes and
work at every step and kernel) times its 1500 steps x 4 kernels, beside the total stored in
its JSON (measured on the machine it ran on). `--robust`: the reference's robust objective of
kvjax's videos (reference_torch.robust_objective, 32 fixed draws of the reference's transform),
to set beside the reference videos' own (in its JSON). `--save-videos DIR` writes each
setting's videos as DIR/<setting>.npz.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np
import optax

import kvjax
from kvjax import stage1
from kvjax import transforms as transforms_lib
from machine import describe, save_results, save_videos

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
TRANSFORMS = {"fast": transforms_lib.Affine(), "shift": transforms_lib.Affine(scales=(1.0,)),
              "paper": transforms_lib.Affine.paper(), "none": None}


def _setting(text: str) -> tuple[str, int, int]:
    name, coarse, fine = text.split(":")
    if name not in TRANSFORMS:
        raise argparse.ArgumentTypeError(f"transform {name!r}; valid: {', '.join(TRANSFORMS)}")
    return name, int(coarse), int(fine)


def reference_step_s(model, layer: str, input_size, steps: int) -> float:
    """Median seconds per step of the PyTorch reference (one kernel) on this machine."""
    import reference_torch
    net = reference_torch.torch_i3d(model)
    stamps = []
    reference_torch.optimise(net, layer, 0, input_size, steps + 2,
                             on_step=lambda n, e: stamps.append(e))
    return float(np.median(np.diff(stamps)[1:]))  # the first two steps: warm-up


def robust(model, videos, layer: str, kernels, input_size) -> list[float]:
    """The reference's robust objective of each video f32[T, H, W, 3]."""
    import torch
    import reference_torch
    net = reference_torch.torch_i3d(model)
    out = []
    for video, k in zip(videos, kernels):
        v = torch.from_numpy(np.ascontiguousarray(np.asarray(video).transpose(3, 0, 1, 2)))[None]
        out.append(reference_torch.robust_objective(net, v, layer, int(k), input_size))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reference", required=True, help="a reference_torch.py quality JSON")
    p.add_argument("--settings", default="shift:400:90,fast:400:200",
                   help="comma-separated transform:coarse_steps:fine_steps")
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--warmup", type=int, default=0, metavar="N",
                   help="Adam's lr rising linearly from lr/10 to lr over the first N steps of "
                        "each phase (the optimiser restarts at the tiling); default constant")
    p.add_argument("--reference-steps", type=int, default=12,
                   help="timed steps of the reference on this machine (0: skip)")
    p.add_argument("--robust", action="store_true")
    p.add_argument("--save-videos", default=None, metavar="DIR")
    args = p.parse_args(argv)
    settings = [_setting(s) for s in args.settings.split(",")]
    with open(args.reference) as f:
        ref = json.load(f)
    rows = ref["rows"]
    layer, size = rows[0]["layer"], tuple(rows[0]["model_input"])
    kernels = [r["kernel"] for r in rows]
    target = float(np.mean([r["activation"][-1] for r in rows]))
    ref_steps = rows[0]["steps"][-1]
    stored_s = float(sum(r["seconds"][-1] for r in rows))
    model = kvjax.load_model("i3d")
    features = model.features(layer, input_size=size)
    out = {"machine": describe(), "args": vars(args), "layer": layer, "kernels": kernels,
           "model_input": size, "reference": {
               "file": os.path.basename(args.reference), "steps": ref_steps, "target": target,
               "stored_seconds": stored_s,
               "robust_activation": [r.get("robust_activation") for r in rows]}}
    if args.reference_steps:
        per = reference_step_s(model, layer, size, args.reference_steps)
        out["reference"].update(step_s_here=per, seconds_here=per * ref_steps * len(rows))
        print(f"reference: {per:.3f} s per step here -> {per * ref_steps * len(rows):.0f} s for "
              f"{ref_steps} steps x {len(rows)} kernels (stored: {stored_s:.0f} s); target "
              f"{target:.3f}", flush=True)
    out["rows"] = []
    for name, coarse, fine in settings:
        config = stage1.Stage1Config.preset(
            "fast", lr=args.lr, size=size, steps=coarse + fine, coarse_steps=coarse,
            transform=TRANSFORMS[name],
            optimizer=optax.adam(optax.linear_schedule(args.lr / 10, args.lr, args.warmup))
            if args.warmup else None)
        jax.clear_caches()
        reports = []  # (steps done, seconds since the call): where the time went
        t0 = time.perf_counter()
        r = stage1.optimize(features, kernels, config, jax.random.key(0),
                            progress=lambda done, *_: reports.append(
                                (done, time.perf_counter() - t0)))
        seconds = time.perf_counter() - t0
        row = {"setting": f"{name}:{coarse}:{fine}", "transform": name, "coarse_steps": coarse,
               "fine_steps": fine, "seconds": seconds, "activation": r.activation.tolist(),
               "mean_activation": float(r.activation.mean()),
               "reached": bool(r.activation.mean() >= target),
               "vs_stored_reference": stored_s / seconds, "reports": reports,
               "loadavg": os.getloadavg()}
        if "seconds_here" in out["reference"]:
            row["vs_reference_here"] = out["reference"]["seconds_here"] / seconds
        if args.robust:
            row["robust_activation"] = robust(model, r.videos, layer, kernels, size)
            row["mean_robust_activation"] = float(np.mean(row["robust_activation"]))
        if args.save_videos:
            os.makedirs(args.save_videos, exist_ok=True)
            save_videos(os.path.join(args.save_videos, f"{name}_{coarse}_{fine}.npz"),
                        r.videos, kernels, layer, size, seconds=seconds)
        out["rows"].append(row)
        print(json.dumps(row), flush=True)
    out["machine"]["loadavg_end"] = os.getloadavg()
    save_results(out, "stage1_coarse", RESULTS)


if __name__ == "__main__":
    main()
