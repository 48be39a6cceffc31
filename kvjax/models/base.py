"""What every built-in model offers: named layers and pure features functions.

A model is a Flax NNX module `net` whose `__call__(x, taps)` runs f32[N,T,H,W,3] (already in
the network's own value range and size) and reports each named activation to `taps`; `taps`
stops the forward pass as soon as the requested layer has been computed, so a features
function runs only the network up to its layer.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from kvjax import ops
from kvjax.errors import KvjaxError, unknown_name
from kvjax.models.relu import MODES, relu_gradient

PRE = "pre-activation"    # the raw convolution output (what the reference code hooks)
POST = "post-activation"  # after normalisation and the nonlinearity (kvjax's default)


class LayerInfo(NamedTuple):
    """One layer a kernel can be chosen from.

    name: e.g. "Mixed_3b/Branch_1/Conv3d_0b_3x3"; channels: number of kernels;
    shape: (t, h, w, C) for the model's default input; read: PRE or POST (what the objective reads).
    """
    name: str
    channels: int
    shape: tuple[int, ...]
    read: str


class _Reached(Exception):
    def __init__(self, value):
        self.value = value


class Taps:
    """Collects named activations; raises to stop the forward pass at `until`.

    Models call `taps(name, x)` for every layer they expose and return `x` unchanged.
    With `channel` (an int, may be traced), only that channel of `until` is wanted: a model
    may then compute that layer as the one channel alone (see `channel_of`); if it does not,
    `run_until` slices it from the whole layer.
    """

    def __init__(self, until: str | None = None, channel=None):
        self.until = until
        self.channel = channel
        self.sliced = False  # whether the model computed `until` as the one channel
        self.reads: dict[str, str] = {}
        self.values: dict[str, jax.Array] = {}

    def channel_of(self, *names: str):
        """The channel wanted, if the layer being stopped at is one of `names` (the names one
        module reports), else None. A model that gets a channel must report those names as
        that channel alone, f32[..., 1]."""
        if self.channel is None or self.until not in names:
            return None
        self.sliced = True
        return self.channel

    def __call__(self, name: str, x: jax.Array, read: str = POST) -> jax.Array:
        self.reads[name] = read
        if self.until is None:
            self.values[name] = x
        elif name == self.until:
            raise _Reached(x)
        return x


def run_until(net: nnx.Module, x: jax.Array, layer: str, channel=None) -> jax.Array:
    """net(x) evaluated only as far as `layer`: f32[N,t,h,w,C], or with `channel` only that
    channel, f32[N,t,h,w,1]; raises if the net never produced the layer."""
    taps = Taps(layer, channel)
    try:
        net(x, taps)
    except _Reached as r:
        return r.value if taps.sliced else ops.channel_slice(r.value, channel)
    raise KeyError(layer)


@dataclasses.dataclass(frozen=True)
class _FeaturesFn:
    """Static half of a features function: graph, layer and preprocessing (hashable)."""
    graphdef: Any
    layer: str
    input_size: tuple[int, int, int]
    value_range: tuple[float, float]
    relu_grad: str = "redirect"
    channels: int = 0  # of `layer`
    channel_readout = True  # takes `channel=` (kvjax.stage1's one-channel readout)

    def coarse(self, factor: int) -> "_FeaturesFn":
        """The same features seeing a video `factor` times smaller in H and W at an input as
        much smaller (kvjax.stage1.coarse_features; `coarse_size`)."""
        return dataclasses.replace(self, input_size=coarse_size(self.input_size, factor))

    def __call__(self, state, video: jax.Array, channel=None) -> jax.Array:
        if video.ndim != 4 or video.shape[-1] != 3:
            raise ValueError(f"features expects one video f32[T,H,W,3]; got {video.shape}")
        if channel is not None:
            channel = ops.channel_index(channel, self.channels)
        lo, hi = self.value_range
        net = nnx.merge(self.graphdef, state)
        if getattr(net, "takes_time_resized", False) and video.shape[0] != self.input_size[0]:
            # the resize along time left to the network's first convolution (ops.TimeResized)
            x = resize_video(video, (video.shape[0], *self.input_size[1:]))
            x = ops.TimeResized((x * (hi - lo) + lo)[None], self.input_size[0])
        else:
            x = (resize_video(video, self.input_size) * (hi - lo) + lo)[None]
        with relu_gradient(self.relu_grad):
            return run_until(net, x, self.layer, channel)[0]


def coarse_size(size: tuple[int, int, int], factor: int) -> tuple[int, int, int]:
    """The model input for stage 1's coarse phase: (T, round(H / factor), round(W / factor))."""
    t, h, w = size
    return t, max(1, round(h / factor)), max(1, round(w / factor))


