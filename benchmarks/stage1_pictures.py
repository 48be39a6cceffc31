"""The picture behind stage1.md's "no transform" row: what the transform buys.

    PYTHONPATH=. python benchmarks/stage1_pictures.py

I3D Mixed_3b kernels 1 and 2 at model input 16x112x112: the `fast` preset at lr 0.2 for 300
steps against the same without any transform for 40 steps (where it has passed the reference's
activation). Frames 0 and 8 of each video with a 4x zoom of the centre; activations in the
titles. Writes benchmarks/results/stage1_quality_transform.png (64-colour PNG).
"""
from __future__ import annotations

import os
from dataclasses import replace

import matplotlib
import numpy as np
from PIL import Image

import kvjax
from kvjax import stage1

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                   "stage1_quality_transform.png")
KERNELS = (1, 2)


def main():
    features = kvjax.load_model("i3d").features("Mixed_3b", input_size=(16, 112, 112))
    fast = stage1.Stage1Config.preset("fast", size=(16, 112, 112), lr=0.2)
    runs = [("fast 300", stage1.optimize(features, KERNELS, replace(fast, steps=300))),
            ("no transform 40", stage1.optimize(features, KERNELS,
                                                replace(fast, steps=40, transform=None)))]
    fig, ax = plt.subplots(4, 4, figsize=(12, 12))
    for i, (label, res) in enumerate(runs):
        print(label, np.round(res.activation, 2), flush=True)
        for j, kernel in enumerate(KERNELS):
            for c, t in enumerate((0, 8)):
                frame = res.videos[j, t]
                a = ax[2 * i + j, 2 * c]
                a.imshow(frame)
                a.set_title(f"{label} k{kernel} t{t} act {res.activation[j]:.2f}", fontsize=7)
                a = ax[2 * i + j, 2 * c + 1]
                a.imshow(frame[32:80, 32:80], interpolation="nearest")
                a.set_title("centre, 4x", fontsize=7)
    for a in ax.flat:
        a.axis("off")
    fig.tight_layout()
    fig.savefig(OUT, dpi=80)
    Image.open(OUT).convert("RGB").quantize(64).save(OUT, optimize=True)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
