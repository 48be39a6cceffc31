"""3D ops that are fast on every backend.

Layouts: x f32[N, T, H, W, C] (channels last), w f32[kt, kh, kw, Cin, Cout].
Padding: "SAME" (TensorFlow's rule: total = max((out - 1) * s + k - in, 0), low = total // 2,
high = total - low), "VALID", or explicit ((t_lo, t_hi), (h_lo, h_hi), (w_lo, w_hi)).

Why this module exists: XLA's CPU backend runs 3D `conv_general_dilated`, and above all its
input gradient, 10-300x slower than PyTorch (oneDNN). On CPU `conv3d` therefore rewrites each
convolution as slices + matrix products (or 2D convolutions) chosen per shape by `_cpu_strategy`;
everything is plain differentiable jnp/lax, so grad, vmap, jit and higher derivatives need no
custom rules. On GPU/TPU the native op is the fast one and is used unchanged. One exception,
opt-in: inside `reverse_mode_only()` (what kvjax.stage1.step traces its gradient in), CPU max
pools take a reverse-mode-only form with a hand-written gradient (`_max_pool_vjp`).

`conv3d` also takes a `TimeResized` video, one resized along time but not yet formed (what the
I3D features hand their stem when the model input has more frames than the video): on CPU it
convolves the video itself with kernels composed with the resize, reading fewer frames.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental.xla_metadata import set_xla_metadata

_DN3 = ("NDHWC", "DHWIO", "NDHWC")
_DN2 = ("NHWC", "HWIO", "NHWC")

Padding = str | Sequence[tuple[int, int]]
Pads = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


# ---------------------------------------------------------------------------------- padding

def resolve_padding(in_sizes: Sequence[int], window: Sequence[int], strides: Sequence[int],
                    padding: Padding) -> Pads:
    """Explicit ((lo, hi),) * 3 for spatial sizes (T, H, W) under "SAME"/"VALID"/explicit."""
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            return ((0, 0),) * 3
        if mode != "SAME":
            raise ValueError(f"padding must be 'SAME', 'VALID' or ((lo, hi),) * 3; got {padding!r}")
        pads = []
        for n, k, s in zip(in_sizes, window, strides):
            out = -(-n // s)
            total = max((out - 1) * s + k - n, 0)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    if len(pads) != 3 or min(min(p) for p in pads) < 0:
        raise ValueError(f"explicit padding must be three non-negative (lo, hi) pairs for "
                         f"(T, H, W); got {padding!r}")
    return pads


def _out_sizes(in_sizes, window, strides, pads) -> tuple[int, ...]:
    return tuple((n + lo + hi - k) // s + 1
                 for n, k, s, (lo, hi) in zip(in_sizes, window, strides, pads))


def _pad(x: jax.Array, pads: Pads, value: float = 0.0) -> jax.Array:
    """f32[N,T,H,W,C] padded on T, H, W by `pads` with `value`."""
    if not any(lo or hi for lo, hi in pads):
        return x
    cfg = ((0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0))
    return lax.pad(x, jnp.asarray(value, x.dtype), cfg)


def _tap(xp: jax.Array, offset: Sequence[int], out: Sequence[int], strides: Sequence[int]):
    """xp[:, a::st, b::sh, c::sw, :] cut to `out` = (T', H', W'): the cells one kernel tap sees."""
    start = (0, *offset, 0)
    limit = (xp.shape[0], *(o + (n - 1) * s + 1 for o, n, s in zip(offset, out, strides)),
             xp.shape[-1])
    return lax.slice(xp, start, limit, (1, *strides, 1))


# ---------------------------------------------------------------------- conv3d strategies

def _conv_native(x, w, strides, pads):
    """XLA's own 3D convolution (fast on GPU/TPU, slow on CPU)."""
    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_DN3)


def _conv_dot(x, w, strides, pads):
    """1x1x1 kernels: strided subsampling, then one matmul [N*T'*H'*W', Cin] @ [Cin, Cout]."""
    xp = _pad(x, pads)
    out = _out_sizes(xp.shape[1:4], (1, 1, 1), strides, ((0, 0),) * 3)
    xs = _tap(xp, (0, 0, 0), out, strides)
    y = jnp.dot(xs.reshape(-1, xs.shape[-1]), w.reshape(w.shape[-2], w.shape[-1]))
    return y.reshape(*xs.shape[:-1], w.shape[-1])


def _conv_im2col(x, w, strides, pads):
    """All kt*kh*kw taps gathered by slicing into one [M, kt*kh*kw*Cin] matrix, one matmul.

    Memory: the patch matrix is kt*kh*kw times the (strided) output grid times Cin.
    """
    kt, kh, kw, cin, cout = w.shape
    xp = _pad(x, pads)
    out = _out_sizes(xp.shape[1:4], (kt, kh, kw), strides, ((0, 0),) * 3)
    cols = [_tap(xp, (a, b, c), out, strides)
            for a in range(kt) for b in range(kh) for c in range(kw)]
    p = jnp.concatenate(cols, axis=-1).reshape(-1, kt * kh * kw * cin)
    y = jnp.dot(p, w.reshape(kt * kh * kw * cin, cout))
    return y.reshape(x.shape[0], *out, cout)


