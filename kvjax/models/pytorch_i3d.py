"""Inception-I3D in the layout of piergiaj/pytorch-i3d (`pytorch_i3d.py`), channels last.

The same network as the built-in `i3d` (same layer names: `Conv3d_1a_7x7`, `Mixed_3b`,
`Mixed_3b/Branch_1/Conv3d_0b_3x3`, ..., `Logits`), as pytorch-i3d builds it:

- convolutions padded like TensorFlow's SAME, which pytorch-i3d computes at run time from
  the input size (`compute_pad`) and applies with `F.pad` (zeros, low side gets the smaller half);
- BatchNorm3d(eps=1e-3) *with* an affine scale (`bn.weight`), unlike the built-in's Sonnet BN;
- max pools padded with zeros (not -inf) before pooling (`MaxPool3dSamePadding`); every pool
  follows a ReLU, so this equals -inf padding, but it is kept exact;
- input f32[N, T, 224, 224, 3] in [-1, 1] (pytorch-i3d's datasets map pixels as x/255*2-1);
  default T = 32 (the network is fully convolutional; `Logits` needs t >= 2 after /8 in time
  and 7 x 7 spatially, i.e. 224 x 224).

Each Unit3D exposes `NAME/conv` (raw conv, PRE) and `NAME` (after BN and ReLU, POST).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from kvjax import ops
from kvjax.models import converted
from kvjax.models.base import POST, PRE, Taps, VideoModel
from kvjax.models.i3d import _BRANCHES, _MIXED, _PLAN, _attr
from kvjax.models.relu import relu
from kvjax.models.layers import BatchNorm, Conv3d

ARCH = "pytorch-i3d"
INPUT_SIZE = (32, 224, 224)
VALUE_RANGE = (-1.0, 1.0)
NUM_CLASSES = 400
BN_EPS = 1e-3
# pytorch-i3d's attribute names of the Inception branches, in the order of i3d._BRANCHES.
TORCH_BRANCHES = ("b0", "b1a", "b1b", "b2a", "b2b", "b3b")


class Unit3D(nnx.Module):
    """conv (no bias, SAME) -> BatchNorm (scale, eps 1e-3) -> ReLU; reports NAME/conv, NAME."""

    def __init__(self, cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int] = (1, 1, 1),
                 *, rngs: nnx.Rngs):
        self.conv = Conv3d(cin, cout, kernel, stride, "SAME", rngs=rngs)
        self.bn = BatchNorm(cout, eps=BN_EPS, scale=True)

    def __call__(self, x: jax.Array, taps: Taps, name: str) -> jax.Array:
        x = taps(f"{name}/conv", self.conv(x), PRE)
        return taps(name, relu(self.bn(x)), POST)


def max_pool_same_zeros(x: jax.Array, window: Sequence[int], strides: Sequence[int]) -> jax.Array:
    """pytorch-i3d's MaxPool3dSamePadding: zero-pad as TF SAME would, then max-pool VALID."""
    pads = ops.resolve_padding(x.shape[1:4], window, strides, "SAME")
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    return ops.max_pool3d(x, window, strides, "VALID")


class InceptionModule(nnx.Module):
    """b0 1x1 | b1a 1x1 -> b1b 3x3x3 | b2a 1x1 -> b2b 3x3x3 | b3a pool 3x3x3 -> b3b 1x1, concat."""

    def __init__(self, cin: int, out: Sequence[int], *, rngs: nnx.Rngs):
        c0, c1a, c1b, c2a, c2b, c3 = out
        for tf_name, (i, o, k) in zip(_BRANCHES, ((cin, c0, 1), (cin, c1a, 1), (c1a, c1b, 3),
                                                  (cin, c2a, 1), (c2a, c2b, 3), (cin, c3, 1))):
            setattr(self, _attr(tf_name), Unit3D(i, o, (k, k, k), rngs=rngs))

    def __call__(self, x: jax.Array, taps: Taps, name: str) -> jax.Array:
        def unit(tf_name, inp):
            return getattr(self, _attr(tf_name))(inp, taps, f"{name}/{tf_name}")
        b0 = unit(_BRANCHES[0], x)
        b1 = unit(_BRANCHES[2], unit(_BRANCHES[1], x))
        b2 = unit(_BRANCHES[4], unit(_BRANCHES[3], x))
        b3 = unit(_BRANCHES[5], max_pool_same_zeros(x, (3, 3, 3), (1, 1, 1)))
        return taps(name, jnp.concatenate([b0, b1, b2, b3], axis=-1), POST)


class PytorchI3d(nnx.Module):
    """`__call__(x, taps)`: x f32[N,T,224,224,3] in [-1,1] -> f32[N,t,1,1,num_classes]."""

    def __init__(self, num_classes: int = NUM_CLASSES, *, rngs: nnx.Rngs):
        for name, kind, args in _PLAN:
            if kind == "unit":
                setattr(self, name, Unit3D(*args, rngs=rngs))
            elif kind == "mixed":
                setattr(self, name, InceptionModule(args, _MIXED[name], rngs=rngs))
            elif kind == "logits":
                self.Logits = Conv3d(args[0], num_classes, (1, 1, 1), bias=True, rngs=rngs)

    def __call__(self, x: jax.Array, taps: Taps | None = None) -> jax.Array:
        taps = taps if taps is not None else Taps()
        for name, kind, args in _PLAN:
            if kind == "pool":
                x = taps(name, max_pool_same_zeros(x, args[0], args[1]), POST)
            elif kind == "logits":
                x = ops.avg_pool3d(x, (2, 7, 7), (1, 1, 1), "VALID")  # nn.AvgPool3d([2, 7, 7])
                x = taps(name, self.Logits(x), PRE)
            else:
                x = getattr(self, name)(x, taps, name)
        return x


def units() -> list[tuple[str, str, tuple[str, ...]]]:
    """(kvjax layer name, pytorch-i3d module name, NNX attribute path) of every Unit3D."""
    out = []
    for name, kind, _ in _PLAN:
        if kind == "unit":
            out.append((name, name, (name,)))
        elif kind == "mixed":
            out += [(f"{name}/{b}", f"{name}.{tb}", (name, _attr(b)))
                    for b, tb in zip(_BRANCHES, TORCH_BRANCHES)]
    return out


def make_net(num_classes: int = NUM_CLASSES, seed: int = 0) -> PytorchI3d:
    return PytorchI3d(num_classes, rngs=nnx.Rngs(seed))


def build(checkpoint: str | None = None) -> VideoModel:
    """pytorch-i3d with the weights of a converted checkpoint (`kvjax convert ... --arch pytorch-i3d`)."""
    net, manifest = converted.load_net(ARCH, checkpoint, make_net)
    return VideoModel(ARCH, net, INPUT_SIZE, VALUE_RANGE,
                      "Inception-I3D (piergiaj/pytorch-i3d layout), RGB in [-1, 1]")
