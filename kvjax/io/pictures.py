"""Float videos and images to GIF and PNG files (Pillow; no ffmpeg, no network).

Arrays stay float in [0, 1] everywhere else; they are quantised to uint8 only here.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from kvjax.io.atomic import atomic_path


def to_uint8(x) -> np.ndarray:
    """f32 in [0, 1] (any shape) -> uint8 in [0, 255], clipped and rounded."""
    return np.round(np.clip(np.asarray(x, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def upscale(frames: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement of [..., H, W, C] by an integer factor (crisp pixels)."""
    if factor <= 1:
        return frames
    return frames.repeat(factor, axis=-3).repeat(factor, axis=-2)


def save_png(path: str | os.PathLike, image, *, scale: int = 1) -> None:
    """Write f32[H,W,3] in [0,1] (or uint8) as a PNG, atomically."""
    img = image if np.asarray(image).dtype == np.uint8 else to_uint8(image)
    with atomic_path(path) as tmp:
        Image.fromarray(upscale(np.asarray(img), scale)).save(tmp, format="PNG")


def save_gif(path: str | os.PathLike, frames, *, fps: float = 8.0, scale: int = 1) -> None:
    """Write f32[T,H,W,3] in [0,1] (or uint8) as a looping GIF, atomically.

    Each frame is quantised to an adaptive 256-colour palette of its own (no dithering, so
    flat regions stay flat).
    """
    arr = np.asarray(frames)
    arr = upscale(arr if arr.dtype == np.uint8 else to_uint8(arr), scale)
    images = [Image.fromarray(f).quantize(256, method=Image.Quantize.MEDIANCUT,
                                          dither=Image.Dither.NONE) for f in arr]
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                       duration=int(round(1000 / fps)), loop=0, disposal=1, optimize=False)


def read_gif(path: str | os.PathLike) -> np.ndarray:
    """uint8[T,H,W,3] frames of a GIF (for tests and checks)."""
    with Image.open(path) as im:
        out = []
        for i in range(getattr(im, "n_frames", 1)):
            im.seek(i)
            out.append(np.asarray(im.convert("RGB")))
    return np.stack(out)
