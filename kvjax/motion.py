"""Velocity fields, per-video motion summaries and flow -> colour, as plain arrays.

Sign conventions (METHOD.md). Stage 2 explains a video by V_t(p) ~ I(p + D_t(p)), D in pixels,
image coordinates (x right, y DOWN). Content moving by v px/frame gives D_t = -v t, so the
*content velocity* is v_t = -(D_t - D_{t-1}), still in image coordinates.

Everything reported to people uses on-screen directions: counter-clockwise from +x (right) with
+y pointing UP, in degrees in [0, 360). Content moving right is 0 deg, moving up the screen (row
index decreasing, v_y < 0 in image coordinates) is 90 deg, left 180 deg, down 270 deg.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def velocity_from_displacement(displacement):
    """Content velocity f32[..., T, H, W, 2] (px/frame, image coords) from D f32[..., T, H, W, 2].

    v_t = -(D_t - D_{t-1}) for t >= 1. Frame 0 has no predecessor; it repeats frame 1's
    velocity (v_0 := v_1), so per-frame displays and means are not biased towards zero by an
    artificial still frame. With T == 1 the velocity is zero.
    """
    t = displacement.shape[-4]
    if t < 2:
        return jnp.zeros_like(displacement)
    v = -(displacement[..., 1:, :, :, :] - displacement[..., :-1, :, :, :])
    return jnp.concatenate([v[..., :1, :, :, :], v], axis=-4)


def displacement_from_velocity(velocity, d0=None):
    """Inverse of `velocity_from_displacement` for frames >= 1: D_t = D_0 - sum_{s=1..t} v_s."""
    steps = jnp.cumsum(velocity[..., 1:, :, :, :], axis=-4)
    if d0 is None:
        d0 = jnp.zeros_like(velocity[..., :1, :, :, :])
    return jnp.concatenate([d0, d0 - steps], axis=-4)


def screen_direction_deg(vx, vy):
    """Direction of an image-coords vector (vx right, vy down) on screen: CCW from right, y up.

    Returns degrees in [0, 360).
    """
    deg = jnp.mod(jnp.degrees(jnp.arctan2(-vy, vx)), 360.0)
    return jnp.where(deg >= 360.0, 0.0, deg)  # a tiny negative angle rounds up to 360


def direction_deg(velocity):
    """Dominant direction of content motion of one or more videos, in [0, 360) on screen.

    velocity f32[..., T, H, W, 2] (image coords) -> f32[...]: the direction of the mean velocity
    vector over frames 1..T-1 (frame 0 only repeats frame 1) and all pixels. For a video with
    no motion (speed near 0) the direction is that of noise: read it with the speed.
    """
    v = _moving_frames(velocity)
    mean = jnp.mean(v, axis=(-4, -3, -2))
    return screen_direction_deg(mean[..., 0], mean[..., 1])


def speed_px_per_frame(velocity):
    """Mean speed |v| over frames 1..T-1 and all pixels: f32[..., T, H, W, 2] -> f32[...]."""
    v = _moving_frames(velocity)
    return jnp.mean(jnp.sqrt(jnp.sum(v * v, axis=-1) + 1e-12), axis=(-3, -2, -1))


def _moving_frames(velocity):
    return velocity[..., 1:, :, :, :] if velocity.shape[-4] > 1 else velocity


def motion_fraction(video, reconstruction, eps: float = 1e-8):
    """Share of the video's variance about its mean frame that the warp explains.

    video, reconstruction f32[..., T, H, W, C] -> f32[...] in [0, 1]:

        S = sum_{t,p,c} (V_t(p) - Vbar(p))^2,        Vbar = mean_t V_t   (what no static image
                                                                          can explain)
        E = sum_{t,p,c} (V_t(p) - R_t(p))^2,         R_t = I(p + D_t(p))  (what the warp leaves)
        motion_fraction = clip(1 - E / S, 0, 1)

    The mean frame is the best static explanation in the least-squares sense, so this is the
    part of V that the motion explains beyond the static image alone: 0 for a static video or
    a warp that explains nothing more than a still frame, 1 when the warp reproduces every
    change over time. Videos with S below eps per element (no change over time) give 0.
    """
    mean = jnp.mean(video, axis=-4, keepdims=True)
    s = jnp.sum((video - mean) ** 2, axis=(-4, -3, -2, -1))
    e = jnp.sum((video - reconstruction) ** 2, axis=(-4, -3, -2, -1))
    n = video.shape[-4] * video.shape[-3] * video.shape[-2] * video.shape[-1]
    moving = s > eps * n
    frac = jnp.clip(1.0 - e / jnp.where(moving, s, 1.0), 0.0, 1.0)
    return jnp.where(moving, frac, 0.0)


def recon_mse(video, reconstruction):
    """Mean squared reconstruction error per video: f32[..., T, H, W, C] -> f32[...]."""
    return jnp.mean((video - reconstruction) ** 2, axis=(-4, -3, -2, -1))


def summarize(video, reconstruction, velocity):
    """Per-video numbers named as in results.json, each f32[...] (leading axes kept).

    video, reconstruction f32[..., T, H, W, C] in the video's own units; velocity
    f32[..., T, H, W, 2] content velocity in px/frame (image coords).
    """
    return {
        "direction_deg": direction_deg(velocity),
        "speed_px_per_frame": speed_px_per_frame(velocity),
        "motion_fraction": motion_fraction(video, reconstruction),
        "recon_mse": recon_mse(video, reconstruction),
    }


# ---------------------------------------------------------------------------- colour coding

def hsv_to_rgb(h, s, v):
    """HSV (each f32[...] in [0, 1]) -> f32[..., 3] RGB in [0, 1]."""
    h6 = jnp.mod(h, 1.0) * 6.0
    i = jnp.floor(h6)
    f = h6 - i
    p = v * (1.0 - s)
    q = v * (1.0 - s * f)
    t = v * (1.0 - s * (1.0 - f))
    i = i.astype(jnp.int32) % 6
    r = jnp.select([i == 0, i == 1, i == 2, i == 3, i == 4], [v, q, p, p, t], v)
    g = jnp.select([i == 0, i == 1, i == 2, i == 3, i == 4], [t, v, v, q, p], p)
    b = jnp.select([i == 0, i == 1, i == 2, i == 3, i == 4], [p, p, t, v, v], q)
    return jnp.stack([r, g, b], axis=-1)


@functools.partial(jax.jit, static_argnames="percentile")
def flow_magnitude_scale(flows, percentile: float = 99.0):
    """The magnitude that maps to full brightness: a robust percentile over ALL given fields."""
    mag = jnp.sqrt(jnp.sum(flows * flows, axis=-1))
    return jnp.maximum(jnp.percentile(mag, percentile), 1e-6)


@functools.partial(jax.jit, static_argnames="percentile")
def flow_to_rgb(flows, scale=None, percentile: float = 99.0):
    """Colour-code flow fields f32[..., H, W, 2] (image coords) as RGB f32[..., H, W, 3].

    Hue is the on-screen direction (0 deg = right = red, 90 deg = up = yellow-green,
    180 deg = left = cyan, 270 deg = down = blue-violet: hue = direction / 360), saturation 1,
    value = |v| / scale clipped to 1. `scale` defaults to the `percentile` of |v| over every
    field passed in together, so one call colours a whole layer on one common scale with no
    per-kernel knob; zero flow is black.
    """
    if scale is None:
        scale = flow_magnitude_scale(flows, percentile)
    mag = jnp.sqrt(jnp.sum(flows * flows, axis=-1))
    hue = screen_direction_deg(flows[..., 0], flows[..., 1]) / 360.0
    val = jnp.clip(mag / scale, 0.0, 1.0)
    return hsv_to_rgb(hue, jnp.ones_like(hue), val)


@functools.partial(jax.jit, static_argnames="size")
def colour_wheel(size: int):
    """Legend f32[size, size, 3]: the colour of a flow pointing from the centre to each pixel.

    A pixel right of the centre has the colour of motion to the right, one above the centre
    the colour of motion up the screen; brightness grows to full at the rim. Outside the disc
    the legend is white.
    """
    c = (size - 1) / 2.0
    y, x = jnp.meshgrid(jnp.arange(size, dtype=jnp.float32), jnp.arange(size, dtype=jnp.float32),
                        indexing="ij")
    flow = jnp.stack([x - c, y - c], axis=-1)
    radius = max(c, 1e-6)
    rgb = flow_to_rgb(flow, scale=radius)
    inside = (jnp.sqrt((x - c) ** 2 + (y - c) ** 2) <= radius)[..., None]
    return jnp.where(inside, rgb, 1.0)


def arrow_samples(flow, spacing: int = 8):
    """Arrows for a quiver overlay of one field f32[H, W, 2] (image coords).

    The field is averaged over spacing x spacing blocks. Returns (positions f32[N, 2],
    vectors f32[N, 2]): block centres as (x, y) pixel coordinates and mean vectors (dx, dy) in
    px, both in image coordinates (y down). With matplotlib on an image axis (y inverted),
    `quiver(x, y, dx, -dy)` (the default angles="uv": directions on screen, y up) draws them
    the right way up; with angles="xy" (directions in data coordinates) pass dy unchanged.
    """
    h, w, _ = flow.shape
    nh, nw = h // spacing, w // spacing
    blocks = flow[: nh * spacing, : nw * spacing].reshape(nh, spacing, nw, spacing, 2)
    vec = jnp.mean(blocks, axis=(1, 3)).reshape(-1, 2)
    cy = jnp.arange(nh, dtype=jnp.float32) * spacing + (spacing - 1) / 2.0
    cx = jnp.arange(nw, dtype=jnp.float32) * spacing + (spacing - 1) / 2.0
    py, px = jnp.meshgrid(cy, cx, indexing="ij")
    pos = jnp.stack([px.reshape(-1), py.reshape(-1)], axis=-1)
    return pos, vec
