"""torchvision's video ResNets (Tran et al., CVPR 2018): r3d_18, mc3_18, r2plus1d_18.

Channels last, the layout of `torchvision.models.video.resnet`. Input f32[N, 16, 112, 112, 3]
with pixels in [0, 1]; the network itself normalises with the Kinetics-400 mean
(0.43216, 0.394666, 0.37645) and std (0.22803, 0.22145, 0.216989), as torchvision's
`VideoClassification` preset does before the network.

    stem -> layer1..layer4 (two BasicBlocks each; strides 1, 2, 2, 2) -> avgpool -> fc

- r3d_18: every conv 3x3x3 (stem 3x7x7, stride 1x2x2).
- mc3_18: layer1 3x3x3, layers 2-4 1x3x3 ("mixed convolutions": temporal only at the bottom);
  their downsampling strides 1 x s x s.
- r2plus1d_18: every 3x3x3 conv factorised into a 1x3x3 spatial conv -> BN -> ReLU -> 3x1x1
  temporal conv with midplanes = (Cin * Cout * 27) // (Cin * 9 + 3 * Cout) channels between,
  computed once per block from its (inplanes, planes) and used by both of its convs;
  stem 1x7x7 (45 channels) -> 3x1x1 (64).

BatchNorm eps 1e-5 with scale. Padding symmetric and explicit, as PyTorch pads.
Exposed layers (every one in forward order): `stem/conv` (PRE) and `stem` (POST); per block
`layer2/0/conv1/conv` (raw conv, PRE), `layer2/0/conv1` (after BN + ReLU), `layer2/0/conv2/conv`
(PRE), `layer2/0` (block output after the residual sum and ReLU), and `layer2` (the stage's
output); for (2+1)D convs also `.../spatial` (raw spatial conv, PRE) and `.../mid` (after its
BN + ReLU). `avgpool` f32[N,1,1,1,512] and `fc` (logits, PRE). Built with num_classes 0 (a
converted checkpoint without its classifier) the network has no `fc` and ends at `avgpool`.

Asked for one channel (stage 1's readout, `features(video, channel=k)`), every layer above
up to `layer4` is computed as that channel alone: its last convolution gives one output
channel, and a block's output adds the shortcut's one channel (the downsampling conv's, or the
input's). `avgpool` and `fc` are sliced from the whole layer.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from kvjax import ops
from kvjax.models import converted
from kvjax.models.base import POST, PRE, Taps, VideoModel
from kvjax.models.relu import relu
from kvjax.models.layers import BatchNorm, Conv3d
from kvjax.models.linear import Linear

INPUT_SIZE = (16, 112, 112)
VALUE_RANGE = (0.0, 1.0)
MEAN = (0.43216, 0.394666, 0.37645)
STD = (0.22803, 0.22145, 0.216989)
NUM_CLASSES = 400
BN_EPS = 1e-5
STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))  # (planes, stride) of layer1..layer4
BLOCKS = 2  # per stage in the *_18 models
KINDS = {"r3d_18": ("simple",) * 4, "mc3_18": ("simple", "notemporal", "notemporal", "notemporal"),
         "r2plus1d_18": ("2plus1d",) * 4}


def _conv(cin, cout, kernel, stride, pad, rngs):
    """Conv3d without bias, symmetric PyTorch padding `pad` = (pt, ph, pw)."""
    return Conv3d(cin, cout, kernel, stride, tuple((p, p) for p in pad), rngs=rngs)


def midplanes(cin: int, cout: int) -> int:
    """torchvision's width of the (2+1)D factorisation (parameter count of a 3x3x3 conv)."""
    return (cin * cout * 3 * 3 * 3) // (cin * 3 * 3 + 3 * cout)


