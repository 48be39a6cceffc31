"""Matplotlib figures: motion frames with their legend and arrows, and the contact sheet.

Flow colours come from `kvjax.motion` (hue = on-screen direction, brightness = speed up to a
`scale` in px/frame: on the contact sheet one scale shared by all kernels of a layer, in a
kernel's motion GIF its own, stated in the legend). Arrows point the way content moves on
screen.
"""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from kvjax import motion  # noqa: E402
from kvjax.io.atomic import atomic_path  # noqa: E402


def _canvas_rgb(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _legend(ax, scale: float) -> None:
    ax.imshow(np.asarray(motion.colour_wheel(65)), interpolation="bilinear")
    ax.set_xticks([]), ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)
    ax.set_title(f"{scale:.2g} px/frame\nat full colour", fontsize=7)


def motion_frames(velocity: np.ndarray, scale: float, *, arrows: bool = True,
                  title: str = "", spacing: int | None = None) -> np.ndarray:
    """Frames uint8[T, h, w, 3] showing content velocity f32[T,H,W,2] (px/frame, image coords).

    Each frame: the colour-coded field (brightness full at `scale` px/frame), optional arrows
    (block means, centred on their blocks, drawn in on-screen directions), and the
    colour-wheel legend.
    """
    t, h, w, _ = velocity.shape
    colours = np.asarray(motion.flow_to_rgb(velocity, scale=scale))
    spacing = spacing or max(4, min(h, w) // 8)
    fig = plt.figure(figsize=(4.2, 3.2), dpi=80)
    ax = fig.add_axes((0.02, 0.05, 0.68, 0.82))
    leg = fig.add_axes((0.73, 0.35, 0.25, 0.33))
    _legend(leg, scale)
    im = ax.imshow(colours[0], interpolation="nearest")
    ax.set_xticks([]), ax.set_yticks([])
    quiv = None
    frames = []
    for i in range(t):
        im.set_data(colours[i])
        if arrows:
            pos, vec = (np.asarray(a) for a in motion.arrow_samples(velocity[i], spacing))
            if quiv is None:
                # angles="uv": arrow angles in screen space, so v is up: pass -dy (image y is down)
                quiv = ax.quiver(pos[:, 0], pos[:, 1], vec[:, 0], -vec[:, 1], color="white",
                                 scale=scale * (w / spacing) * 1.2, scale_units="width",
                                 width=0.006, headwidth=4, pivot="mid")
            else:
                quiv.set_UVC(vec[:, 0], -vec[:, 1])
        ax.set_title(f"{title}  frame {i + 1}/{t}".strip(), fontsize=8)
        frames.append(_canvas_rgb(fig))
    plt.close(fig)
    return np.stack(frames)


def contact_sheet(path: str | os.PathLike, textures: np.ndarray, velocities: np.ndarray,
                  labels: list[str], scale: float, *, title: str = "", columns: int = 4) -> None:
    """Grid PNG: for every kernel its texture f32[H,W,3] and mean motion side by side.

    textures f32[K,H,W,3] in [0,1]; velocities f32[K,T,H,W,2] content velocity (px/frame);
    labels: one caption per kernel (index, direction, speed).
    """
    k = len(textures)
    cols = min(columns, k)
    rows = -(-k // cols)
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(2.2 * 2 * cols, 2.5 * rows + 0.6),
                             dpi=90, squeeze=False)
    mean_v = np.asarray(velocities)[:, 1:].mean(axis=1) if velocities.shape[1] > 1 \
        else np.asarray(velocities)[:, 0]
    colours = np.asarray(motion.flow_to_rgb(mean_v, scale=scale))
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(k):
        r, c = divmod(i, cols)
        a_tex, a_mot = axes[r, 2 * c], axes[r, 2 * c + 1]
        a_tex.imshow(np.clip(textures[i], 0, 1), interpolation="nearest")
        a_mot.imshow(colours[i], interpolation="nearest")
        a_tex.set_title(labels[i], fontsize=8, loc="left")
    if title:
        fig.suptitle(f"{title}   (left: texture, right: mean motion; full colour = "
                     f"{scale:.2g} px/frame, hue = direction as in the motion legend)", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
