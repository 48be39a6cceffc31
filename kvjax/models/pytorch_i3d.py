"""Inception-I3D in the layout of piergiaj/pytorch-i3d (`pytorch_i3d.py`), channels last.

The same network as the built-in `i3d` (same layer names: `Conv3d_1a_7x7`, `Mixed_3b`,
`Mixed_3b/Branch_1/Conv3d_0b_3x3`, ..., `Logits`, and the same parameter paths), as
pytorch-i3d builds it, which is `i3d.InceptionI3d(bn_scale=True, zero_pad_pools=True)`:

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

from flax import nnx

from kvjax.models import converted
from kvjax.models.base import VideoModel
from kvjax.models.i3d import InceptionI3d, _BRANCHES, _PLAN, _attr

ARCH = "pytorch-i3d"
INPUT_SIZE = (32, 224, 224)
VALUE_RANGE = (-1.0, 1.0)
NUM_CLASSES = 400
# pytorch-i3d's attribute names of the Inception branches, in the order of i3d._BRANCHES.
TORCH_BRANCHES = ("b0", "b1a", "b1b", "b2a", "b2b", "b3b")


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


def make_net(num_classes: int = NUM_CLASSES, seed: int = 0) -> InceptionI3d:
    """`__call__(x, taps)`: x f32[N,T,224,224,3] in [-1,1] -> f32[N,t,1,1,num_classes]; with
    num_classes 0 (a checkpoint without `logits`) no `Logits`: Mixed_5c's f32[N,T/8,7,7,1024]."""
    return InceptionI3d(num_classes, bn_scale=True, zero_pad_pools=True, rngs=nnx.Rngs(seed))


def build(checkpoint: str | None = None) -> VideoModel:
    """pytorch-i3d with the weights of a converted checkpoint (`kvjax convert ... --arch pytorch-i3d`)."""
    net, manifest = converted.load_net(ARCH, checkpoint, make_net)
    return VideoModel(ARCH, net, INPUT_SIZE, VALUE_RANGE,
                      "Inception-I3D (piergiaj/pytorch-i3d layout), RGB in [-1, 1]")
