"""I3D ResNet-50 of PySlowFast (facebookresearch/SlowFast, config `I3D_8x8_R50`), channels last.

The single-pathway `ResNet` model builder with `MODEL.ARCH: i3d`, `RESNET.DEPTH: 50`,
bottleneck blocks, `NUM_BLOCK_TEMP_KERNEL: [[3], [4], [6], [3]]`, stride on the 3x3 conv:

    s1   stem: conv 5x7x7 stride 1x2x2 pad (2,3,3) -> BN -> ReLU -> max-pool 1x3x3 stride 1x2x2 pad (0,1,1)
    s2   3 bottlenecks (256 out, 64 inner), temporal kernels 3,3,3     -> max-pool 2x1x1 (`s2/pool`)
    s3   4 bottlenecks (512, 128), stride 2, temporal kernels 3,1,3,1
    s4   6 bottlenecks (1024, 256), stride 2, temporal kernels 3,1,3,1,3,1
    s5   3 bottlenecks (2048, 512), stride 2, temporal kernels 1,3,1
    head avg-pool 4x7x7 stride 1 -> projection (Linear 2048 -> classes) at every position

A bottleneck: a (kt x1x1, pad kt//2) -> BN -> ReLU -> b (1x3x3, stride 1xsxs, pad 1) -> BN ->
ReLU -> c (1x1x1) -> BN, + shortcut (branch1: 1x1x1 stride 1xsxs conv + BN when the shape
changes), ReLU. BatchNorm eps 1e-5 with scale.

Input f32[N, 8, 224, 224, 3], RGB; PySlowFast divides pixels by 255 and normalises with mean
0.45 and std 0.225 on every channel, so pixels in [0, 1] map linearly to
[-0.45/0.225, 0.55/0.225] = [-2, 2.444...] (`VALUE_RANGE`). Caffe2-trained checkpoints of the
PySlowFast model zoo are used by PySlowFast with the same preprocessing.

Exposed layers: `s1/conv` (PRE), `s1/relu` (POST), `s1` (after the stem pool); per block
`s3/res0/a/conv` (PRE), `s3/res0/a` (POST), `.../b/conv`, `.../b`, `.../c/conv` (PRE),
`s3/res0` (block output, POST); stage outputs `s2` ... `s5`; `s2/pool`; `head` (the
projection at every pooled position, pre-softmax, PRE). In eval mode PySlowFast's head applies
a softmax and averages positions; kvjax exposes the logits before that. Built with num_classes
0 (a converted checkpoint without `head.projection`) the network has no head and ends at `s5`
(no head pool either, so any input that reaches `s5` does).

Asked for one channel (stage 1's readout, `features(video, channel=k)`), every layer above but
`head` is computed as that channel alone (pools act per channel; a block's output adds the
shortcut's one channel).
"""
from __future__ import annotations

import jax
from flax import nnx

from kvjax import ops
from kvjax.models import converted
from kvjax.models.base import POST, PRE, Taps, VideoModel
from kvjax.models.relu import relu
from kvjax.models.layers import BatchNorm, Conv3d
from kvjax.models.linear import Linear

ARCH = "slowfast-i3d-r50"
INPUT_SIZE = (8, 224, 224)
VALUE_RANGE = (-0.45 / 0.225, 0.55 / 0.225)
NUM_CLASSES = 400
BN_EPS = 1e-5
# stage: (blocks, dim_out, dim_inner, spatial stride, temporal kernels per block)
STAGES = {"s2": (3, 256, 64, 1, (3, 3, 3)),
          "s3": (4, 512, 128, 2, (3, 1, 3, 1)),
          "s4": (6, 1024, 256, 2, (3, 1, 3, 1, 3, 1)),
          "s5": (3, 2048, 512, 2, (1, 3, 1))}
STEM_OUT = 64
HEAD_POOL = (4, 7, 7)


def _pads(*p):
    return tuple((x, x) for x in p)