def _time_taps(x, kt, st, t_pads):
    """The kt temporally shifted, strided views of x: list of f32[N, T', H, W, C]."""
    xp = _pad(x, (t_pads, (0, 0), (0, 0)))
    t_out = (xp.shape[1] - kt) // st + 1
    return [lax.slice_in_dim(xp, a, a + (t_out - 1) * st + 1, st, axis=1) for a in range(kt)]


def _conv_taps2d(x, w, strides, pads):
    """Sum over the kt temporal taps of 2D convolutions on the N*T' frames."""
    kt = w.shape[0]
    y = None
    for a, xa in enumerate(_time_taps(x, kt, strides[0], pads[0])):
        n, t = xa.shape[:2]
        ya = lax.conv_general_dilated(xa.reshape(n * t, *xa.shape[2:]), w[a], strides[1:],
                                      pads[1:], dimension_numbers=_DN2)
        y = ya if y is None else y + ya
    return y.reshape(n, t, *y.shape[1:])


def _conv_fold2d(x, w, strides, pads, keep: Sequence[int] | None = None):
    """Temporal taps folded into channels: one 2D conv with kt*Cin input channels.

    keep: per temporal tap, how many leading input channels take part (the rest have zero
    weights there and are left out of the fold); default all Cin of every tap.
    """
    kt, kh, kw, cin, cout = w.shape
    keep = [cin] * kt if keep is None else list(keep)
    taps = _time_taps(x, kt, strides[0], pads[0])
    xs = jnp.concatenate([xa[..., :c] for xa, c in zip(taps, keep) if c], axis=-1)
    n, t = xs.shape[:2]
    w2 = jnp.concatenate([w[a, :, :, :c] for a, c in enumerate(keep) if c], axis=2)
    y = lax.conv_general_dilated(xs.reshape(n * t, *xs.shape[2:]), w2, strides[1:], pads[1:],
                                 dimension_numbers=_DN2)
    return y.reshape(n, t, *y.shape[1:])


def _space_to_depth(x, w, strides, pads):
    """Rewrite a strided conv as a stride-1 VALID one on s_t*s_h*s_w times more channels.

    Each kernel axis is zero-padded at the end to a multiple k' of its stride s, the padded
    input is cut to (out - 1) * s + k' cells (the cells past the real padding only ever meet
    those zero taps), and both are reshaped so each s-block of cells becomes channels.
    Returns x' f32[N, T'', H'', W'', s^3 Cin] and w' f32[k'/s..., s^3 Cin, Cout].
    """
    return _s2d_input(x, w.shape[:3], strides, pads), _s2d_weights(w, strides)