class Conv3x3(nnx.Module):
    """torchvision's Conv3DSimple (3x3x3, stride s) or Conv3DNoTemporal (1x3x3, stride 1xsxs)."""

    def __init__(self, cin, cout, mid, stride, *, temporal: bool, rngs):
        del mid
        k, st, p = ((3, 3, 3), (stride,) * 3, (1, 1, 1)) if temporal else \
            ((1, 3, 3), (1, stride, stride), (0, 1, 1))
        self.conv = _conv(cin, cout, k, st, p, rngs)

    def __call__(self, x, taps, name, channel=None):
        """f32[N,T,H,W,Cin] -> f32[N,T',H',W',Cout], or only output `channel`, f32[..., 1]."""
        return self.conv(x, channel)


class Conv2Plus1D(nnx.Module):
    """1x3x3 spatial conv (stride 1xsxs) -> BN -> ReLU -> 3x1x1 temporal conv (stride sx1x1)."""

    def __init__(self, cin, cout, mid, stride, *, rngs):
        self.spatial = _conv(cin, mid, (1, 3, 3), (1, stride, stride), (0, 1, 1), rngs)
        self.bn = BatchNorm(mid, eps=BN_EPS)
        self.temporal = _conv(mid, cout, (3, 1, 1), (stride, 1, 1), (1, 0, 0), rngs)

    def __call__(self, x, taps, name, channel=None):
        """f32[N,T,H,W,Cin] -> f32[N,T',H',W',Cout], or only output `channel`, f32[..., 1];
        the inner layers also one channel alone when `taps` stops at one of them."""
        k = taps.channel_of(f"{name}/spatial", f"{name}/mid")
        x = taps(f"{name}/spatial", self.spatial(x, k), PRE)
        x = taps(f"{name}/mid", relu(self.bn(x, k)), POST)
        return self.temporal(x, channel)


def _builder(kind: str):
    """(conv maker(cin, cout, mid, stride, rngs), downsample stride(s))."""
    if kind == "2plus1d":
        return (lambda *a, rngs: Conv2Plus1D(*a, rngs=rngs)), lambda s: (s, s, s)
    temporal = kind == "simple"
    return (functools.partial(Conv3x3, temporal=temporal),
            (lambda s: (s, s, s)) if temporal else (lambda s: (1, s, s)))


class BasicBlock(nnx.Module):
    """conv1 -> bn1 -> relu -> conv2 -> bn2, + (downsampled) input, relu."""

    def __init__(self, kind: str, cin: int, planes: int, stride: int, *, rngs: nnx.Rngs):
        make, ds_stride = _builder(kind)
        mid = midplanes(cin, planes)
        self.conv1 = make(cin, planes, mid, stride, rngs=rngs)
        self.bn1 = BatchNorm(planes, eps=BN_EPS)
        self.conv2 = make(planes, planes, mid, 1, rngs=rngs)
        self.bn2 = BatchNorm(planes, eps=BN_EPS)
        if stride != 1 or cin != planes:
            self.downsample = Conv3d(cin, planes, (1, 1, 1), ds_stride(stride), "VALID", rngs=rngs)
            self.downsample_bn = BatchNorm(planes, eps=BN_EPS)
        else:
            self.downsample = self.downsample_bn = None

    def __call__(self, x, taps: Taps, name: str, also: tuple[str, ...] = ()):
        """f32[N,T,H,W,Cin] -> f32[N,T',H',W',planes]. When `taps` stops at one of the block's
        layers (or at a name in `also`, which reports the block's output: the stage's) with a
        channel, that layer is computed as the one channel alone, f32[..., 1]: for the output,
        conv2's channel plus the shortcut's (the downsampling conv's one channel, or the
        input's channel)."""
        k = taps.channel_of(f"{name}/conv1/conv", f"{name}/conv1")
        y = taps(f"{name}/conv1/conv", self.conv1(x, taps, f"{name}/conv1", k), PRE)
        y = taps(f"{name}/conv1", relu(self.bn1(y, k)), POST)
        k = taps.channel_of(f"{name}/conv2/conv", name, *also)
        y = taps(f"{name}/conv2/conv", self.conv2(y, taps, f"{name}/conv2", k), PRE)
        res = ops.channel_slice(x, k) if self.downsample is None else \
            self.downsample_bn(self.downsample(x, k), k)
        return taps(name, relu(self.bn2(y, k) + res), POST)


