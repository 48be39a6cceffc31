"""Bilinear backward warp and flow helpers.

Conventions (used by stage 2 and motion.py alike):
- images are f32[H, W, C]; flows are f32[..., H, W, 2] in PIXELS;
- flow[..., 0] is x (along columns, to the right), flow[..., 1] is y (along rows, DOWN:
  image coordinates, not the on-screen "up" that directions are reported in);
- the warp is backward: warp(I, D)(p) = I(p + D(p)), so a constant D = (-1, 0) shows I moved
  one pixel to the right.

Borders: sample positions are clamped to the image (clamp-to-edge, like
`grid_sample(padding_mode="border")`). Content that comes in at a border then repeats the edge
pixel instead of fading to zero; zero padding would let the optimiser darken borders by
pushing the flow outwards, and a constant extension keeps the reconstruction in the video's
value range. Outside the image the warp's gradient with respect to D is zero.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _pixel_grid(h: int, w: int):
    """(x, y) f32[H, W] each: the column and row index of every pixel."""
    y, x = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                        indexing="ij")
    return x, y


def warp(image, flow):
    """Backward bilinear warp: out(p) = image(p + flow(p)).

    image f32[H, W, C]; flow f32[H, W, 2] in pixels, (x right, y down). Returns f32[H, W, C].
    Differentiable in both arguments (the flow gradient is the bilinear one, zero where the
    sample position is clamped at a border).
    """
    h, w, c = image.shape
    if flow.shape != (h, w, 2):
        raise ValueError(f"flow must be f32[{h}, {w}, 2] to match image {image.shape}; "
                         f"got {flow.shape}")
    gx, gy = _pixel_grid(h, w)
    x = jnp.clip(gx + flow[..., 0], 0.0, w - 1.0)
    y = jnp.clip(gy + flow[..., 1], 0.0, h - 1.0)
    # Left/top corner, kept one short of the last row/column so the right/bottom corner exists;
    # at x = w - 1 this gives x0 = w - 2 and weight fx = 1, which is exact.
    x0 = jnp.clip(jnp.floor(x), 0.0, max(w - 2, 0))
    y0 = jnp.clip(jnp.floor(y), 0.0, max(h - 2, 0))
    fx = (x - x0)[..., None]
    fy = (y - y0)[..., None]
    x0i = x0.astype(jnp.int32)
    y0i = y0.astype(jnp.int32)
    x1i = jnp.minimum(x0i + 1, w - 1)
    y1i = jnp.minimum(y0i + 1, h - 1)
    flat = image.reshape(h * w, c)

    def at(yi, xi):
        return jnp.take(flat, (yi * w + xi).reshape(-1), axis=0).reshape(h, w, c)

    top = at(y0i, x0i) * (1.0 - fx) + at(y0i, x1i) * fx
    bottom = at(y1i, x0i) * (1.0 - fx) + at(y1i, x1i) * fx
    return top * (1.0 - fy) + bottom * fy


def warp_frames(image, flows):
    """One image warped by T flows: f32[H, W, C], f32[T, H, W, 2] -> f32[T, H, W, C]."""
    return jax.vmap(warp, in_axes=(None, 0))(image, flows)


def _flow_scale(h: int, w: int):
    return jnp.array([w, h], jnp.float32).reshape(1, 1, 2)


def pixels_to_fraction(flow):
    """Flow in pixels -> flow in fractions of the image size (x / W, y / H)."""
    h, w = flow.shape[-3:-1]
    return flow / _flow_scale(h, w).reshape((1,) * (flow.ndim - 3) + (1, 1, 2))


def fraction_to_pixels(flow):
    """Flow in fractions of the image size -> pixels (x * W, y * H)."""
    h, w = flow.shape[-3:-1]
    return flow * _flow_scale(h, w).reshape((1,) * (flow.ndim - 3) + (1, 1, 2))


def resize_flow(flow, size):
    """Resize a pixel flow f32[..., H, W, 2] to f32[..., h, w, 2] (bilinear).

    The vectors are rescaled with the grid (x by w / W, y by h / H), so the result is in the
    new resolution's pixels: a 2 px shift at 64 x 64 becomes 1 px at 32 x 32.
    """
    h, w = size
    hh, ww = flow.shape[-3:-1]
    out = jax.image.resize(flow, flow.shape[:-3] + (h, w, 2), method="linear")
    scale = jnp.array([w / ww, h / hh], jnp.float32).reshape((1,) * (flow.ndim - 1) + (2,))
    return out * scale


def resize_image(image, size):
    """Resize f32[..., H, W, C] to f32[..., h, w, C] (bilinear, antialiased when shrinking)."""
    h, w = size
    return jax.image.resize(image, image.shape[:-3] + (h, w, image.shape[-1]), method="linear")