class Bottleneck(nnx.Module):
    """PySlowFast ResBlock with BottleneckTransform (see the module docstring)."""

    def __init__(self, cin: int, cout: int, inner: int, stride: int, kt: int, *, rngs: nnx.Rngs):
        self.a = Conv3d(cin, inner, (kt, 1, 1), (1, 1, 1), _pads(kt // 2, 0, 0), rngs=rngs)
        self.a_bn = BatchNorm(inner, eps=BN_EPS)
        self.b = Conv3d(inner, inner, (1, 3, 3), (1, stride, stride), _pads(0, 1, 1), rngs=rngs)
        self.b_bn = BatchNorm(inner, eps=BN_EPS)
        self.c = Conv3d(inner, cout, (1, 1, 1), (1, 1, 1), "VALID", rngs=rngs)
        self.c_bn = BatchNorm(cout, eps=BN_EPS)
        if cin != cout or stride != 1:
            self.branch1 = Conv3d(cin, cout, (1, 1, 1), (1, stride, stride), "VALID", rngs=rngs)
            self.branch1_bn = BatchNorm(cout, eps=BN_EPS)
        else:
            self.branch1 = self.branch1_bn = None

    def __call__(self, x: jax.Array, taps: Taps, name: str,
                 also: tuple[str, ...] = ()) -> jax.Array:
        """f32[N,T,H,W,Cin] -> f32[N,T,H',W',Cout]. When `taps` stops at one of the block's
        layers (or at a name in `also`, which reports the block's output) with a channel, that
        layer is computed as the one channel alone, f32[..., 1]: for the output, c's channel
        plus the shortcut's (branch1's one channel, or the input's)."""
        k = taps.channel_of(f"{name}/a/conv", f"{name}/a")
        y = taps(f"{name}/a/conv", self.a(x, k), PRE)
        y = taps(f"{name}/a", relu(self.a_bn(y, k)), POST)
        k = taps.channel_of(f"{name}/b/conv", f"{name}/b")
        y = taps(f"{name}/b/conv", self.b(y, k), PRE)
        y = taps(f"{name}/b", relu(self.b_bn(y, k)), POST)
        k = taps.channel_of(f"{name}/c/conv", name, *also)
        y = self.c_bn(taps(f"{name}/c/conv", self.c(y, k), PRE), k)
        res = ops.channel_slice(x, k) if self.branch1 is None else \
            self.branch1_bn(self.branch1(x, k), k)
        return taps(name, relu(res + y), POST)


class SlowFastI3dR50(nnx.Module):
    """`__call__(x, taps)`: x f32[N,8,224,224,3] normalised -> logits f32[N,t,h,w,classes];
    with num_classes 0 (no head) the output of `s5`, f32[N,T/2,H/32,W/32,2048]."""

    def __init__(self, num_classes: int = NUM_CLASSES, *, rngs: nnx.Rngs):
        self.s1_conv = Conv3d(3, STEM_OUT, (5, 7, 7), (1, 2, 2), _pads(2, 3, 3), rngs=rngs)
        self.s1_bn = BatchNorm(STEM_OUT, eps=BN_EPS)
        cin = STEM_OUT
        for stage, (blocks, cout, inner, stride, kts) in STAGES.items():
            for i in range(blocks):
                setattr(self, f"{stage}_res{i}",
                        Bottleneck(cin, cout, inner, stride if i == 0 else 1, kts[i], rngs=rngs))
                cin = cout
        self.head = Linear(cin, num_classes, rngs=rngs) if num_classes else None

    def __call__(self, x: jax.Array, taps: Taps | None = None) -> jax.Array:
        taps = taps if taps is not None else Taps()
        k = taps.channel_of("s1/relu", "s1/conv", "s1")  # one channel alone, when asked
        x = taps("s1/conv", self.s1_conv(x, k), PRE)
        x = taps("s1/relu", relu(self.s1_bn(x, k)), POST)
        x = taps("s1", ops.max_pool3d(x, (1, 3, 3), (1, 2, 2), _pads(0, 1, 1)), POST)
        for stage, (blocks, *_rest) in STAGES.items():
            for i in range(blocks):
                last = () if i < blocks - 1 else (stage, "s2/pool") if stage == "s2" else (stage,)
                x = getattr(self, f"{stage}_res{i}")(x, taps, f"{stage}/res{i}", last)
            x = taps(stage, x, POST)
            if stage == "s2":
                x = taps("s2/pool", ops.max_pool3d(x, (2, 1, 1), (2, 1, 1), "VALID"), POST)
        if self.head is None:  # built without its classifier
            return x
        x = ops.avg_pool3d(x, HEAD_POOL, (1, 1, 1), "VALID")
        n, t, h, w, c = x.shape
        return taps("head", self.head(x.reshape(-1, c)).reshape(n, t, h, w, -1), PRE)


def make_net(num_classes: int = NUM_CLASSES, seed: int = 0) -> SlowFastI3dR50:
    """The network with a head of `num_classes` outputs (0: none, ending at `s5`)."""
    return SlowFastI3dR50(num_classes, rngs=nnx.Rngs(seed))


def build(checkpoint: str | None = None) -> VideoModel:
    """PySlowFast I3D-R50 with a converted checkpoint's weights (.pyth or Caffe2 .pkl source)."""
    net, manifest = converted.load_net(ARCH, checkpoint, make_net)
    return VideoModel(ARCH, net, INPUT_SIZE, VALUE_RANGE,
                      "PySlowFast I3D ResNet-50 8x8, RGB, mean 0.45 / std 0.225")