def _s2d_input(x, window, strides, pads):
    """_space_to_depth's x' for a kernel of size `window` (T, H, W)."""
    out = _out_sizes(x.shape[1:4], window, strides, pads)
    kp = [-(-k // s) * s for k, s in zip(window, strides)]
    need = [(o - 1) * s + p for o, s, p in zip(out, strides, kp)]
    x = _pad(x, pads)
    x = _pad(x[:, :need[0], :need[1], :need[2]],
             tuple((0, max(n - l, 0)) for n, l in zip(need, x.shape[1:4])))
    n, cin, (st, sh, sw) = x.shape[0], x.shape[-1], strides
    x = x.reshape(n, need[0] // st, st, need[1] // sh, sh, need[2] // sw, sw, cin)
    return x.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(*x.shape[:2], x.shape[3], x.shape[5], -1)


def _s2d_weights(w, strides):
    """_space_to_depth's w'."""
    kt, kh, kw, cin, cout = w.shape
    (st, sh, sw) = strides
    kp = [-(-k // s) * s for k, s in zip(w.shape[:3], strides)]
    w = jnp.pad(w, [(0, p - k) for p, k in zip(kp, w.shape[:3])] + [(0, 0), (0, 0)])
    w = w.reshape(kp[0] // st, st, kp[1] // sh, sh, kp[2] // sw, sw, cin, cout)
    return w.transpose(0, 2, 4, 1, 3, 5, 6, 7).reshape(kp[0] // st, kp[1] // sh, kp[2] // sw,
                                                       -1, cout)


def _conv_s2d(x, w, strides, pads):
    """Strided kernels: space-to-depth to a stride-1 conv, then "fold2d" (or "taps2d").

    The fold leaves out the channels that only meet the temporal padding of the kernel: the
    s2d channels are ordered (time phase, h phase, w phase, Cin), so in the last temporal
    tap the phases past the real kernel are a trailing block of zero weights (I3D's stem,
    7 taps padded to 8: 12 of 96 folded channels, 12.5% of its FLOPs).

    The spatial padding (7 -> 8 taps: (8/7)^2 = 1.31x the stem's FLOPs) stays: splitting the
    conv by spatial phase into exact 4x4, 4x3, 3x4 and 3x3 convs on 21 channels each (or by
    H phase only, 42 channels) was slower, not faster (stem at 1x32x224x224, 2-core EPYC:
    forward 0.35-0.37 s against 0.33 s, input gradient 0.40-0.44 s against 0.34-0.36 s):
    fewer channels per conv cost XLA's 2D conv more than the FLOPs saved.
    """
    xs, ws = _space_to_depth(x, w, strides, pads)
    if ws.shape[0] == 1:
        return _conv_taps2d(xs, ws, (1, 1, 1), ((0, 0),) * 3)
    kt, st = w.shape[0], strides[0]
    per_phase = ws.shape[3] // st
    keep = [min(st, kt - a * st) * per_phase for a in range(ws.shape[0])]
    return _conv_fold2d(xs, ws, (1, 1, 1), ((0, 0),) * 3, keep)


def _conv_s2d3d(x, w, strides, pads):
    """Strided kernels: space-to-depth to a stride-1 conv, then XLA's own 3D convolution
    (for GPU/TPU: an 8x smaller grid on 8x more channels, e.g. the I3D stem 3 -> 24)."""
    xs, ws = _space_to_depth(x, w, strides, pads)
    return _conv_native(xs, ws, (1, 1, 1), ((0, 0),) * 3)


CONV_IMPLS = {"native": _conv_native, "dot": _conv_dot, "im2col": _conv_im2col,
              "taps2d": _conv_taps2d, "fold2d": _conv_fold2d, "s2d": _conv_s2d,
              "s2d3d": _conv_s2d3d}


def _cpu_strategy(x_shape, w_shape, strides, pads) -> str:
    """The fastest CPU formulation of forward + input gradient for this shape.

    Measured on the 2-core AMD EPYC dev box, quiet machine, compiled with kvjax.jit (XLA's
    YNNPACK fusions off: kvjax/compiler.py; benchmarks/results/ops-cpu.md has the
    per-shape table):
    - 1x1x1: one matmul ("dot"); as fast as native, and never touches XLA's 3D conv.
    - strided kernels (the I3D stem 7x7x7 s2, r3d's 3x3x3 s2 and stems): "s2d",
      space-to-depth to a stride-1 conv, whose backward is a plain stride-1 conv instead of
      a dilated one (stem at 1x32x224x224: 0.51 s, against 0.95 s "taps2d", 1.00 s
      "fold2d", PyTorch 0.92 s, native ~3.5 min extrapolated), despite (8/7)^3 more FLOPs;
      0.46-0.48 s since the fold leaves out the zero temporal taps ((8/7)^2 more FLOPs).
    - stride-1 kernels with kt > 1: "fold2d", the temporal taps stacked into channels so the
      output is written once (Conv3d_2c 64->192 at 16x56x56: 0.37 s against 0.41 s taps2d);
      on the small Mixed_4/5 shapes fold2d and taps2d are within noise of each other.
    Patches + one matmul ("im2col", kept for benchmarks) lost everywhere measured, 2-3.5x
    slower (stem at 1x8x56x56: 43 ms against 12 ms; 96->128 at 16x28x28: 343 ms against
    173 ms): the patch matrix and its gradient cost more memory traffic than XLA's 2D conv
    kernels; summing 2D im2col over temporal taps was no better.
    """
    kt, kh, kw, cin, cout = w_shape
    if (kt, kh, kw) == (1, 1, 1):
        return "dot"
    if any(s > 1 for s in strides):
        return "s2d"
    return "fold2d" if kt > 1 else "taps2d"


# ------------------------------------------------------------- input resized along time

def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """f32[n_out, n_in]: linear interpolation with the corners aligned (PyTorch's
    align_corners=True): output i samples input coordinate i * (n_in - 1) / (n_out - 1); each
    row has at most two non-zeros, summing to 1 (up to rounding); a numpy constant, so a
    traced program never recomputes it. kvjax.models.base.resize_video resizes with it."""
    src = np.arange(n_out, dtype=np.float32) * np.float32((n_in - 1) / max(n_out - 1, 1))
    return np.maximum(np.float32(0), np.float32(1) - np.abs(
        src[:, None] - np.arange(n_in, dtype=np.float32)[None]))


class TimeResized:
    """A video resized along time, not yet formed: `x` f32[N, T, H, W, C] read at `frames`
    frames through `resize_matrix(T, frames)`. `conv3d` takes it in place of the resized
    video: on CPU, where it costs fewer taps, it convolves without forming it (each output
    frame's kernel composed with the resize rows it reads: `_conv_time_resized`); elsewhere,
    and in every other op, `materialize()` forms it first. A pytree (x is its leaf), so it
    passes through vmap and jit. Why: stage 1 at the `paper` preset shows I3D a 16-frame video
    at 32 frames; the stem (7 temporal taps, stride 2) then reads 3-5 frames of the video per
    output frame instead of 7 of the resized one."""

    def __init__(self, x: jax.Array, frames: int):
        self.x, self.frames = x, int(frames)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.x.shape[0], self.frames, *self.x.shape[2:])

    @property
    def ndim(self) -> int:
        return self.x.ndim

    def materialize(self) -> jax.Array:
        """The resized video f32[N, frames, H, W, C]."""
        if self.x.shape[1] == self.frames:
            return self.x
        m = jnp.asarray(resize_matrix(self.x.shape[1], self.frames))
        return jnp.moveaxis(jnp.tensordot(m, self.x, axes=([1], [1]),
                                          precision=lax.Precision.HIGHEST), 0, 1)


jax.tree_util.register_pytree_node(
    TimeResized, lambda r: ((r.x,), r.frames), lambda frames, xs: TimeResized(xs[0], frames))


def materialize(x):
    """x itself, or a TimeResized formed."""
    return x.materialize() if isinstance(x, TimeResized) else x


def _time_coefficients(t_in: int, frames: int, kt: int, st: int, t_pads) -> np.ndarray:
    """f32[T', kt, t_in]: how much tap a of output frame o reads of each input frame, through
    the resize to `frames` frames and the conv's zero padding (rows of cells in the padding
    are zero)."""
    m = resize_matrix(t_in, frames)
    t_out = (frames + t_pads[0] + t_pads[1] - kt) // st + 1
    coef = np.zeros((t_out, kt, t_in), np.float32)
    for o in range(t_out):
        for a in range(kt):
            u = o * st + a - t_pads[0]
            if 0 <= u < frames:
                coef[o, a] = m[u]
    return coef


def _time_spans(coef: np.ndarray) -> list[tuple[int, int]]:
    """Per output frame, the [first, last + 1) input frames its taps read ((0, 0): none)."""
    spans = []
    for c in coef:
        used = np.flatnonzero(c.any(axis=0))
        spans.append((int(used[0]), int(used[-1]) + 1) if used.size else (0, 0))
    return spans


def _fuses_time_resize(r: TimeResized, w_shape, strides, pads, impl: str = "cpu") -> bool:
    """Whether to convolve `r` unformed: on CPU (impl "cpu"; elsewhere not measured yet), when
    it upsamples time and the composed kernels read at most 3/4 of the frame-taps the conv of
    the formed video does (the per-frame 2D convolutions cost more per tap: at I3D's stem,
    0.66 of the taps took 0.81 of the time)."""
    if impl != "cpu" or r.frames <= r.x.shape[1]:
        return False
    spans = _time_spans(_time_coefficients(r.x.shape[1], r.frames, w_shape[0], strides[0],
                                           pads[0]))
    if any(b == a for a, b in spans):  # an output frame of padding alone: not worth a form
        return False
    return 4 * sum(b - a for a, b in spans) <= 3 * len(spans) * w_shape[0]


def _conv_time_resized(r: TimeResized, w, strides, pads):
    """conv3d(r.materialize(), w) without forming it: per output frame, one 2D convolution of
    the input frames its taps read (stacked into channels) with its kernel composed with the
    resize (sum over taps a of coef[o, a, i] * w[a]); strided H, W as space-to-depth, as
    `_conv_s2d`. I3D's stem at the `paper` preset (16 -> 32 frames, 7 taps, stride 2) reads
    74 frame-taps instead of 112: forward + input gradient (ReLU after) 0.51 -> 0.42 s for a
    1x16x224x224 video seen at 32 frames, on the 2-core dev VM."""
    x = r.x
    kt, kh, kw, cin, cout = w.shape
    coef = _time_coefficients(x.shape[1], r.frames, kt, strides[0], pads[0])
    if strides[1:] != (1, 1):
        xs = _s2d_input(x, (1, kh, kw), (1, *strides[1:]), ((0, 0), *pads[1:]))
        wt = _s2d_weights(w, (1, *strides[1:]))
        conv_strides, conv_pads = (1, 1), ((0, 0), (0, 0))
    else:
        xs, wt, conv_strides, conv_pads = x, w, strides[1:], pads[1:]
    frames = []
    for o, (i0, i1) in enumerate(_time_spans(coef)):
        if i1 == i0:
            raise ValueError(f"output frame {o} reads only the padding: form the video "
                             f"(_fuses_time_resize says so)")
        wo = jnp.einsum("ad,ahwco->hwdco", coef[o, :, i0:i1], wt,
                        precision=lax.Precision.HIGHEST)
        wo = wo.reshape(*wo.shape[:2], -1, cout)
        xo = jnp.moveaxis(xs[:, i0:i1], 1, 3)
        xo = xo.reshape(*xo.shape[:3], -1)
        frames.append(lax.conv_general_dilated(xo, wo, conv_strides, conv_pads,
                                               dimension_numbers=_DN2))
    return jnp.stack(frames, axis=1)


def conv3d(x: jax.Array, w: jax.Array, strides: Sequence[int] = (1, 1, 1),
           padding: Padding = "SAME", *, impl: str | None = None) -> jax.Array:
    """f32[N,T,H,W,Cin] * f32[kt,kh,kw,Cin,Cout] -> f32[N,T',H',W',Cout] (no bias).

    impl: None picks by `jax.default_backend()` at trace time ("native" on GPU/TPU, "cpu" on
    CPU); "cpu" picks the measured-fastest CPU formulation for the shape; or one of
    `CONV_IMPLS` by name (tests and benchmarks). x may be a `TimeResized` video: with impl
    "cpu" it is convolved without being formed where that reads fewer frames
    (`_conv_time_resized`), else formed first.
    """
    if x.ndim != 5 or w.ndim != 5 or x.shape[-1] != w.shape[-2]:
        raise ValueError(f"conv3d expects x f32[N,T,H,W,Cin] and w f32[kt,kh,kw,Cin,Cout] with "
                         f"matching Cin; got x {x.shape}, w {w.shape}")
    strides = tuple(int(s) for s in strides)
    if len(strides) != 3:
        raise ValueError(f"conv3d expects strides for (T, H, W), three; got {strides}")
    pads = resolve_padding(x.shape[1:4], w.shape[:3], strides, padding)
    if min(_out_sizes(x.shape[1:4], w.shape[:3], strides, pads)) < 1:
        raise ValueError(f"conv3d: the kernel {w.shape[:3]} does not fit the input "
                         f"{x.shape[1:4]} with padding {pads}: the output would be empty")
    impl = impl or ("cpu" if jax.default_backend() == "cpu" else "native")
    if isinstance(x, TimeResized):
        if _fuses_time_resize(x, w.shape, strides, pads, impl):
            return _conv_time_resized(x, w, strides, pads)
        x = x.materialize()
    if impl == "cpu":
        impl = _cpu_strategy(x.shape, w.shape, strides, pads)
    if impl not in CONV_IMPLS:
        raise ValueError(f"unknown conv3d impl {impl!r}; expected 'cpu' or one of "
                         f"{sorted(CONV_IMPLS)}")
    return CONV_IMPLS[impl](x, w, strides, pads)


# ------------------------------------------------------------------- one output channel

def conv3d_channel(x: jax.Array, w: jax.Array, channel, strides: Sequence[int] = (1, 1, 1),
                   padding: Padding = "SAME") -> jax.Array:
    """conv3d(x, w)[..., channel:channel + 1], computing only that output channel.

    x f32[N,T,H,W,Cin], w f32[kt,kh,kw,Cin,Cout], channel an int, may be traced, read as
    `channel_index` reads it -> f32[N,T',H',W',1]. For stage 1's channel objectives, whose last layer needs
    one channel of Cout (Cout times fewer FLOPs for that convolution, forward and backward).

    Under jax.vmap over x and channel (stage 1: K videos, each with its own kernel), plain
    batching would give each example its own weight slice, a grouped convolution that XLA's
    CPU backend ran 2-3x slower per kernel than one dense one (I3D stem, 32x224x224: 0.32 s
    per kernel for K=4 against 0.11 s for one kernel alone). Here the batched rule instead
    convolves every video with the K selected kernels, one dense convolution with K output
    channels (with all Cout when K >= Cout), and keeps each video's own channel (the
    diagonal); the input gradient likewise (0.16 s per kernel at K=4, 0.20 s at K=16; all 64
    channels: 0.51 s). Values and gradients are those of conv3d's slice. Reverse-mode
    differentiable (a custom VJP), and its gradient forward-mode again (jax.hessian); the
    function itself not forward-mode (jax.jvp refuses). The diagonal form does min(K, Cout)
    output channels of work, never more than the whole convolution; it was measured on CPU
    only (on GPU a grouped convolution might do better for large K). `channel`: see
    `channel_index`.
    """
    if x.ndim != 5 or w.ndim != 5 or x.shape[-1] != w.shape[-2]:
        raise ValueError(f"conv3d_channel expects x f32[N,T,H,W,Cin] and w f32[kt,kh,kw,Cin,Cout] "
                         f"with matching Cin; got x {x.shape}, w {w.shape}")
    strides = tuple(int(s) for s in strides)
    pads = resolve_padding(x.shape[1:4], w.shape[:3], strides, padding)
    return _channel_conv(strides, pads)(materialize(x), w, channel_index(channel, w.shape[-1]))


def channel_index(channel, n: int) -> jax.Array | np.int32:
    """`channel` as an int32 index into n channels, the way indexing reads it: negative counts
    from the end. A concrete index must lie in [-n, n) (else ValueError) and comes back as a
    numpy int32, concrete even inside a trace (a model may then compute less: I3D's Inception
    block runs only that channel's branch); a traced one must have an integer dtype and is
    wrapped, then clamped into [0, n), as jnp indexing clamps traced indices (so every path
    that reads one channel agrees on every input)."""
    if isinstance(channel, jax.core.Tracer):
        if not jnp.issubdtype(channel.dtype, jnp.integer):
            raise TypeError(f"a channel index must be an integer; got dtype {channel.dtype}")
        c = channel.astype(jnp.int32)
        return jnp.clip(jnp.where(c < 0, c + n, c), 0, n - 1)
    value = np.asarray(channel)
    if value.shape != () or not np.issubdtype(value.dtype, np.integer):
        raise TypeError(f"a channel index must be one integer; got {channel!r}")
    if not -n <= int(value) < n:
        raise ValueError(f"channel {int(value)} is out of range: there are {n} channels "
                         f"(0-{n - 1}, or -{n} to -1 from the end)")
    return np.int32(int(value) % n)


def channel_slice(x: jax.Array, channel) -> jax.Array:
    """x f32[..., C] -> its channel `channel` as f32[..., 1] (read as `channel_index` reads it);
    x itself when channel is None."""
    if channel is None:
        return x
    return lax.dynamic_slice_in_dim(x, channel_index(channel, x.shape[-1]), 1, x.ndim - 1)


def _pick(y: jax.Array, index: jax.Array) -> jax.Array:
    """y[b, ..., index[b]] kept as a length-1 last axis: f32[B, ..., 1]."""
    index = index.reshape((-1,) + (1,) * (y.ndim - 1))
    return jnp.take_along_axis(y, index, axis=-1)


CHANNEL_BATCH_FORM = "diagonal"  # or "grouped" (benchmarks/gpu_profile.py measures both)


def _grouped_channel_conv(x, w, c, strides, pads):
    """x f32[B,N,T,H,W,Cin], w f32[kt,kh,kw,Cin,Cout], c i32[B] -> f32[B,N,T',H',W',1]: video b
    against kernel c[b] alone, as one native convolution of B groups (the B videos side by
    side in channels): B output channels of work, never B x B."""
    b, n = x.shape[:2]
    xs = jnp.moveaxis(x, 0, -2).reshape(n, *x.shape[2:5], b * x.shape[-1])
    y = lax.conv_general_dilated(xs, jnp.take(w, c, axis=-1), strides, pads,
                                 dimension_numbers=_DN3, feature_group_count=b)
    return jnp.moveaxis(y, -1, 0)[..., None]


@functools.cache
def _channel_conv(strides, pads):
    """conv3d_channel's differentiable, batchable function for fixed strides and padding."""
    conv = lambda x, w: conv3d(x, w, strides, pads)  # noqa: E731

    def one(x, w, c):  # unbatched: f32[N,...,Cin] -> f32[N,...,1]
        return conv(x, lax.dynamic_slice_in_dim(w, c, 1, axis=-1))

    def many(x, w, c):  # x f32[B,N,...,Cin], c i32[B], w shared -> f32[B,N,...,1]
        if CHANNEL_BATCH_FORM == "grouped":
            return _grouped_channel_conv(x, w, c, strides, pads)
        b, n = x.shape[:2]
        if b < w.shape[-1]:  # every video against the B selected kernels, then the diagonal
            w, c = jnp.take(w, c, axis=-1), jnp.arange(b)
        y = conv(x.reshape(b * n, *x.shape[2:]), w)
        return _pick(y.reshape(b, n, *y.shape[1:]), c)

    def rule(fn, fn_batched):
        """A custom_vmap rule: the diagonal form when the channel and a data argument (x, or
        the cotangent) are batched and the weights shared; plain vmap else (a channel batch
        alone already makes one dense convolution; per-example weights need groups)."""
        def vmap_rule(size, batched, x, w, c, *rest):
            if not any(batched):  # JAX's JVP rule asks with nothing batched
                return fn(x, w, c, *rest), False
            bx, bw, bc, *brest = batched
            if bc and not bw and (bx or any(brest)):
                x = x if bx else jnp.broadcast_to(x, (size, *x.shape))
                rest = [r if br else jnp.broadcast_to(r, (size, *r.shape))
                        for r, br in zip(rest, brest)]
                return fn_batched(x, w, c, *rest), True
            axes = [0 if b else None for b in batched]
            return jax.vmap(fn, in_axes=axes)(x, w, c, *rest), True
        return vmap_rule

    forward = jax.custom_batching.custom_vmap(one)
    forward.def_vmap(rule(one, many))

    def input_grad(f):
        def dx(x, w, c, g):  # the transpose of x -> f(x, w, c) applied to g
            return jax.vjp(lambda x: f(x, w, c), x)[1](g)[0]
        return dx

    grad_x = jax.custom_batching.custom_vmap(input_grad(one))
    grad_x.def_vmap(rule(input_grad(one), input_grad(many)))

    @jax.custom_vjp
    def f(x, w, c):
        return forward(x, w, c)

    def f_fwd(x, w, c):
        return forward(x, w, c), (x, w, c)

    def f_bwd(res, g):
        x, w, c = res
        grad_w = jax.vjp(lambda w: one(x, w, c), w)[1](g)[0]  # unused by stage 1: XLA drops it
        return grad_x(x, w, c, g), grad_w, None

    f.defvjp(f_fwd, f_bwd)
    return f


# ----------------------------------------------------------------------------------- pooling

def _pool_native(x, init, op, window, strides, pads):
    return lax.reduce_window(x, init, op, (1, *window, 1), (1, *strides, 1),
                             ((0, 0), *pads, (0, 0)))


def _first_max(a: jax.Array, b: jax.Array) -> jax.Array:
    """max(a, b) (NaN if either is) whose gradient goes all to `a` on a tie."""
    return jnp.where((a >= b) | jnp.isnan(a), a, b)


def _pool_separable(x, init, op, window, strides, pads):
    """Reduce one axis at a time (T, then H, then W) with strided slices and `op` (lax.max
    as `_first_max`)."""
    op = _first_max if op is lax.max else op
    x = _pad(x, pads, init)
    for axis, k, s in zip((1, 2, 3), window, strides):
        n = (x.shape[axis] - k) // s + 1
        r = None
        for a in range(k):
            xa = lax.slice_in_dim(x, a, a + (n - 1) * s + 1, s, axis=axis)
            r = xa if r is None else op(r, xa)
        x = r
    return x


def _pad_axis(x, axis: int, lo: int, hi: int, value: float = 0.0):
    """x padded along one axis with `value`, by concatenation."""
    parts = []
    for n in (lo, None, hi):
        if n is None:
            parts.append(x)
        elif n:
            shape = list(x.shape)
            shape[axis] = n
            parts.append(jnp.full(shape, value, x.dtype))
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=axis)


def _code_dtype(window) -> jnp.dtype:
    """The smallest signed integer type that holds every window offset's code (and -1)."""
    n = math.prod(window)
    return jnp.int8 if n <= 127 else jnp.int16 if n <= 32767 else jnp.int32


def _max_pool_code(x, window, strides, pads):
    """(y, code) of the separable max pool of f32[N,T,H,W,C]: y as `_pool_separable`, and
    per output cell the window offset (dt, dh, dw) of the input cell that won, packed as
    code = (dt * kh + dh) * kw + dw (the first on a tie along each axis in turn; a NaN wins
    and propagates). The code rides along the select chain: one more select per tap."""
    for axis, lo_hi in zip((1, 2, 3), pads):
        x = _pad_axis(x, axis, *lo_hi, value=-jnp.inf)
    y, code = x, None
    for axis, k, s in zip((1, 2, 3), window, strides):
        step = math.prod(window[axis:])  # the code's unit for this axis's offset
        n = (y.shape[axis] - k) // s + 1
        ys = cs = None
        for a in range(k):
            ya = lax.slice_in_dim(y, a, a + (n - 1) * s + 1, s, axis=axis)
            ca = (jnp.zeros(ya.shape, _code_dtype(window)) if code is None else
                  lax.slice_in_dim(code, a, a + (n - 1) * s + 1, s, axis=axis))
            ca = ca + jnp.asarray(a * step, ca.dtype) if a else ca
            if ys is None:
                ys, cs = ya, ca
            else:
                keep = (ys >= ya) | jnp.isnan(ys)
                ys, cs = jnp.where(keep, ys, ya), jnp.where(keep, cs, ca)
        y, code = ys, cs
    return y, code


def _max_pool_uncode(g, code, window, strides, padded):
    """The gradient of a max pool's padded input (spatial lengths `padded`) from its output's
    gradient g, both f32[N,T',H',W',C] with `_max_pool_code`'s code: every output cell's
    gradient goes to the input cell its code names.

    One pass per stride phase (q_t, q_h, q_w) of the input cells, p = s * m + q along each
    axis: the taps d = q + s * e of the window reach p from output cell m - e, so that phase
    is a sum of shifted selects over g and code padded with zeros and -1. Stride 1 is one
    phase, one fused pass; strided pools interleave their phases by a reshape. No scatter,
    and no per-axis intermediate to write and read back."""
    n_out = g.shape[1:4]
    m = [-(-length // s) for length, s in zip(padded, strides)]  # cells per phase
    taps = [-(-k // s) for k, s in zip(window, strides)]          # max taps in a phase
    cfg = [(0, 0, 0)] + [(e - 1, max(0, mi - no), 0)
                         for e, mi, no in zip(taps, m, n_out)] + [(0, 0, 0)]
    gp = lax.pad(g, jnp.zeros((), g.dtype), cfg)
    cp = lax.pad(code, jnp.asarray(-1, code.dtype), cfg)
    phases = []
    for q in itertools.product(*(range(s) for s in strides)):
        total = None
        for e in itertools.product(*(range(-(-(k - qi) // s)) for k, qi, s
                                     in zip(window, q, strides))):
            d = [qi + s * ei for qi, s, ei in zip(q, strides, e)]
            start = (0, *(t - 1 - ei for t, ei in zip(taps, e)), 0)
            limit = (g.shape[0], *(st + mi for st, mi in zip(start[1:4], m)), g.shape[4])
            hit = lax.slice(cp, start, limit) == (d[0] * window[1] + d[1]) * window[2] + d[2]
            term = jnp.where(hit, lax.slice(gp, start, limit), 0.0)
            total = term if total is None else total + term
        if total is None:  # a window smaller than its stride: no tap reaches this phase
            total = jnp.zeros((g.shape[0], *m, g.shape[4]), g.dtype)
        phases.append(total)
    if len(phases) == 1:
        out = phases[0]
    else:  # phases in q order: stack on a (s_t, s_h, s_w) axis, interleave, trim
        s_t, s_h, s_w = strides
        out = jnp.stack(phases, axis=4).reshape(g.shape[0], *m, s_t, s_h, s_w, g.shape[4])
        out = out.transpose(0, 1, 4, 2, 5, 3, 6, 7).reshape(
            g.shape[0], *(mi * s for mi, s in zip(m, strides)), g.shape[4])
    return lax.slice(out, (0, 0, 0, 0, 0), (g.shape[0], *padded, g.shape[4]))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool_vjp(x, window, strides, pads):
    """The separable max pool (same values, same tie rule) with a hand-written gradient.

    Reverse mode only (jax.jvp refuses a custom_vjp). Its forward pass also keeps each
    output's winning window offset as one small integer (`_max_pool_code`); its backward
    pass routes the gradient with shifted selects, one fused pass per stride phase
    (`_max_pool_uncode`), where autodiff of the select chain transposes every strided tap
    into an interior-padded scatter, and a per-axis backward writes and reads back one
    intermediate per tap and axis. Measured on the 2-core AMD EPYC dev VM (kvjax.jit, the
    paper preset's sizes, forward + gradient, K = 1): I3D's six pools up to Mixed_4b alone
    150 ms against 228 ms for the per-axis form; inside the network much less, I3D up to
    Mixed_3b / Mixed_4b 4-6% faster at K = 1 and 4 (benchmarks/pools.py; an earlier ad-hoc
    A/B 1-3%; benchmarks/results/stage1.md, sixteenth session)."""
    return _max_pool_code(x, window, strides, pads)[0]


def _max_pool_vjp_fwd(x, window, strides, pads):
    y, code = _max_pool_code(x, window, strides, pads)
    return y, (code, x.shape)


def _max_pool_vjp_bwd(window, strides, pads, residuals, g):
    code, shape = residuals
    padded = [n + lo + hi for n, (lo, hi) in zip(shape[1:4], pads)]
    gx = _max_pool_uncode(g, code, window, strides, padded)
    start = (0, *(lo for lo, _ in pads), 0)
    return (lax.slice(gx, start, tuple(a + n for a, n in zip(start, shape))),)


_max_pool_vjp.defvjp(_max_pool_vjp_fwd, _max_pool_vjp_bwd)


def _pool_separable_vjp(x, init, op, window, strides, pads):
    """Max: `_max_pool_vjp` (reverse mode only); other reductions: `_pool_separable`."""
    if op is not lax.max:
        return _pool_separable(x, init, op, window, strides, pads)
    return _max_pool_vjp(x, tuple(window), tuple(strides), tuple(map(tuple, pads)))


POOL_IMPLS = {"native": _pool_native, "separable": _pool_separable,
              "separable_vjp": _pool_separable_vjp}

_REVERSE_MODE_ONLY = contextvars.ContextVar("kvjax_reverse_mode_only", default=False)


@contextlib.contextmanager
def reverse_mode_only():
    """Code traced inside may be differentiated in reverse mode only: CPU max pools
    (impl "cpu") then take the faster "separable_vjp" form, whose gradient is hand-written
    and which refuses forward mode (jax.jvp, jacfwd). Read at trace time; kvjax.stage1.step
    traces its gradient inside. Outside, "cpu" is "separable", plain autodiff in every mode.

    JAX's jit cache does not see a Python context variable: a function jitted (by the caller,
    e.g. a jitted features function given to stage 1) and first traced inside would keep the
    reverse-mode-only pools under every later jax.jit of it, and jax.jvp of it would fail. So
    the context also sets XLA metadata (`jax.experimental.xla_metadata`, part of JAX's trace
    context and so of its cache keys): jitted functions are traced apart inside and outside.
    The metadata is a frontend attribute on the ops traced inside; the optimised HLO of a
    stage-1 step is otherwise the same (I3D Mixed_3b, compared modulo names and metadata).
    tests/test_ops.py checks both."""
    token = _REVERSE_MODE_ONLY.set(True)
    try:
        with set_xla_metadata(kvjax_reverse_mode_only="1"):  # a key of JAX's jit cache
            yield
    finally:
        _REVERSE_MODE_ONLY.reset(token)


def _pool(x, init, op, window, strides, padding, impl):
    if x.ndim != 5:
        raise ValueError(f"pooling expects f32[N,T,H,W,C]; got shape {x.shape}")
    window, strides = tuple(window), tuple(strides)
    if len(window) != 3 or len(strides) != 3:
        raise ValueError(f"pooling expects a window and strides for (T, H, W), three each; "
                         f"got window {window}, strides {strides}")
    pads = resolve_padding(x.shape[1:4], window, strides, padding)
    impl = impl or ("cpu" if jax.default_backend() == "cpu" else "native")
    if impl == "cpu":
        impl = "separable_vjp" if _REVERSE_MODE_ONLY.get() else "separable"
    if impl not in POOL_IMPLS:
        raise ValueError(f"unknown pooling impl {impl!r}; expected 'cpu' or one of "
                         f"{sorted(POOL_IMPLS)}")
    return POOL_IMPLS[impl](x, init, op, window, strides, pads)


def max_pool3d(x: jax.Array, window: Sequence[int], strides: Sequence[int],
               padding: Padding = "SAME", *, impl: str | None = None) -> jax.Array:
    """Max over windows of f32[N,T,H,W,C]; padded cells never win (TensorFlow semantics); a
    NaN in a window gives NaN, as lax.max does.

    Gradient ties: each form gives the whole gradient to one of the tied cells (a valid
    subgradient): the native form to the one XLA picks, the separable CPU form to the first
    along each axis in turn. The separable form's pairwise maximum is a select
    (`_first_max`), not lax.max: lax.max's gradient splits ties in halves and costs more
    elementwise work per tap in the backward pass (I3D's Mixed_4b stage-1 step at the paper
    preset, 7 alternating runs each on the 2-core dev VM: 1.85 s against 1.95 s on average,
    a gain within that VM's run-to-run spread of ~0.15 s; benchmarks/results/stage1.md).
    The "separable_vjp" form (CPU default inside `reverse_mode_only()`) has the same values
    and tie rule, and a hand-written gradient; it refuses forward mode.
    """
    return _pool(x, -jnp.inf, lax.max, window, strides, padding, impl)


def avg_pool3d(x: jax.Array, window: Sequence[int], strides: Sequence[int],
               padding: Padding = "VALID", *, impl: str | None = None) -> jax.Array:
    """Mean over windows of f32[N,T,H,W,C], dividing by the full window size (as TF/I3D do
    for VALID; with padding the padded zeros count, PyTorch's count_include_pad=True)."""
    s = _pool(x, 0.0, lax.add, window, strides, padding, impl)
    return s / float(window[0] * window[1] * window[2])
