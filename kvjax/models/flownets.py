"""FlowNetS (Dosovitskiy et al., ICCV 2015) in the layout of ClementPinard/FlowNetPytorch.

A 2D network on pairs of frames: kvjax feeds every consecutive pair (t, t+1) of the video,
stacked on channels as [frame t RGB, frame t+1 RGB] (6 channels), through the same network;
pairs play the role of time, so every activation is f32[N, T-1, h, w, C].

    encoder  conv1 7x7/2 (64), conv2 5x5/2 (128), conv3 5x5/2 (256), conv3_1 3x3 (256),
             conv4 3x3/2 (512), conv4_1, conv5 3x3/2 (512), conv5_1, conv6 3x3/2 (1024), conv6_1
             each Conv2d(padding (k-1)//2) [-> BatchNorm for FlowNetS-BN] -> LeakyReLU(0.1)
    decoder  flow6 = predict_flow6(conv6_1); for l = 5, 4, 3, 2:
             deconv_l (ConvTranspose 4x4/2, pad 1, no bias, LeakyReLU) of the previous level,
             upsampled flow (ConvTranspose 4x4/2, pad 1, 2 -> 2), both cropped to conv_l's size,
             concat [conv_l, deconv_l, flow_up] -> predict_flow_l (3x3 conv -> 2, no bias)
    (level 2 concatenates conv2.) The network's output is flow2 at 1/4 resolution before
    upsampling: flow2 x div_flow is the displacement in pixels of the input frame (div_flow =
    20 for the released weights: one unit is 20 px).

Input: pixels in [0, 1], RGB; the network subtracts the mean (0.45, 0.432, 0.411) per channel,
as FlowNetPytorch's `main.py`, which trained the released weights on RGB frames, does
(x / 255 - mean; its TensorBoard images add the same back). Its `run_inference.py` subtracts
(0.411, 0.432, 0.45), the channels swapped: 0.039 off in red and blue. Default input 2 x 384 x 512
(FlyingChairs frames); H and W must be multiples of 64 for the decoder to align without crops.

Exposed layers: `conv1/conv` (PRE), `conv1` (LeakyReLU, POST), ..., `conv6_1`; `flow6` ...
`flow2` (PRE, predicted flow), `deconv5` ... `deconv2` (POST). Asked for one channel (stage
1's readout), the encoder's layers and the deconvs are computed as that channel alone; the
two-channel flows are sliced.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from kvjax import ops
from kvjax.models import converted
from kvjax.models.base import POST, PRE, Taps, VideoModel
from kvjax.models.layers import BatchNorm

ARCH = "flownets"
INPUT_SIZE = (2, 384, 512)
VALUE_RANGE = (0.0, 1.0)
MEAN = (0.45, 0.432, 0.411)  # R, G, B: main.py's (the training) normalisation
BN_EPS = 1e-5
# (name, Cin, Cout, kernel, stride)
ENCODER = (("conv1", 6, 64, 7, 2), ("conv2", 64, 128, 5, 2), ("conv3", 128, 256, 5, 2),
           ("conv3_1", 256, 256, 3, 1), ("conv4", 256, 512, 3, 2), ("conv4_1", 512, 512, 3, 1),
           ("conv5", 512, 512, 3, 2), ("conv5_1", 512, 512, 3, 1), ("conv6", 512, 1024, 3, 2),
           ("conv6_1", 1024, 1024, 3, 1))
# decoder level -> (skip conv, deconv Cin, deconv Cout, predict_flow Cin)
DECODER = {5: ("conv5_1", 1024, 512, 1026), 4: ("conv4_1", 1026, 256, 770),
           3: ("conv3_1", 770, 128, 386), 2: ("conv2", 386, 64, 194)}


def _init(rngs, shape):
    return nnx.Param(jax.nn.initializers.lecun_normal()(rngs.params(), shape, jnp.float32))


class Conv2d(nnx.Module):
    """2D conv over every pair: f32[N,P,H,W,Cin] -> f32[N,P,H',W',Cout]; kernel (1,k,k,Cin,Cout)
    so it runs through `kvjax.ops.conv3d` with a unit temporal kernel."""

    def __init__(self, cin, cout, k, stride, *, bias: bool, rngs):
        self.kernel = _init(rngs, (1, k, k, cin, cout))
        self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32)) if bias else None
        self.stride = (1, stride, stride)
        self.pad = (k - 1) // 2

    def __call__(self, x, channel=None):
        """With `channel` (an int, may be traced) only that output channel, f32[..., 1]."""
        p = self.pad
        pads = ((0, 0), (p, p), (p, p))
        y = ops.conv3d(x, self.kernel[...], self.stride, pads) if channel is None else \
            ops.conv3d_channel(x, self.kernel[...], channel, self.stride, pads)
        if self.bias is None:
            return y
        return y + ops.channel_slice(self.bias[...], channel).reshape(1, 1, 1, 1, -1)


class ConvTranspose2d(nnx.Module):
    """PyTorch ConvTranspose2d(k=4, stride=2, padding=1, no bias) per pair: output 2H x 2W.

    kernel f32[1, 4, 4, Cin, Cout] stored already flipped, so the op is a plain convolution
    of the input dilated by the stride (zeros between pixels) and padded by k - 1 - p = 2.
    """

    def __init__(self, cin, cout, *, rngs):
        self.kernel = _init(rngs, (1, 4, 4, cin, cout))

    def __call__(self, x, channel=None):
        """With `channel` (an int, may be traced) only that output channel, f32[..., 1]."""
        z = jnp.zeros((), x.dtype)
        x = lax.pad(x, z, ((0, 0, 0), (0, 0, 0), (2, 2, 1), (2, 2, 1), (0, 0, 0)))
        if channel is None:
            return ops.conv3d(x, self.kernel[...], (1, 1, 1), "VALID")
        return ops.conv3d_channel(x, self.kernel[...], channel, (1, 1, 1), "VALID")


def _crop_like(x, target):
    """FlowNetPytorch's crop_like: cut H, W to the target's (no-op for multiples of 64)."""
    return x[:, :, :target.shape[2], :target.shape[3], :]


def leaky(x):
    return jax.nn.leaky_relu(x, 0.1)


class FlowNetS(nnx.Module):
    """`__call__(x, taps)`: x f32[N,T,H,W,3] in [0,1] -> flow2 f32[N,T-1,H/4,W/4,2]."""

    def __init__(self, batch_norm: bool = False, *, rngs: nnx.Rngs):
        self.batch_norm = batch_norm
        for name, cin, cout, k, s in ENCODER:
            setattr(self, name, Conv2d(cin, cout, k, s, bias=not batch_norm, rngs=rngs))
            if batch_norm:
                setattr(self, f"{name}_bn", BatchNorm(cout, eps=BN_EPS))
        self.predict_flow6 = Conv2d(1024, 2, 3, 1, bias=False, rngs=rngs)
        for level, (_, cin, cout, fin) in DECODER.items():
            setattr(self, f"deconv{level}", ConvTranspose2d(cin, cout, rngs=rngs))
            setattr(self, f"upsampled_flow{level + 1}_to_{level}", ConvTranspose2d(2, 2, rngs=rngs))
            setattr(self, f"predict_flow{level}", Conv2d(fin, 2, 3, 1, bias=False, rngs=rngs))

    def __call__(self, x: jax.Array, taps: Taps | None = None) -> jax.Array:
        taps = taps if taps is not None else Taps()
        x = x - jnp.asarray(MEAN, x.dtype).reshape(1, 1, 1, 1, 3)
        x = jnp.concatenate([x[:, :-1], x[:, 1:]], axis=-1)  # pairs (t, t+1): 6 channels
        outs = {}
        for name, *_ in ENCODER:
            k = taps.channel_of(f"{name}/conv", name)  # one channel alone, when asked
            x = taps(f"{name}/conv", getattr(self, name)(x, k), PRE)
            if self.batch_norm:
                x = getattr(self, f"{name}_bn")(x, k)
            x = outs[name] = taps(name, leaky(x), POST)
        flow = taps("flow6", self.predict_flow6(x), PRE)
        for level, (skip, *_) in DECODER.items():
            target = outs[skip]
            flow_up = _crop_like(getattr(self, f"upsampled_flow{level + 1}_to_{level}")(flow), target)
            k = taps.channel_of(f"deconv{level}")
            x = taps(f"deconv{level}",
                     _crop_like(leaky(getattr(self, f"deconv{level}")(x, k)), target), POST)
            x = jnp.concatenate([target, x, flow_up], axis=-1)
            flow = taps(f"flow{level}", getattr(self, f"predict_flow{level}")(x), PRE)
        return flow


def make_net(batch_norm: bool = False, seed: int = 0) -> FlowNetS:
    return FlowNetS(batch_norm, rngs=nnx.Rngs(seed))


def build(checkpoint: str | None = None) -> VideoModel:
    """FlowNetS with a converted checkpoint's weights (`kvjax convert ... --arch flownets`)."""
    net, manifest = converted.load_net(ARCH, checkpoint, make_net)
    return VideoModel(ARCH, net, INPUT_SIZE, VALUE_RANGE,
                      "FlowNetS (FlowNetPytorch layout) on consecutive frame pairs, RGB in [0, 1]")
