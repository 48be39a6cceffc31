"""Robustness transforms for stage 1: pure (key, video) -> video, drawn fresh each step.

Videos are f32[T, H, W, C]. Coordinates are voxel indices (t, h, w), voxel centres at the
integers. A warp with shift d, scale s and angle a about centre c moves the content at voxel q
to p = c + s R(a) (q - c) + d (R rotates the (h, w) plane; time is scaled by s only when
`scale_time`): a shift of +1 in w moves content one pixel right. Output voxels are sampled
trilinearly from the input with zeros outside it (like `grid_sample(padding_mode="zeros")`).

`Affine` is a frozen, hashable dataclass, so it can sit in a static jit argument.
`Affine.paper()` is the reference code's transform; `Affine()` is kvjax's centred, symmetric
default.
"""
from __future__ import annotations

import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
from jax.scipy import ndimage


def _axis_matrix(n: int, src: jax.Array) -> jax.Array:
    """f32[n_out, n]: linear-interpolation weights sampling coordinates `src` f32[n_out] from
    n voxels, zero outside (a coordinate in (-1, 0) still takes part of voxel 0)."""
    return jnp.maximum(0.0, 1.0 - jnp.abs(src[:, None] - jnp.arange(n, dtype=jnp.float32)[None]))


def warp(video: jax.Array, shift, scale=1.0, angle=0.0, *, center=(0.0, 0.0, 0.0),
         scale_time: bool = True) -> jax.Array:
    """Affine warp of f32[T,H,W,C]: content at q moves to c + s R(angle) (q - c) + shift.

    shift: (t, h, w) in voxels (may be fractional or traced); scale: isotropic factor;
    angle: rotation in radians in the (h, w) plane (counter-clockwise on screen, y up);
    center: (t, h, w) voxel of the fixed point. Without rotation the warp is separable and
    runs as three small matmuls (fast on CPU, exact); with rotation it gathers trilinearly.
    """
    chex.assert_rank(video, 4)
    t, h, w, _ = video.shape
    shift = jnp.asarray(shift, jnp.float32)
    scale = jnp.asarray(scale, jnp.float32)
    st = scale if scale_time else jnp.float32(1.0)
    ct, ch, cw = (float(c) for c in center)
    pt = jnp.arange(t, dtype=jnp.float32)
    if isinstance(angle, (int, float)) and angle == 0:
        # Inverse map per axis: q = c + (p - c - d) / s.
        ph = jnp.arange(h, dtype=jnp.float32)
        pw = jnp.arange(w, dtype=jnp.float32)
        mt = _axis_matrix(t, ct + (pt - ct - shift[0]) / st)
        mh = _axis_matrix(h, ch + (ph - ch - shift[1]) / scale)
        mw = _axis_matrix(w, cw + (pw - cw - shift[2]) / scale)
        hi = jax.lax.Precision.HIGHEST  # keep the warp exact to float32 (no bf16 passes)
        out = jnp.einsum("pt,thwc->phwc", mt, video, precision=hi)
        out = jnp.einsum("qh,phwc->pqwc", mh, out, precision=hi)
        return jnp.einsum("rw,pqwc->pqrc", mw, out, precision=hi)
    # General case: y up on screen means h grows downwards, so a counter-clockwise angle
    # on screen is clockwise in (h, w) index space.
    angle = jnp.asarray(angle, jnp.float32)
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    gt, gh, gw = jnp.meshgrid(pt, jnp.arange(h, dtype=jnp.float32),
                              jnp.arange(w, dtype=jnp.float32), indexing="ij")
    vt, vh, vw = gt - ct - shift[0], gh - ch - shift[1], gw - cw - shift[2]
    # Inverse of R = [[cos, sin], [-sin, cos]] acting on (w, h) with h pointing down.
    qw = cw + (cos * vw - sin * vh) / scale
    qh = ch + (sin * vw + cos * vh) / scale
    qt = ct + vt / st
    coords = [qt, qh, qw]
    sample = lambda v: ndimage.map_coordinates(v, coords, order=1, mode="constant", cval=0.0)
    return jax.vmap(sample, in_axes=-1, out_axes=-1)(video)


