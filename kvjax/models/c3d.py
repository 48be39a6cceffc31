"""C3D (Tran et al., ICCV 2015) in the layout of DavideA/c3d-pytorch, channels last.

Input f32[N, 16, 112, 112, 3], RGB with pixel values in [0, 255] and no mean subtraction:
c3d-pytorch's `predict.py` feeds raw `skimage.io.imread` frames (resized to 112 x 200,
centre-cropped to 112 x 112) to its port of the Sports-1M weights; kvjax maps [0, 1] to
[0, 255] accordingly (`VALUE_RANGE`).

    conv1 3x3x3 (64) -> pool1 1x2x2 -> conv2 (128) -> pool2 2x2x2 -> conv3a, conv3b (256)
    -> pool3 -> conv4a, conv4b (512) -> pool4 -> conv5a, conv5b (512)
    -> pool5 2x2x2 stride 2, padding (0, 1, 1) -> fc6 (4096) -> fc7 (4096) -> fc8 (classes)

Every conv has a bias, padding 1 on all sides, and a ReLU; each exposes `NAME/conv` (raw,
PRE) and `NAME` (after ReLU, POST). Pools are exposed by name. fc6 reads pool5 flattened in
PyTorch's (C, T, H, W) order, which needs pool5 of shape 1 x 4 x 4: 16 to 31 frames and H, W
from 96 to 127 (the default 16 x 112 x 112 among them); for other input sizes the network
ends at pool5 and fc layers are not offered.
`fc6`, `fc7` are read after ReLU (`fc6/linear`, `fc7/linear` before it); `fc8` is the logits.
Built with num_classes 0 (a converted checkpoint without fc8) the network ends at `fc7`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from kvjax import ops
from kvjax.models import converted
from kvjax.models.base import POST, PRE, Taps, VideoModel
from kvjax.models.relu import relu
from kvjax.models.layers import Conv3d
from kvjax.models.linear import Linear

ARCH = "c3d"
INPUT_SIZE = (16, 112, 112)
VALUE_RANGE = (0.0, 255.0)
NUM_CLASSES = 487  # Sports-1M
FC6_INPUT = (1, 4, 4, 512)  # pool5 output (t, h, w, C) that fc6 was trained on

# (name, Cin, Cout) of the convolutions; a pool follows the names in _POOLS.
CONVS = (("conv1", 3, 64), ("conv2", 64, 128), ("conv3a", 128, 256), ("conv3b", 256, 256),
         ("conv4a", 256, 512), ("conv4b", 512, 512), ("conv5a", 512, 512), ("conv5b", 512, 512))
# pool name -> (window, strides, explicit padding); it follows the conv named as the key.
_POOLS = {"conv1": ("pool1", (1, 2, 2), (1, 2, 2), ((0, 0), (0, 0), (0, 0))),
          "conv2": ("pool2", (2, 2, 2), (2, 2, 2), ((0, 0), (0, 0), (0, 0))),
          "conv3b": ("pool3", (2, 2, 2), (2, 2, 2), ((0, 0), (0, 0), (0, 0))),
          "conv4b": ("pool4", (2, 2, 2), (2, 2, 2), ((0, 0), (0, 0), (0, 0))),
          "conv5b": ("pool5", (2, 2, 2), (2, 2, 2), ((0, 0), (1, 1), (1, 1)))}
FCS = (("fc6", 8192, 4096), ("fc7", 4096, 4096), ("fc8", 4096, None))


class C3D(nnx.Module):
    """`__call__(x, taps)`: x f32[N,16,112,112,3] in [0,255] -> logits f32[N, num_classes];
    with num_classes 0 (no fc8) fc7's output after ReLU, f32[N, 4096]."""

    def __init__(self, num_classes: int = NUM_CLASSES, *, rngs: nnx.Rngs):
        for name, cin, cout in CONVS:
            setattr(self, name, Conv3d(cin, cout, (3, 3, 3), (1, 1, 1), ((1, 1),) * 3,
                                       bias=True, rngs=rngs))
        for name, cin, cout in FCS:
            setattr(self, name, Linear(cin, cout or num_classes, rngs=rngs)
                    if cout or num_classes else None)  # num_classes 0: no classifier fc8

    def __call__(self, x: jax.Array, taps: Taps | None = None) -> jax.Array:
        taps = taps if taps is not None else Taps()
        for name, _, _ in CONVS:
            k = taps.channel_of(name, f"{name}/conv")  # one channel alone, when asked
            x = taps(f"{name}/conv", getattr(self, name)(x, k), PRE)
            x = taps(name, relu(x), POST)
            if name in _POOLS:
                pool, window, strides, pads = _POOLS[name]
                x = taps(pool, ops.max_pool3d(x, window, strides, pads), POST)
        if tuple(x.shape[1:]) != FC6_INPUT:
            return x  # fc6 was trained on 1x4x4x512; other input sizes end at pool5
        x = jnp.transpose(x, (0, 4, 1, 2, 3)).reshape(x.shape[0], -1)  # PyTorch's (C,T,H,W) flatten
        for name, _, cout in FCS:
            if getattr(self, name) is None:  # built without its classifier
                break
            x = getattr(self, name)(x)
            if cout is None:
                return taps(name, x, PRE)
            x = taps(f"{name}/linear", x, PRE)
            x = taps(name, relu(x), POST)
        return x


def make_net(num_classes: int = NUM_CLASSES, seed: int = 0) -> C3D:
    """C3D with a classifier fc8 of `num_classes` outputs (0: none, ending at fc7)."""
    return C3D(num_classes, rngs=nnx.Rngs(seed))


def build(checkpoint: str | None = None) -> VideoModel:
    """C3D with the weights of a converted checkpoint (`kvjax convert SRC DST --arch c3d`)."""
    net, manifest = converted.load_net(ARCH, checkpoint, make_net)
    return VideoModel(ARCH, net, INPUT_SIZE, VALUE_RANGE,
                      "C3D (c3d-pytorch layout), input 16x112x112 RGB in [0, 255]")
