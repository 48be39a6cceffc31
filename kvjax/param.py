"""Video parameterisations: how stage 1's free parameters become a video.

A parameterisation is a NamedTuple of two pure functions (optax style, STYLE.md item 1):

    init(key) -> params          a pytree of float32 arrays, the optimiser's variables
    render(params) -> f32[T, H, W, 3] in [0, 1]

Both end the same way: Lucid's colour decorrelation (a fixed 3x3 matrix, the square root of
ImageNet's colour covariance, columns scaled by the largest column norm) and a sigmoid, so an
unconstrained parameter maps to valid pixels and zero parameters give flat grey (0.5).

- `pixel(size)`: the reference code's raw tensor, one value per voxel and colour channel,
  init N(0, sd^2) with sd = 0.01.
- `spectral(size)`: Lucid's Fourier parameterisation extended from (h, w) to (t, h, w); see
  its docstring for the frequency scaling.

`tile(name, params, size, factor)` maps the params of a (T, H, W) video to those of the same
video repeated factor x factor times in space (coarse to fine, kvjax.stage1), exactly.

Constructors are cached, so `pixel(s) is pixel(s)`: a parameterisation built from the same
settings is the same object (handy as part of a static jit argument).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

Size = tuple[int, int, int]  # (T, H, W)

# Lucid's `color_correlation_svd_sqrt`: rows are RGB, columns the decorrelated basis.
COLOR_CORRELATION_SVD_SQRT = np.asarray([[0.26, 0.09, 0.02],
                                         [0.27, 0.00, -0.05],
                                         [0.27, -0.09, 0.03]], np.float32)
COLOR_CORRELATION_NORMALIZED = (
    COLOR_CORRELATION_SVD_SQRT / np.max(np.linalg.norm(COLOR_CORRELATION_SVD_SQRT, axis=0)))


class Param(NamedTuple):
    """A video parameterisation: `init(key) -> params`, `render(params) -> f32[T,H,W,3]`."""
    init: Callable[[jax.Array], Any]
    render: Callable[[Any], jax.Array]


def decorrelate_colors(x: jax.Array) -> jax.Array:
    """f32[..., 3] in the decorrelated basis -> f32[..., 3] in RGB (linear, no offset)."""
    return x @ jnp.asarray(COLOR_CORRELATION_NORMALIZED.T)


def to_rgb(x: jax.Array) -> jax.Array:
    """Decorrelated, unconstrained f32[..., 3] -> RGB in (0, 1): decorrelation then sigmoid."""
    return jax.nn.sigmoid(decorrelate_colors(x))


def _check_size(size) -> Size:
    size = tuple(int(s) for s in size)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"video size must be (T, H, W) with positive entries; got {size}")
    return size


@functools.lru_cache(maxsize=None)
def pixel(size: Size, sd: float = 0.01) -> Param:
    """One free value per voxel and colour: params f32[T, H, W, 3], init N(0, sd^2)."""
    size = _check_size(size)

    def init(key: jax.Array) -> jax.Array:
        return sd * jax.random.normal(key, (*size, 3), jnp.float32)

    def render(params: jax.Array) -> jax.Array:
        chex.assert_shape(params, (*size, 3))
        return to_rgb(params)

    return Param(init, render)


def spectrum_scale(size: Size, decay: float = 1.0, time_weight: float = 1.0) -> np.ndarray:
    """The amplitude each rFFT coefficient is multiplied by: f32[T, H, W//2+1].

    f = sqrt((time_weight * f_t)^2 + f_h^2 + f_w^2), with f_t in cycles per frame and f_h, f_w
    in cycles per pixel (numpy's fftfreq / rfftfreq), so with time_weight 1 a voxel counts the
    same in every direction. scale = sqrt(T*H*W) / max(f, 1 / max(T, H, W)) ** decay: 1/f
    (decay 1) makes white-noise parameters render as pink noise, like natural images and
    video; the floor keeps the DC term finite; sqrt(T*H*W) cancels irfftn's 1/N so the
    transform is about unitary and the pixel learning rates carry over (as in Lucid).

    In 3D the number of modes at radius f grows as f^2 (in 2D as f), so decay 1 leaves the
    variance spread evenly over frequency and high frequencies dominate; decay 1.5 gives the
    2D case's 1/f energy per unit frequency. The `fast` preset uses 1.5 (it measured best).
    """
    t, h, w = _check_size(size)
    ft = np.fft.fftfreq(t)[:, None, None]
    fh = np.fft.fftfreq(h)[None, :, None]
    fw = np.fft.rfftfreq(w)[None, None, :]
    f = np.sqrt((time_weight * ft) ** 2 + fh ** 2 + fw ** 2)
    scale = np.sqrt(t * h * w) / np.maximum(f, 1.0 / max(t, h, w)) ** decay
    return scale.astype(np.float32)


@functools.lru_cache(maxsize=None)
def spectral(size: Size, sd: float = 0.01, decay: float = 1.0, time_weight: float = 1.0) -> Param:
    """Lucid's Fourier parameterisation in 3D: params f32[2, T, H, W//2+1, 3] (real, imag).

    video = to_rgb(irfftn(scale * (re + i im), over t, h, w) / 4), with `scale` from
    `spectrum_scale` (1/f amplitude, isotropic in voxel units unless time_weight != 1; a larger
    time_weight damps temporal frequencies more and gives smoother motion). The /4 is Lucid's.
    Gradient steps in this basis favour low spatio-temporal frequencies, so structure appears
    in far fewer steps than with `pixel` and high-frequency noise stays out.
    Zero params render as flat grey.
    """
    size = _check_size(size)
    t, h, w = size
    shape = (2, t, h, w // 2 + 1, 3)
    scale = spectrum_scale(size, decay, time_weight)[..., None]  # broadcast over colour

    def init(key: jax.Array) -> jax.Array:
        return sd * jax.random.normal(key, shape, jnp.float32)

    def render(params: jax.Array) -> jax.Array:
        chex.assert_shape(params, shape)
        spectrum = jax.lax.complex(params[0], params[1]) * scale
        x = jnp.fft.irfftn(spectrum, s=size, axes=(0, 1, 2)).astype(jnp.float32) / 4.0
        return to_rgb(x)

    return Param(init, render)


PARAMS = {"pixel": pixel, "spectral": spectral}


ALIGNS = ("corner", "centre")


def tile_shift(n: int, factor: int, align: str = "corner") -> int:
    """The roll, in pixels, of an n-pixel axis repeated `factor` times: "centre" puts its centre
    ((n - 1) // 2, as objectives.neuron's default) at the centre of the factor*n-pixel result;
    "corner" is no roll (its first pixel stays the first)."""
    if align not in ALIGNS:
        raise ValueError(f"unknown tile alignment {align!r}; valid: {', '.join(ALIGNS)}")
    return (factor * n - 1) // 2 - (n - 1) // 2 if align == "centre" else 0


def tile(name: str, params, size: Size, factor: int, *, align: str = "corner", **kwargs):
    """Params of a `size` (T, H, W) video -> params of the (T, factor*H, factor*W) video that
    renders as that video tiled factor x factor in space and rolled by `tile_shift(align)`:
    big[t, y, x] = small[t, (y - sy) mod H, (x - sx) mod W]. align "corner" (np.tile): no roll,
    the small video's corners are the big one's corners; "centre": the small video's centre
    pixel lands on the big one's centre. Exact for both parameterisations (render is pointwise
    after the spectral basis): pixel params are tiled and rolled; spectral coefficient
    (f_t, u, v) of the small video becomes (f_t, factor*u, factor*v) of the big one, times
    factor^2 (irfftn's 1/N), times the roll's phase, over the big video's `spectrum_scale`; the
    other coefficients are zero. kwargs: the parameterisation's settings (sd, decay,
    time_weight), as for `make`.
    """
    t, h, w = _check_size(size)
    factor = int(factor)
    if factor < 1:
        raise ValueError(f"tile factor must be a positive integer; got {factor}")
    big = (t, factor * h, factor * w)
    sy, sx = tile_shift(h, factor, align), tile_shift(w, factor, align)
    if name == "pixel":
        chex.assert_shape(params, (*size, 3))
        return jnp.roll(jnp.tile(params, (1, factor, factor, 1)), (sy, sx), axis=(1, 2))
    if name != "spectral":
        raise ValueError(f"unknown parameterisation {name!r}; valid: {', '.join(PARAMS)}")
    decay, time_weight = kwargs.get("decay", 1.0), kwargs.get("time_weight", 1.0)
    chex.assert_shape(params, (2, t, h, w // 2 + 1, 3))
    spectrum = jax.lax.complex(params[0], params[1]) * spectrum_scale(size, decay, time_weight)[
        ..., None]
    u = factor * np.arange(h)[:, None]          # big row-frequency index of each small one
    v = factor * np.arange(w // 2 + 1)[None, :]  # big column-frequency index (rfft half)
    phase = np.exp(-2j * np.pi * (u * sy / big[1] + v * sx / big[2])).astype(np.complex64)
    tiled = jnp.zeros((t, big[1], big[2] // 2 + 1, 3), jnp.complex64)
    tiled = tiled.at[:, 0::factor, 0::factor].set(factor ** 2 * spectrum * phase[None, :, :, None])
    tiled = tiled / spectrum_scale(big, decay, time_weight)[..., None]
    return jnp.stack([tiled.real, tiled.imag]).astype(jnp.float32)


def make(name: str, size: Size, **kwargs) -> Param:
    """The parameterisation called `name` ("pixel" or "spectral") for videos of `size`."""
    if name not in PARAMS:
        raise ValueError(f"unknown parameterisation {name!r}; valid: {', '.join(PARAMS)}")
    return PARAMS[name](_check_size(size), **kwargs)