class VideoResNet(nnx.Module):
    """`__call__(x, taps)`: x f32[N,T,H,W,3] in [0,1] -> logits f32[N, num_classes]; with
    num_classes 0 (no classifier `fc`) the pooled features f32[N,1,1,1,512]."""

    def __init__(self, arch: str, num_classes: int = NUM_CLASSES, *, rngs: nnx.Rngs):
        self.arch = arch
        kinds = KINDS[arch]
        if arch == "r2plus1d_18":
            self.stem_spatial = _conv(3, 45, (1, 7, 7), (1, 2, 2), (0, 3, 3), rngs)
            self.stem_bn1 = BatchNorm(45, eps=BN_EPS)
            self.stem = _conv(45, 64, (3, 1, 1), (1, 1, 1), (1, 0, 0), rngs)
        else:
            self.stem = _conv(3, 64, (3, 7, 7), (1, 2, 2), (1, 3, 3), rngs)
        self.stem_bn = BatchNorm(64, eps=BN_EPS)
        cin = 64
        for i, ((planes, stride), kind) in enumerate(zip(STAGES, kinds), start=1):
            for j in range(BLOCKS):
                setattr(self, f"layer{i}_{j}",
                        BasicBlock(kind, cin, planes, stride if j == 0 else 1, rngs=rngs))
                cin = planes
        self.fc = Linear(cin, num_classes, rngs=rngs) if num_classes else None

    def __call__(self, x: jax.Array, taps: Taps | None = None) -> jax.Array:
        taps = taps if taps is not None else Taps()
        mean = jnp.asarray(MEAN, x.dtype).reshape(1, 1, 1, 1, 3)
        std = jnp.asarray(STD, x.dtype).reshape(1, 1, 1, 1, 3)
        x = (x - mean) / std
        if self.arch == "r2plus1d_18":
            k = taps.channel_of("stem/mid", "stem/spatial")  # one channel alone, when asked
            x = taps("stem/spatial", self.stem_spatial(x, k), PRE)
            x = taps("stem/mid", relu(self.stem_bn1(x, k)), POST)
        k = taps.channel_of("stem", "stem/conv")
        x = taps("stem/conv", self.stem(x, k), PRE)
        x = taps("stem", relu(self.stem_bn(x, k)), POST)
        for i in range(1, len(STAGES) + 1):
            for j in range(BLOCKS):
                last = (f"layer{i}",) if j == BLOCKS - 1 else ()  # the stage's output
                x = getattr(self, f"layer{i}_{j}")(x, taps, f"layer{i}/{j}", last)
            x = taps(f"layer{i}", x, POST)
        x = taps("avgpool", jnp.mean(x, axis=(1, 2, 3), keepdims=True), POST)
        if self.fc is None:  # built without its classifier
            return x
        return taps("fc", self.fc(x.reshape(x.shape[0], -1)), PRE)


def make_net(arch: str, num_classes: int = NUM_CLASSES, seed: int = 0) -> VideoResNet:
    """`arch` with a classifier of `num_classes` outputs (0: none, ending at `avgpool`)."""
    if arch not in KINDS:
        raise ValueError(f"unknown video ResNet {arch!r}; valid: {', '.join(KINDS)}")
    return VideoResNet(arch, num_classes, rngs=nnx.Rngs(seed))


def build(arch: str, checkpoint: str | None = None) -> VideoModel:
    """`arch` (r3d_18 | mc3_18 | r2plus1d_18) with a converted checkpoint's weights."""
    net, manifest = converted.load_net(arch, checkpoint, functools.partial(make_net, arch))
    return VideoModel(arch, net, INPUT_SIZE, VALUE_RANGE,
                      f"torchvision {arch}, input 16x112x112 in [0, 1] (Kinetics mean/std inside)")