def resize_video(video: jax.Array, size: tuple[int, int, int]) -> jax.Array:
    """Trilinear resize of f32[T,H,W,C] to (T', H', W'), corners aligned (PyTorch's
    `interpolate(..., mode="trilinear", align_corners=True)`, the reference's model input:
    output voxel i samples input coordinate i * (n - 1) / (n' - 1)); no antialiasing.
    Separable, as three small matmuls (kvjax.ops.resize_matrix); identity when already that
    size."""
    if tuple(video.shape[:3]) == tuple(size):
        return video
    hi = jax.lax.Precision.HIGHEST
    for axis, n_out in enumerate(size):
        n_in = video.shape[axis]
        if n_in == n_out:
            continue
        m = jnp.asarray(ops.resize_matrix(n_in, n_out))
        video = jnp.moveaxis(jnp.tensordot(m, video, axes=([1], [axis]), precision=hi), 0, axis)
    return video


class VideoModel:
    """A built-in 3D CNN with its weights, layer table and preprocessing.

    name: registry name; net: the NNX module; input_size: default (T, H, W) the network sees;
    value_range: (lo, hi) that pixels in [0, 1] are mapped to before the network;
    default_layer: what `kvjax visualize` shows when no layer is named.
    """

    def __init__(self, name: str, net: nnx.Module, input_size: tuple[int, int, int],
                 value_range: tuple[float, float], description: str = "",
                 default_layer: str | None = None):
        self.name = name
        self.net = net
        self.input_size = tuple(input_size)
        self.value_range = tuple(value_range)
        self.description = description
        self._layers: list[LayerInfo] | None = None
        self._default_layer = default_layer

    @property
    def default_layer(self) -> str:
        """The layer `kvjax visualize` uses when none is named: the model's choice, else its
        first layer read after a nonlinearity."""
        return self._default_layer or next(l.name for l in self.layers() if l.read == POST)

    def layers(self, input_size: tuple[int, int, int] | None = None) -> list[LayerInfo]:
        """Every layer in forward order, shapes for `input_size` (default: the model's).

        An input too small for the whole network gives the layers it reaches (every output
        axis at least 1), in order; `check_layer` names the others as out of reach.
        """
        size = tuple(input_size or self.input_size)
        if size == self.input_size and self._layers is not None:
            return self._layers
        graphdef, state = nnx.split(self.net)
        taps = Taps()
        shapes = {}

        def all_taps(state, x):
            taps.values.clear()
            try:
                nnx.merge(graphdef, state)(x, taps)
            finally:  # the layers reached before an op found its input too small
                shapes.update((n, tuple(v.shape)) for n, v in taps.values.items())
            return dict(taps.values)

        try:
            jax.eval_shape(all_taps, state, jax.ShapeDtypeStruct((1, *size, 3), jnp.float32))
        except (TypeError, ValueError, ZeroDivisionError):  # sizes too small past some layer
            if not shapes and size == self.input_size:
                raise  # the model's own input must reach its layers: a bug, not a size
        out = []
        for n, read in taps.reads.items():  # forward order (dicts come back sorted)
            if n not in shapes or min(shapes[n][1:]) < 1:
                break
            out.append(LayerInfo(n, shapes[n][-1], shapes[n][1:], read))
        if size == self.input_size:
            self._layers = out
        return out

    def layer_names(self) -> list[str]:
        return [l.name for l in self.layers()]

    def check_layer(self, layer: str,
                    input_size: tuple[int, int, int] | None = None) -> LayerInfo:
        """The LayerInfo of `layer` for `input_size` (default: the model's), or a KvjaxError
        naming the closest valid layers, or, for a layer the input is too small to reach,
        the deepest layer it reaches."""
        for info in self.layers():
            if info.name == layer:
                break
        else:
            raise unknown_name("layer", layer, self.layer_names(),
                               where=f"in model {self.name!r}",
                               hint=f"`kvjax layers --model {self.name}` lists them")
        size = tuple(input_size or self.input_size)
        if size == self.input_size:
            return info
        reached = self.layers(size)
        for small in reached:
            if small.name == layer:
                return small
        deepest = (f"the deepest it reaches is {reached[-1].name}" if reached else
                   "it reaches no layer")
        raise KvjaxError(f"layer {layer!r} is out of reach of a model input of "
                         f"{'x'.join(map(str, size))} (T x H x W): {deepest}; use another "
                         f"input size (--size; the model's own, "
                         f"{'x'.join(map(str, self.input_size))}, reaches every layer; "
                         f"--preset paper uses it)")

    def features(self, layer: str, input_size: tuple[int, int, int] | None = None,
                 relu_grad: str = "redirect") -> Callable[[jax.Array], jax.Array]:
        """Pure f32[T,H,W,3] in [0,1] -> f32[t,h,w,C] activations of `layer`; called as
        `features(video, channel=k)` (k an int, may be traced), only channel k, f32[t,h,w,1],
        computed alone where the model can (I3D: the last convolution of the layer computes
        one output channel; kvjax.stage1 uses this for objectives that read one channel).
        k as in indexing (negative from the end; kvjax.ops.channel_index). That call is
        reverse-mode differentiable once (kvjax.ops.conv3d_channel), not forward-mode; nor is
        the default relu_grad="redirect" (a custom reverse-mode rule): jax.jvp, jacfwd and
        hessian need relu_grad="exact" and no `channel`.

        The video is resized (trilinear) to `input_size` (default: the model's) and mapped to
        the model's value range; a network whose first op takes it (`takes_time_resized`:
        I3D) gets the video resized in H, W only and the resize along time unformed
        (kvjax.ops.TimeResized), which its stem composes with its kernels on CPU (the `paper`
        preset's 16 -> 32 frames: 74 frame-taps instead of 112) and forms elsewhere (then
        after the H, W resize: the same values up to float32 rounding). Values are exact. Gradients: `relu_grad="redirect"` (the
        default, for activation maximisation) lets a ReLU that passed no gradient at all pass
        the gradient that would wake it up (kvjax.models.relu: a dead kernel's stage 1 then
        starts moving instead of staying grey); `"exact"` gives the true gradient. Redirection
        assumes the gradient of a loss being *minimised* (stage 1 minimises -objective): the
        gradient of the objective itself, climbed, gets no wake-up. The result is a
        `jax.tree_util.Partial` whose leaves are the weights, so jitted code that takes it as
        an argument gets the weights as arguments (closed-over weights would be constant-folded
        by XLA).
        """
        info = self.check_layer(layer, input_size)
        graphdef, state = nnx.split(self.net)
        if relu_grad not in MODES:
            raise ValueError(f"relu_grad must be one of {MODES}; got {relu_grad!r}")
        fn = _FeaturesFn(graphdef, layer, tuple(input_size or self.input_size), self.value_range,
                         relu_grad, info.channels)
        return jax.tree_util.Partial(fn, state)

    def __repr__(self) -> str:
        n = sum(x.size for x in jax.tree_util.tree_leaves(nnx.state(self.net)))
        return f"VideoModel({self.name!r}, input {self.input_size}, {n:,} weights)"