@dataclasses.dataclass(frozen=True)
class Affine:
    """A random affine warp (shift, isotropic scale, optional rotation), fresh per call.

    jitter: (t, h, w) largest integer shift in voxels. Symmetric (default): shifts uniform
      on {-j..j}; one_sided: on {0..j} (the reference's, which pushes content one way).
    scales: isotropic scale factors drawn uniformly from this tuple; scale_time: also
      scale the time axis (the reference does).
    center: "middle" (the video's centre, default) or "corner" (voxel (0, 0, 0), the
      reference's).
    rotate_deg: largest rotation in degrees in the (h, w) plane, uniform in [-r, r];
      0 (default) keeps the fast separable warp.
    """
    jitter: tuple[int, int, int] = (1, 4, 4)
    one_sided: bool = False
    scales: tuple[float, ...] = (0.95, 0.975, 1.0, 1.025, 1.05)
    scale_time: bool = False
    center: str = "middle"
    rotate_deg: float = 0.0

    def __post_init__(self):
        if len(self.jitter) != 3 or min(self.jitter) < 0:
            raise ValueError(f"jitter must be three non-negative integers (t, h, w); "
                             f"got {self.jitter}")
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"scales must be positive factors; got {self.scales}")
        if self.center not in ("middle", "corner"):
            raise ValueError(f"center must be 'middle' or 'corner'; got {self.center!r}")
        object.__setattr__(self, "jitter", tuple(int(j) for j in self.jitter))
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))

    @classmethod
    def paper(cls) -> "Affine":
        """The reference transform: one 3D warp with integer shifts from {0..7} px in x and
        y and {0..3} frames in t, scale from {0.90, 0.92, ..., 1.10} about voxel (0, 0, 0),
        time scaled too; trilinear, zeros outside."""
        return cls(jitter=(3, 7, 7), one_sided=True,
                   scales=tuple(round(1 + (i - 5) / 50, 2) for i in range(11)),
                   scale_time=True, center="corner", rotate_deg=0.0)

    def sample(self, key: jax.Array):
        """Draw (shift f32[3], scale f32[], angle f32[]) for one step.

        All from one `random.bits` call (each separate PRNG call costs XLA's CPU compiler
        about a second); integers by modulo, whose bias (< 2^-28 for these ranges) is nil.
        """
        bits = jax.random.bits(key, (5,), jnp.uint32)
        hi = jnp.asarray(self.jitter, jnp.uint32)
        n = hi + 1 if self.one_sided else 2 * hi + 1
        shift = (bits[:3] % n).astype(jnp.float32) - (0.0 if self.one_sided else hi.astype(
            jnp.float32))
        scale = jnp.asarray(self.scales, jnp.float32)[bits[3] % len(self.scales)]
        unit = (bits[4] >> 8).astype(jnp.float32) / float(1 << 24)  # uniform in [0, 1)
        angle = (2.0 * unit - 1.0) * math.radians(self.rotate_deg)
        return shift, scale, angle

    def __call__(self, key: jax.Array, video: jax.Array) -> jax.Array:
        chex.assert_rank(video, 4)
        shift, scale, angle = self.sample(key)
        t, h, w, _ = video.shape
        center = (0.0, 0.0, 0.0) if self.center == "corner" else ((t - 1) / 2, (h - 1) / 2,
                                                                  (w - 1) / 2)
        return warp(video, shift, scale, angle if self.rotate_deg else 0.0, center=center,
                    scale_time=self.scale_time)


def identity(key: jax.Array, video: jax.Array) -> jax.Array:
    """No transform (for measuring, or for optimising without robustness)."""
    del key
    return video


@dataclasses.dataclass(frozen=True)
class Compose:
    """Apply transforms in order, each with its own key."""
    transforms: tuple

    def __call__(self, key: jax.Array, video: jax.Array) -> jax.Array:
        for k, tf in zip(jax.random.split(key, max(len(self.transforms), 1)), self.transforms):
            video = tf(k, video)
        return video
