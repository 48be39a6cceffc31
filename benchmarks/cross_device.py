"""Do two machines give the same visualisation? README's main job, stage by stage.

    PYTHONPATH=. python benchmarks/cross_device.py run OUT.npz [--videos OTHER.npz]
    PYTHONPATH=. python benchmarks/cross_device.py compare A.npz B.npz

`run`: the default `kvjax visualize` (built-in I3D, its default layer, kernels 0-7, fast
preset, seed 0) through the library, saving stage 1's videos and activations and stage 2's
texture, motion and summary to OUT.npz (compressed, ~9 MB) with the device and JAX's matmul precision. With
`--videos`, stage 2 also decomposes OTHER.npz's stage-1 videos (same keys), so stage 2 can be
compared on identical inputs (`given_*` fields). `compare`: per kernel, A's and B's numbers
side by side and the largest differences (B's `given_*` against A's own stage 2 where B
decomposed A's videos).
"""
from __future__ import annotations

import argparse
import sys

import jax
import numpy as np

import kvjax

KERNELS = np.arange(8)
STAGE2 = ("texture", "motion")
SUMMARY = ("direction_deg", "speed_px_per_frame", "motion_fraction", "recon_mse")


def run(out: str, videos: str | None) -> None:
    model = kvjax.load_model("i3d")
    config = kvjax.Config("fast")
    layer = model.default_layer
    features = model.features(layer, input_size=config.input_size, relu_grad=config.relu_grad)
    key = jax.random.key(0)  # what `kvjax visualize --seed 0` uses
    res = kvjax.visualize(features, KERNELS, config, key)
    doc = {"device": jax.devices()[0].device_kind, "jax": jax.__version__,
           "precision": str(jax.config.jax_default_matmul_precision), "layer": layer,
           "videos": res.videos, "activation": res.summary["activation"],
           "trace": res.trace1,
           **{k: getattr(res, k) for k in STAGE2},
           **{k: res.summary[k] for k in SUMMARY}}
    if videos:
        with np.load(videos) as z:
            given = kvjax.decompose(z["videos"], config, key, kernels=KERNELS)
        doc.update({f"given_{k}": getattr(given, k) for k in STAGE2})
        doc.update({f"given_{k}": given.summary[k] for k in SUMMARY})
    np.savez_compressed(out, **doc)
    print("wrote", out, doc["device"], doc["precision"])


def compare(a_path: str, b_path: str) -> None:
    a, b = np.load(a_path), np.load(b_path)
    print(f"A: {a['device']} (precision {a['precision']})   B: {b['device']} "
          f"(precision {b['precision']})")
    print("kernel | activation A / B | direction deg A / B | speed A / B"
          + (" | B on A's videos: direction, speed" if "given_texture" in b else ""))
    for i in range(len(a["activation"])):
        line = (f"{i:6d} | {a['activation'][i]:7.3f} / {b['activation'][i]:7.3f} | "
                f"{a['direction_deg'][i]:6.1f} / {b['direction_deg'][i]:6.1f} | "
                f"{a['speed_px_per_frame'][i]:.3f} / {b['speed_px_per_frame'][i]:.3f}")
        if "given_texture" in b:
            line += (f" | {b['given_direction_deg'][i]:6.1f}, "
                     f"{b['given_speed_px_per_frame'][i]:.3f}")
        print(line)
    print("max |A - B| stage-1 videos:", float(np.abs(a["videos"] - b["videos"]).max()))
    n = min(a["trace"].shape[1], 10)
    print(f"max |A - B| activation trace, first {n} steps:",
          float(np.abs(a["trace"][:, :n] - b["trace"][:, :n]).max()))
    if "given_texture" in b:
        for k in STAGE2:
            print(f"max |A - B on A's videos| {k}:",
                  float(np.abs(a[k] - b[f"given_{k}"]).max()))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("run")
    r.add_argument("out")
    r.add_argument("--videos", default=None)
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    args = p.parse_args(argv)
    if args.mode == "run":
        run(args.out, args.videos)
    else:
        compare(args.a, args.b)


if __name__ == "__main__":
    main(sys.argv[1:])
