"""Building blocks shared by the built-in models (inference only, channels last)."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from kvjax import ops

Padding = str | Sequence[tuple[int, int]]


class Conv3d(nnx.Module):
    """3D convolution through `kvjax.ops.conv3d` (fast on CPU, native elsewhere).

    kernel: f32[kt, kh, kw, Cin, Cout]; optional bias f32[Cout]. padding: "SAME" (TensorFlow
    rule), "VALID", or explicit ((t_lo, t_hi), (h_lo, h_hi), (w_lo, w_hi)) as PyTorch pads.
    """

    def __init__(self, cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int] = (1, 1, 1),
                 padding: Padding = "SAME", *, bias: bool = False, rngs: nnx.Rngs):
        init = jax.nn.initializers.lecun_normal()
        self.kernel = nnx.Param(init(rngs.params(), (*kernel, cin, cout), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32)) if bias else None
        self.stride = tuple(stride)
        self.padding = padding if isinstance(padding, str) else tuple(map(tuple, padding))

    def __call__(self, x: jax.Array, channel=None) -> jax.Array:
        """f32[N,T,H,W,Cin] -> f32[N,T',H',W',Cout]; with `channel` (an int, may be traced)
        only that output channel, f32[N,T',H',W',1] (kvjax.ops.conv3d_channel)."""
        if channel is None:
            y = ops.conv3d(x, self.kernel[...], self.stride, self.padding)
        else:
            y = ops.conv3d_channel(x, self.kernel[...], channel, self.stride, self.padding)
        return y if self.bias is None else \
            y + _last_axis(ops.channel_slice(self.bias[...], channel), y.ndim)


class BatchNorm(nnx.Module):
    """Inference-time batch norm over the last axis: (x - mean) / sqrt(var + eps) * scale + bias.

    `scale=False` is Sonnet/TF-Slim style (I3D): no multiplicative parameter.
    """

    def __init__(self, channels: int, *, eps: float, scale: bool = True):
        self.mean = nnx.BatchStat(jnp.zeros((channels,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((channels,), jnp.float32))
        self.scale = nnx.Param(jnp.ones((channels,), jnp.float32)) if scale else None
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))
        self.eps = eps

    def __call__(self, x: jax.Array, channel=None) -> jax.Array:
        """x f32[..., C]; with `channel`, x is that one channel, f32[..., 1]."""
        inv = jax.lax.rsqrt(self.var[...] + self.eps)
        if self.scale is not None:
            inv = inv * self.scale[...]
        shift = self.bias[...] - self.mean[...] * inv
        inv, shift = ops.channel_slice(inv, channel), ops.channel_slice(shift, channel)
        return x * _last_axis(inv, x.ndim) + _last_axis(shift, x.ndim)


def _last_axis(v: jax.Array, ndim: int) -> jax.Array:
    """f32[C] -> f32[1, ..., 1, C] with `ndim` axes (explicit broadcasting)."""
    return v.reshape((1,) * (ndim - 1) + v.shape)
