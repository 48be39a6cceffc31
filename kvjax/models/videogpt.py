"""The encoder of VideoGPT's VQ-VAE (wilson1yan/VideoGPT, `videogpt/vqvae.py`), channels last.

    convs.i   SamePadConv3d 4x4x4 (bias), stride 2 on the axes still to be downsampled, ReLU
              (log2(max(downsample)) of them; e.g. downsample (4, 4, 4) -> two, both stride 2)
    conv_last SamePadConv3d 3x3x3 (bias), no activation
    res_stack n_res_layers x AttentionResidualBlock, then BatchNorm -> ReLU
    pre_vq_conv SamePadConv3d 1x1x1 (bias) -> the latent z the codebook quantises

AttentionResidualBlock: x + [BN -> ReLU -> conv 3x3x3 (C -> C/2, no bias) -> BN -> ReLU ->
conv 1x1x1 (C/2 -> C, no bias) -> BN -> ReLU -> AxialBlock]; AxialBlock is the sum of three
2-head self-attentions, each along one axis (W, H, T) of the video, with q, k, v projections
without bias and an output projection with bias; scores scaled by 1/sqrt(d_head).

SamePadConv3d pads each axis by k - s in total, the larger half in front ((k-s+1)//2 before,
(k-s)//2 after), i.e. it assumes sizes divisible by the stride. BatchNorm eps 1e-5, with scale.

Input f32[N, T, H, W, 3] in [-0.5, 0.5] (VideoGPT's `preprocess`: x / 255 - 0.5), RGB; the
default size is the checkpoint's (sequence_length, resolution, resolution) where its
hyper-parameters record them, else 16 x 64 x 64. The decoder and the codebook are not part of
this model (they do not see the video).

Exposed layers: `convs/0/conv` (PRE), `convs/0` (ReLU, POST), ..., `conv_last` (PRE);
per block `res0/conv3/conv` (PRE), `res0/conv3` (BN + ReLU, POST), `res0/conv1/conv`,
`res0/conv1`, `res0/attn` (the axial attention sum, PRE), `res0` (block output x + y, no
nonlinearity: PRE);
`res_stack` (final BN + ReLU, POST); `pre_vq_conv` (the latent, PRE). Asked for one channel
(stage 1's readout), every convolution's layers are computed as that channel alone; the
attention, the residual sums and `res_stack` are sliced from the whole layer.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from kvjax.errors import KvjaxError
from kvjax.models import converted
from kvjax.models.base import POST, PRE, Taps, VideoModel
from kvjax.models.relu import relu
from kvjax.models.layers import BatchNorm, Conv3d
from kvjax.models.linear import Linear

ARCH = "videogpt-vqvae"
VALUE_RANGE = (-0.5, 0.5)
BN_EPS = 1e-5
N_HEAD = 2
# VideoGPT's defaults (its `add_model_specific_args`)
DEFAULTS = dict(n_hiddens=240, n_res_layers=4, downsample=(4, 4, 4), embedding_dim=256,
                sequence_length=16, resolution=64)


def same_pad_conv(cin: int, cout: int, k: int, stride: Sequence[int] = (1, 1, 1), *,
                  bias: bool = True, rngs: nnx.Rngs) -> Conv3d:
    """VideoGPT's SamePadConv3d: total padding k - s per axis, the larger half in front."""
    pads = tuple(((k - s + 1) // 2, (k - s) // 2) for s in stride)
    return Conv3d(cin, cout, (k, k, k), tuple(stride), pads, bias=bias, rngs=rngs)


def check_downsample(downsample: Any) -> tuple[int, int, int]:
    """`downsample` (VideoGPT's total stride per axis T, H, W) as three ints, or a KvjaxError
    naming the valid form: three powers of two >= 1."""
    ok = (isinstance(downsample, (list, tuple)) and len(downsample) == 3
          and all(isinstance(d, numbers.Integral) and not isinstance(d, bool)
                  and d >= 1 and d & (d - 1) == 0 for d in downsample))
    if not ok:
        raise KvjaxError(f"downsample must be three powers of two >= 1, the stride per axis "
                         f"T,H,W (e.g. 4,4,4 or 4,2,2); got {_show(downsample)}")
    return tuple(int(d) for d in downsample)


def check_size(name: str, value: Any) -> int:
    """`sequence_length` or `resolution` (frames, pixels) as an int >= 1, or a KvjaxError."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise KvjaxError(f"{name} must be a whole number >= 1 (the default input's "
                         f"{'frames' if name == 'sequence_length' else 'height and width'}, "
                         f"e.g. {DEFAULTS[name]}); got {_show(value)}")
    return int(value)


def _show(value: Any) -> str:
    """A value as `--hparam` writes it: 4,2,2 for a list, repr otherwise."""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return repr(value)


def conv_strides(downsample: Sequence[int]) -> list[tuple[int, int, int]]:
    """Strides of the downsampling convs: 2 on each axis with halvings left, as VideoGPT."""
    left = [int(math.log2(d)) for d in check_downsample(downsample)]
    out = []
    for _ in range(max(left)):
        out.append(tuple(2 if n > 0 else 1 for n in left))
        left = [n - 1 for n in left]
    return out


class AxialAttention(nnx.Module):
    """Multi-head self-attention along one video axis (1 = T, 2 = H, 3 = W) of f32[N,T,H,W,C]."""

    def __init__(self, c: int, axis: int, *, rngs: nnx.Rngs):
        self.axis = axis
        self.w_qs = Linear(c, c, bias=False, rngs=rngs)
        self.w_ks = Linear(c, c, bias=False, rngs=rngs)
        self.w_vs = Linear(c, c, bias=False, rngs=rngs)
        self.fc = Linear(c, c, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        n, t, h, w, c = x.shape
        d = c // N_HEAD

        def heads(y):  # (N,T,H,W,C) -> (N, X, Y, heads, L, d), L the attended axis
            y = y.reshape(n, t, h, w, N_HEAD, d)
            return jnp.moveaxis(y, self.axis, 4)
        q, k, v = heads(self.w_qs(x)), heads(self.w_ks(x)), heads(self.w_vs(x))
        scores = jnp.einsum("...ld,...md->...lm", q, k) / math.sqrt(d)
        out = jnp.einsum("...lm,...md->...ld", jax.nn.softmax(scores, axis=-1), v)
        out = jnp.moveaxis(out, 4, self.axis).reshape(n, t, h, w, c)
        return self.fc(out)


class AttentionResidualBlock(nnx.Module):
    def __init__(self, c: int, *, rngs: nnx.Rngs):
        self.bn0 = BatchNorm(c, eps=BN_EPS)
        self.conv3 = same_pad_conv(c, c // 2, 3, bias=False, rngs=rngs)
        self.bn1 = BatchNorm(c // 2, eps=BN_EPS)
        self.conv1 = same_pad_conv(c // 2, c, 1, bias=False, rngs=rngs)
        self.bn2 = BatchNorm(c, eps=BN_EPS)
        self.attn_w = AxialAttention(c, 3, rngs=rngs)
        self.attn_h = AxialAttention(c, 2, rngs=rngs)
        self.attn_t = AxialAttention(c, 1, rngs=rngs)

    def __call__(self, x: jax.Array, taps: Taps, name: str) -> jax.Array:
        """f32[N,T,H,W,C] -> the same; the convolutions' layers one channel alone when `taps`
        stops at one of them with a channel (the attention mixes channels: sliced)."""
        k = taps.channel_of(f"{name}/conv3/conv", f"{name}/conv3")
        y = taps(f"{name}/conv3/conv", self.conv3(relu(self.bn0(x)), k), PRE)
        y = taps(f"{name}/conv3", relu(self.bn1(y, k)), POST)
        k = taps.channel_of(f"{name}/conv1/conv", f"{name}/conv1")
        y = taps(f"{name}/conv1/conv", self.conv1(y, k), PRE)
        y = taps(f"{name}/conv1", relu(self.bn2(y, k)), POST)
        y = taps(f"{name}/attn", self.attn_w(y) + self.attn_h(y) + self.attn_t(y), PRE)
        return taps(name, x + y, PRE)  # a residual sum: no nonlinearity until the next block


class VQVAEEncoder(nnx.Module):
    """`__call__(x, taps)`: x f32[N,T,H,W,3] in [-0.5,0.5] -> z f32[N,T/dt,H/dh,W/dw,embedding_dim]."""

    def __init__(self, n_hiddens: int, n_res_layers: int, downsample: Sequence[int],
                 embedding_dim: int, *, rngs: nnx.Rngs):
        cin = 3
        self.n_convs = len(conv_strides(downsample))
        for i, stride in enumerate(conv_strides(downsample)):
            setattr(self, f"convs_{i}", same_pad_conv(cin, n_hiddens, 4, stride, rngs=rngs))
            cin = n_hiddens
        self.conv_last = same_pad_conv(cin, n_hiddens, 3, rngs=rngs)
        self.n_res_layers = n_res_layers
        for i in range(n_res_layers):
            setattr(self, f"res_{i}", AttentionResidualBlock(n_hiddens, rngs=rngs))
        self.res_bn = BatchNorm(n_hiddens, eps=BN_EPS)
        self.pre_vq_conv = same_pad_conv(n_hiddens, embedding_dim, 1, rngs=rngs)

    def __call__(self, x: jax.Array, taps: Taps | None = None) -> jax.Array:
        taps = taps if taps is not None else Taps()
        for i in range(self.n_convs):
            k = taps.channel_of(f"convs/{i}", f"convs/{i}/conv")  # one channel alone, when asked
            x = taps(f"convs/{i}/conv", getattr(self, f"convs_{i}")(x, k), PRE)
            x = taps(f"convs/{i}", relu(x), POST)
        x = taps("conv_last", self.conv_last(x, taps.channel_of("conv_last")), PRE)
        for i in range(self.n_res_layers):
            x = getattr(self, f"res_{i}")(x, taps, f"res{i}")
        x = taps("res_stack", relu(self.res_bn(x)), POST)
        return taps("pre_vq_conv", self.pre_vq_conv(x, taps.channel_of("pre_vq_conv")), PRE)


def make_net(n_hiddens: int = DEFAULTS["n_hiddens"], n_res_layers: int = DEFAULTS["n_res_layers"],
             downsample: Sequence[int] = DEFAULTS["downsample"],
             embedding_dim: int = DEFAULTS["embedding_dim"],
             sequence_length: int = DEFAULTS["sequence_length"],
             resolution: int = DEFAULTS["resolution"], seed: int = 0) -> VQVAEEncoder:
    """The encoder; `sequence_length` and `resolution` only set the default input size.
    A bad `downsample`, `sequence_length` or `resolution` is a KvjaxError naming the valid form."""
    net = VQVAEEncoder(n_hiddens, n_res_layers, check_downsample(downsample), embedding_dim,
                       rngs=nnx.Rngs(seed))
    net.input_size = (check_size("sequence_length", sequence_length),
                      check_size("resolution", resolution), resolution)
    return net


def build(checkpoint: str | None = None) -> VideoModel:
    """VideoGPT's VQ-VAE encoder with a converted checkpoint's weights."""
    net, manifest = converted.load_net(ARCH, checkpoint, make_net)
    return VideoModel(ARCH, net, net.input_size, VALUE_RANGE,
                      "VideoGPT VQ-VAE encoder, RGB in [-0.5, 0.5]")
