"""Stage 1: activation maximisation, many kernels in one compiled program.

Find for each kernel k a video V (f32[T, H, W, 3] in [0, 1]) maximising objective(features(
transform(V)), k) (by default the paper's channel objective). The pieces are pure and optax
shaped (STYLE.md item 1):

    init(key, kernel, config) -> Stage1State        parameters, optimiser state, key
    step(state, features, kernel, config, objective) -> (state, value)
    run(state, features, kernel, config, n_steps, objective) -> (state, values f32[n_steps])

and `optimize` vmaps them over kernels, in chunks of `config.chunk_size` kernels (None: as many
as fit in device memory, `auto_chunk_size`, from XLA's memory analysis; at most 4 per CPU
device), running the steps as `lax.scan` segments of `config.progress_every` steps (one compiled
program reused for every segment and every chunk) with a progress callback between segments; on
CPU, where XLA runs a step about 3x slower inside a scan (`_plan`), up to four steps unrolled
per program, reporting as often.
With several devices each chunk's kernel axis is split over them inside the same programs
(kvjax.devices); chunks are then a multiple of the device count. Results come back to host
memory chunk by chunk, in kernel order.

One channel: when the objective reads only the kernel's channel (channel, neuron and sums of
them: `Objective.one_channel`) and `features` can compute one channel alone
(`reads_one_channel`: built-in models' features functions can), the step asks for that channel
only (`activations`): same values, and the layer's last convolutions compute one output
channel instead of C (kvjax.ops.conv3d_channel; under the vmap over kernels, min(K, C)).

Coarse to fine (`Stage1Config.coarse_steps`): the run's first steps optimise a smaller video
(seen by the network through `coarse_features`), tiled to full size by a compiled program of
its own (`_tile`); each phase has its own programs, compiled once for all chunks.

Reproducibility: kernel k uses the key jax.random.fold_in(key, k), so its result depends only
on (key, k, config), not on chunking or on which other kernels run beside it.

Weights: the array leaves of `features` (e.g. a `jax.tree_util.Partial` over model weights)
and of the objective are passed to the compiled programs as arguments; everything else is
static (part of the compilation key), as in equinox's filter_jit. Closing over the weights
instead would let XLA constant-fold whole convolutions at compile time.

NaN/inf: a step whose objective, gradient or new parameters are not finite is not applied;
that kernel is frozen at its last finite state, reported in `Stage1Result.finite`, and its
trace is NaN from then on. Other kernels are unaffected (nothing mixes across kernels).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from kvjax import compiler
from kvjax import devices as devices_lib
from kvjax import objectives as objectives_lib
from kvjax import ops
from kvjax import param as param_lib
from kvjax import presets
from kvjax import transforms as transforms_lib

Features = Callable[[jax.Array], jax.Array]
Progress = Callable[[int, int, int, int], Any]


# ----------------------------------------------------------------------------- config

@dataclasses.dataclass(frozen=True)
class Stage1Config:
    """Settings of stage 1 (hashable: it is part of the compiled programs' static key).

    steps: optimisation steps per kernel. lr: Adam learning rate (used when `optimizer` is
    None). size: (T, H, W) of the optimised video (the features function resizes it to the
    model's input). param: "pixel" or "spectral" (see kvjax.param); init_sd: std of the
    parameters' normal init; spectral_decay / spectral_time_weight: see param.spectral.
    transform: a (key, video) -> video robustness transform drawn fresh each step (hashable,
    e.g. transforms.Affine), or None for none. optimizer: an optax GradientTransformation, or
    None for optax.adam(lr). chunk_size: kernels per compiled program (memory bound; rounded
    down to a multiple of the device count), or None to fit the free device memory (at most 4
    per CPU device: kvjax.devices.max_per_device).
    progress_every: steps per lax.scan segment (progress is reported between segments; on
    CPU, programs of up to four unrolled steps, reported about every progress_every steps).
    one_channel: compute only the kernel's channel of the layer when the objective reads
    nothing else (channel, neuron) and `features` can (`reads_one_channel`): the same values,
    and the layer's last convolutions cost min(K, C)/C of their FLOPs for K kernels vmapped
    (False: always the whole layer).
    coarse_steps / coarse_factor: coarse to fine. The first `coarse_steps` of the `steps` run
    on a video coarse_factor times smaller in H and W (T kept), which the network sees at an
    input as much smaller (`coarse_features`), so a step costs about 1/coarse_factor^2 of a
    full one; then each video is tiled coarse_factor x coarse_factor (exactly, in the
    parameters: `param.tile`; its corners at the big video's corners, or, for an objective
    that reads the layer's centre, its centre at the centre: `tile_align`) and the remaining
    steps run at full size with a fresh optimiser state. A channel objective is a mean over
    positions, so a pattern of the right pixel scale found on the small canvas holds on the
    large one, and the coarse phase buys most of the climb cheaply (I3D Mixed_3b at
    16x112x112, shift-only jitter: 400 coarse + 45 full-size steps reach the reference
    algorithm's 1500-step objective, 8.07, 26x sooner on the same machine;
    benchmarks/results/stage1.md, "Coarse to fine tiled by the corners").
    0 (the presets): full size throughout.
    """
    steps: int = 1500
    lr: float = 0.05
    size: tuple[int, int, int] = (16, 128, 128)
    param: str = "pixel"
    init_sd: float = 0.01
    spectral_decay: float = 1.0
    spectral_time_weight: float = 1.0
    transform: Callable | None = dataclasses.field(default_factory=transforms_lib.Affine.paper)
    optimizer: optax.GradientTransformation | None = None
    chunk_size: int | None = None
    progress_every: int = 50
    one_channel: bool = True
    coarse_steps: int = 0
    coarse_factor: int = 2

    def __post_init__(self):
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        if len(self.size) != 3 or min(self.size) < 1:
            raise ValueError(f"size must be (T, H, W), positive; got {self.size}")
        if self.param not in param_lib.PARAMS:
            raise ValueError(f"param must be one of {', '.join(param_lib.PARAMS)}; "
                             f"got {self.param!r}")
        if self.chunk_size is not None and int(self.chunk_size) < 1:
            raise ValueError(f"chunk_size must be at least 1, or None (fit the free device "
                             f"memory); got {self.chunk_size}")
        if int(self.progress_every) < 1:
            raise ValueError(f"progress_every must be at least 1; got {self.progress_every}")
        if int(self.steps) < 0:
            raise ValueError(f"steps must be >= 0; got {self.steps}")
        if not 0 <= int(self.coarse_steps) <= int(self.steps):
            raise ValueError(f"coarse_steps must be between 0 and steps ({self.steps}); got "
                             f"{self.coarse_steps}")
        if int(self.coarse_factor) < 2:
            raise ValueError(f"coarse_factor must be an integer >= 2; got {self.coarse_factor}")
        if self.coarse_steps and any(n % self.coarse_factor for n in self.size[1:]):
            raise ValueError(f"coarse to fine needs the video's height and width divisible by "
                             f"coarse_factor ({self.coarse_factor}); got size {self.size}")

    @classmethod
    def preset(cls, name: str = "fast", **overrides) -> "Stage1Config":
        """The named preset with `overrides` applied (any field of this class).

        "paper": the reference code's settings (METHOD.md): 16x128x128 raw pixels, init
          N(0, 0.01^2), colour decorrelation + sigmoid, Adam lr 0.05, 1500 steps, and the
          reference's one-sided, corner-centred 3D jitter/scale transform.
        "fast": what lets the default CLI run finish stage 1 in minutes on a laptop CPU:
          spectral param (decay 1.5), Adam lr 0.1, 100 steps, 16x64x64, kvjax's centred
          symmetric transform `Affine()`; `FAST_NOTES` gives the measurements behind it.
        """
        return presets.select(cls, {"paper": PAPER, "fast": FAST}, name, overrides)

    def _param_kwargs(self) -> dict:
        kw = dict(sd=self.init_sd)
        if self.param == "spectral":
            kw.update(decay=self.spectral_decay, time_weight=self.spectral_time_weight)
        return kw

    def make_param(self) -> param_lib.Param:
        return param_lib.make(self.param, self.size, **self._param_kwargs())

    def phases(self) -> list["Stage1Config"]:
        """The run as phases without coarse steps of their own: [coarse, fine] with
        coarse_steps, else [self]. The coarse phase's size is (T, H/f, W/f)."""
        if not self.coarse_steps:
            return [self]
        t, h, w = self.size
        f = self.coarse_factor
        coarse = dataclasses.replace(self, size=(t, h // f, w // f), steps=self.coarse_steps,
                                     coarse_steps=0)
        return [coarse, dataclasses.replace(self, steps=self.steps - self.coarse_steps,
                                            coarse_steps=0)]

    def tile_params(self, params, align: str):
        """Params of a video of this config's size -> those of the video tiled coarse_factor x
        coarse_factor in H and W, its corners ("corner") or its centre ("centre") kept
        (kvjax.param.tile)."""
        return param_lib.tile(self.param, params, self.size, self.coarse_factor, align=align,
                              **self._param_kwargs())

    def make_optimizer(self) -> optax.GradientTransformation:
        return self.optimizer if self.optimizer is not None else optax.adam(self.lr)


PAPER = Stage1Config(steps=1500, lr=0.05, size=(16, 128, 128), param="pixel", init_sd=0.01,
                     transform=transforms_lib.Affine.paper())

FAST_NOTES = """Why the `fast` preset is what it is (measured 2026-11-25 on this project's 2-core
AMD EPYC CPU, shared with other jobs: load average 7-8, so absolute times are ~3-4x a quiet
machine's). Built-in pretrained I3D, layer Conv3d_2c_3x3 (an early layer, after 3 convs + ReLU),
kernels 0-3 vmapped, video 16x64x64 fed to the network at that size, centred transform
`Affine()`, Adam, 100 steps. Mean objective (no transform) at step 0 -> step 100:

    pixel     lr 0.05              0.50 -> 2.61      (the paper's param and lr)
    pixel     lr 0.1               0.50 -> 3.16
    spectral  lr 0.05, decay 1.0   0.50 -> 2.26
    spectral  lr 0.1,  decay 1.0   0.50 -> 2.76
    spectral  lr 0.1,  decay 1.5   0.51 -> 3.41      <- fast
    spectral  lr 0.2,  decay 1.5   0.51 -> 3.69      (more saturated, noisier frames)

Step time was the same for all (1.2-2.0 s per step for 4 kernels under that load): the network
dominates, the parameterisation is free. Decay 1.5 rather than Lucid's 1: in 3D the number of
Fourier modes at radius f grows as f^2, so 1/f amplitudes leave equal energy per unit frequency
and high frequencies dominate; f^-1.5 restores the 2D case's energy falloff (f^2 * f^-3 = 1/f),
and it measured best. All settings showed clear textures after 100 steps (contact sheets
inspected by eye). Per-step objective under the transform, averaged over the 4 kernels: the
paper's pixel lr 0.05 reaches 2.6 at step 95; spectral decay 1.5 lr 0.1 reaches it at step 30.

The same comparison on 8 kernels of Mixed_3b (paper transform; benchmarks/results/stage1.md):
after 25 / 100 steps, pixel lr 0.05: 1.92 / 4.02, pixel lr 0.1: 2.37 / 5.08, spectral decay 1.5
lr 0.1: 3.55 / 6.23.

Size 16x64x64 seen at that size by the network (kvjax.Config's `fast` sets the model input to
the video size; I3D is fully convolutional up to Mixed_5c) is 24.5x fewer voxels than the paper's
32x224x224 model input. This preset end to end, 8 kernels, quiet machine: Conv3d_2c_3x3 93 s
(0.88 s per step, 13 s compile), Conv3d_1a_7x7 48 s (0.43 s per step); about 4x that under the
load above. 64 px is still several receptive fields of early layers across; use --size for more.
Since then (2026-11-26, kvjax.jit and the one-channel readout): `kvjax visualize`'s default run
(Conv3d_1a_7x7, 8 kernels, both stages) is done in 30 s, stage 1's 100 steps in about 10 s.
"""

FAST = Stage1Config(steps=100, lr=0.1, size=(16, 64, 64), param="spectral", init_sd=0.01,
                    spectral_decay=1.5, transform=transforms_lib.Affine(), chunk_size=None,
                    progress_every=10)


# ----------------------------------------------------------------------------- pure core

class Stage1State(NamedTuple):
    """One kernel's optimisation state. params: the parameterisation's pytree; opt_state:
    the optimiser's; key: for the next transforms; finite: bool[] (False once a NaN/inf
    step was refused: the kernel is frozen)."""
    params: Any
    opt_state: Any
    key: jax.Array
    finite: jax.Array


def init(key: jax.Array, kernel, config: Stage1Config) -> Stage1State:
    """The initial state of `kernel`, from fold_in(key, kernel) only."""
    k_param, k_steps = jax.random.split(jax.random.fold_in(key, kernel))
    params = config.make_param().init(k_param)
    return Stage1State(params, config.make_optimizer().init(params), k_steps,
                       jnp.asarray(True))


def render(state_or_params, config: Stage1Config) -> jax.Array:
    """The video f32[T, H, W, 3] in [0, 1] of a state (or of bare params), no transform."""
    params = state_or_params.params if isinstance(state_or_params, Stage1State) \
        else state_or_params
    video = config.make_param().render(params)
    chex.assert_shape(video, (*config.size, 3))
    return video


def reads_one_channel(features: Features) -> bool:
    """Whether `features` also takes `features(video, channel=k)` -> f32[t,h,w,1], channel k
    alone: declared by an attribute `channel_readout = True` on the function (or on a
    jax.tree_util.Partial's func), as built-in models' features functions do."""
    fn = features.func if isinstance(features, jax.tree_util.Partial) else features
    return bool(getattr(fn, "channel_readout", False))


def activations(features: Features, video: jax.Array, kernel, config: Stage1Config,
                objective: objectives_lib.Objective) -> tuple[jax.Array, Any]:
    """(acts, index) to evaluate objective(acts, index) on: the layer f32[t,h,w,C] and the
    kernel, or, when the objective reads only the kernel's channel, `features` can compute
    it alone and config.one_channel, that channel f32[t,h,w,1] and index 0."""
    if config.one_channel and objective.one_channel and reads_one_channel(features):
        return features(video, channel=kernel), 0
    return features(video), kernel


def measure(params, features: Features, kernel, config: Stage1Config,
            objective: objectives_lib.Objective | None = None) -> jax.Array:
    """The objective of the rendered video, without any transform: f32[]."""
    objective = objective or objectives_lib.channel()
    acts, index = activations(features, render(params, config), kernel, config, objective)
    return objectives_lib.evaluate(objective, acts, index)


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def step(state: Stage1State, features: Features, kernel, config: Stage1Config,
         objective: objectives_lib.Objective | None = None) -> tuple[Stage1State, jax.Array]:
    """One optimiser step: (new state, objective value f32[] under this step's transform).

    A step that would make anything non-finite is refused and the kernel frozen (finite=False);
    the returned value is then NaN. Its gradient is traced inside `kvjax.ops.reverse_mode_only()`
    (the CPU max pools' hand-written gradient); a jitted `features` is traced apart there, so
    forward mode through it elsewhere is unaffected.
    """
    objective = objective or objectives_lib.channel()
    transform = config.transform or transforms_lib.identity
    key, k_tf = jax.random.split(state.key)

    def loss(params):
        video = transform(k_tf, render(params, config))
        acts, index = activations(features, video, kernel, config, objective)
        return -objectives_lib.evaluate(objective, acts, index)  # maximise

    with ops.reverse_mode_only():  # CPU max pools: the hand-written gradient (kvjax.ops)
        neg_value, grads = jax.value_and_grad(loss)(state.params)
    updates, opt_state = config.make_optimizer().update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ok = state.finite & jnp.isfinite(neg_value) & _all_finite(grads) & _all_finite(params)
    keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)
    new = Stage1State(keep(params, state.params), keep(opt_state, state.opt_state), key, ok)
    return new, jnp.where(ok, -neg_value, jnp.nan)


def run(state: Stage1State, features: Features, kernel, config: Stage1Config, n_steps: int,
        objective: objectives_lib.Objective | None = None, n_active=None, unroll: bool = False
        ) -> tuple[Stage1State, jax.Array]:
    """`n_steps` steps as one lax.scan: (state, values f32[n_steps]).

    n_active (optional, may be traced but must not be batched): only the first n_active steps
    run; the rest leave the state alone and report NaN (lets one compiled segment length
    serve a shorter last segment). unroll: the steps as n_steps calls of `step` in sequence,
    with no loop around them (what the CPU wants, see `_plan`); not with n_active. One step
    without n_active is `step` itself either way.
    """
    if unroll or (n_steps == 1 and n_active is None):
        if n_active is not None:
            raise ValueError("run: unroll=True runs every step; n_active must be None")
        values = [jnp.zeros((0,), jnp.float32)]  # n_steps = 0: no values, as from a scan
        for _ in range(n_steps):
            state, value = step(state, features, kernel, config, objective)
            values.append(value[None])
        return state, jnp.concatenate(values)

    def body(state, i):
        if n_active is None:
            return step(state, features, kernel, config, objective)
        return jax.lax.cond(i < n_active,
                            lambda s: step(s, features, kernel, config, objective),
                            lambda s: (s, jnp.float32(jnp.nan)), state)

    return jax.lax.scan(body, state, jnp.arange(n_steps))


# ----------------------------------------------------------------------------- compiled programs

class _Static:
    """The non-array part of a pytree: its treedef and non-array leaves (hashable)."""

    def __init__(self, treedef, leaves, is_array):
        self.treedef, self.leaves, self.is_array = treedef, tuple(leaves), tuple(is_array)
        try:
            self._hash = hash((treedef, self.leaves, self.is_array))
        except TypeError as e:
            raise TypeError(
                "stage 1 needs the non-array parts of `features` and `objective` to be "
                f"hashable (they are compiled in as constants): {e}. Pass arrays as pytree "
                "leaves, e.g. with jax.tree_util.Partial(fn, weights).") from None

    def __hash__(self):
        return self._hash

    def __eq__(self, other):
        return (isinstance(other, _Static) and self.treedef == other.treedef
                and self.is_array == other.is_array and self.leaves == other.leaves)


def _is_array(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


def partition(tree) -> tuple[list, _Static]:
    """Split a pytree into its array leaves (jit arguments) and a hashable static rest."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    is_array = [_is_array(x) for x in leaves]
    arrays = [x for x, a in zip(leaves, is_array) if a]
    static = [None if a else x for x, a in zip(leaves, is_array)]
    return arrays, _Static(treedef, static, is_array)


def combine(arrays, static: _Static):
    """Inverse of `partition`."""
    it = iter(arrays)
    leaves = [next(it) if a else x for x, a in zip(static.leaves, static.is_array)]
    return jax.tree_util.tree_unflatten(static.treedef, leaves)


def _program_config(config: Stage1Config) -> Stage1Config:
    """The config with the fields that do not change compiled code zeroed, so that e.g. a
    different step count or chunk size reuses the compiled programs (on CPU, a step count
    with the same steps per program, `_plan`)."""
    return dataclasses.replace(config, steps=0, chunk_size=1, progress_every=1)


# Each program vmaps over the chunk's kernels; with a mesh (several devices) the kernel axis
# is split over it by shard_map: every device runs the same vmapped code on its block.

@compiler.jit(static_argnames=("static", "config", "mesh"))
def _start(arrays, static, key, kernels, config, mesh=None):
    def local(arrays, key, kernels):
        features, objective = combine(arrays, static)
        states = jax.vmap(init, in_axes=(None, 0, None))(key, kernels, config)
        values = jax.vmap(measure, in_axes=(0, None, 0, None, None))(
            states.params, features, kernels, config, objective)
        return states, values
    specs = (devices_lib.REPLICATED, devices_lib.REPLICATED, devices_lib.KERNEL_AXIS)
    return devices_lib.over_kernels(local, mesh, specs)(arrays, key, kernels)


@compiler.jit(static_argnames=("static", "config", "n_steps", "unroll", "mesh"))
def _segment(arrays, static, states, kernels, n_active, config, n_steps, unroll=False, mesh=None):
    def local(arrays, states, kernels, n_active):
        features, objective = combine(arrays, static)
        go = lambda s, k: run(s, features, k, config, n_steps, objective, n_active, unroll)
        return jax.vmap(go)(states, kernels)
    specs = (devices_lib.REPLICATED, devices_lib.KERNEL_AXIS, devices_lib.KERNEL_AXIS,
             devices_lib.REPLICATED)
    return devices_lib.over_kernels(local, mesh, specs)(arrays, states, kernels, n_active)


@compiler.jit(static_argnames=("static", "config", "mesh"))
def _finish(arrays, static, states, kernels, config, mesh=None):
    def local(arrays, states, kernels):
        features, objective = combine(arrays, static)
        videos = jax.vmap(render, in_axes=(0, None))(states.params, config)
        values = jax.vmap(measure, in_axes=(0, None, 0, None, None))(
            states.params, features, kernels, config, objective)
        return videos, values
    specs = (devices_lib.REPLICATED, devices_lib.KERNEL_AXIS, devices_lib.KERNEL_AXIS)
    return devices_lib.over_kernels(local, mesh, specs)(arrays, states, kernels)


def tile_align(objective: objectives_lib.Objective) -> str:
    """How coarse to fine tiles the coarse phase's videos for `objective` (param.tile's align):
    "centre" when it reads the layer's centre (a centre neuron), else "corner".

    Corners, because the coarse video adapts to the network's zero padding at its borders:
    tiled with its corners at the big video's corners, those borders stay borders. Measured on
    I3D Mixed_3b, kernels 0-3, 400 coarse steps on 16x56x56 (7.92 there), tiled to 16x112x112:
    7.77 with the corners kept, 7.10 with the centre kept (a roll of 28 px), 6.5-7.5 at the
    other rolls; on Mixed_4b kernels 0-3 (300 coarse steps, 12.31 there) 10.96 against 9.14;
    on Mixed_3b kernels 8-11 7.33 against 7.06 (a 4 px roll: 7.65; no roll but 0 is best on
    all three); benchmarks/results/stage1.md, "Coarse to fine tiled by the corners"."""
    return "centre" if objective.reads_centre else "corner"


@compiler.jit(static_argnames=("config", "fine", "align", "mesh"))
def _tile(states, config, fine, align, mesh=None):
    """Coarse phase states (`config`) -> fine phase states (`fine`): each video's params tiled
    (Stage1Config.tile_params, `align`), a fresh optimiser state; keys and `finite` carried
    over."""
    def local(states):
        params = jax.vmap(lambda p: config.tile_params(p, align))(states.params)
        opt_state = jax.vmap(fine.make_optimizer().init)(params)
        return Stage1State(params, opt_state, states.key, states.finite)
    return devices_lib.over_kernels(local, mesh, (devices_lib.KERNEL_AXIS,))(states)


def compiled_programs() -> int:
    """How many programs stage 1 has compiled so far (for tests and benchmarks): entries of
    its jit caches. On several devices one compiled program may hold two entries (JAX's
    dispatch cache); count XLA compilations with jax.monitoring there (tests/test_sharding.py)."""
    return sum(f._cache_size() for f in (_start, _segment, _finish, _tile))


# ----------------------------------------------------------------------------- driver

class Stage1Result(NamedTuple):
    """Stage 1 for K kernels, in the order requested (numpy arrays in host memory).

    videos: f32[K, T, H, W, 3] in [0, 1], rendered without transform.
    trace: f32[K, steps], the objective at each step (under that step's transform; NaN after
      a kernel stopped being finite; in a coarse phase, of the coarse video as the network saw
      it). activation: f32[K], the objective of `videos` (no transform); activation_start:
      f32[K], the same at initialisation (with coarse_steps, of the tiled initial video at
      full size, so that the two compare). finite: bool[K],
      False where a NaN/inf occurred (that kernel's last finite state is returned).
    """
    videos: np.ndarray
    trace: np.ndarray
    activation: np.ndarray
    activation_start: np.ndarray
    finite: np.ndarray


CPU_UNROLL = 4  # most optimisation steps per CPU program (`_plan`)


def _plan(steps: int, every: int, platform: str) -> tuple[int, int, bool]:
    """(segments, steps per segment, unrolled) for a run of `steps` on `platform`.

    On CPU a segment is up to CPU_UNROLL steps unrolled in one program (`run(unroll=True)`,
    no lax.scan), the largest count <= CPU_UNROLL that divides `steps`, driven from Python:
    - XLA's CPU backend ran the same step 2.2x slower inside a scan (I3D Conv3d_1a_7x7, paper
      preset, 2-core AMD EPYC: 2.34-2.38 s per step in a scan of length 1 or 2, rolled or a
      length-1 unrolled one, against 1.02-1.08 s for the bare step or an unrolled scan of
      2-3 steps); with kvjax.compiler's options, 1.85 s per step in a scan of 3 against
      0.55 s bare.
    - Each execution of a CPU program allocates its temporaries afresh, and the kernel's
      page faults on them cost ~10% of a step (I3D Mixed_3b, paper preset: 112k minor faults,
      0.22 s of system time per 1.09 s step); n unrolled steps share one allocation. Per
      kernel-step, 1 / 2 / 4 steps per program: Mixed_3b K=1 1.09 / 1.02 / 0.97 s (compile
      4.8 / 7.0 / 10.0 s); K=4 1.13 / - / 0.99 s; Mixed_4b K=4 1.51 / - / 1.39 s (compile 12
      / 32 s). More steps per program compile longer for less.
    Elsewhere: lax.scan segments of `every` steps (`_segments`)."""
    if platform == "cpu":
        if steps == 0:
            return 0, 1, True
        n = max(u for u in range(1, min(CPU_UNROLL, steps) + 1) if steps % u == 0)
        return steps // n, n, True
    return (*_segments(steps, every), False)


def _segments(steps: int, every: int) -> tuple[int, int]:
    """(number of segments, steps per segment) covering `steps` with the fewest padded steps."""
    if steps == 0:
        return 0, 1
    n = math.ceil(steps / every)
    return n, math.ceil(steps / n)


def _check_kernels(kernels, features: Features, config: Stage1Config,
                   objective: objectives_lib.Objective) -> np.ndarray:
    kernels = np.asarray(list(kernels))
    if kernels.ndim != 1 or kernels.size == 0 or not np.issubdtype(kernels.dtype, np.integer):
        raise ValueError(f"kernels must be a non-empty sequence of channel indices; "
                         f"got {kernels.tolist()!r}")
    out = jax.eval_shape(features, jax.ShapeDtypeStruct((*config.size, 3), jnp.float32))
    if len(out.shape) != 4:
        raise ValueError(f"features must map f32[T,H,W,3] to f32[t,h,w,C]; for a "
                         f"{(*config.size, 3)} video it gave {out.shape}")
    channels = out.shape[-1]
    n = objective.n_indices(channels)
    bad = kernels[(kernels < 0) | (kernels >= n)]
    if bad.size:
        what = (f"this layer has {channels} kernels" if n == channels else
                f"the objective reads {n} indices (a direction vector's rows)")
        raise ValueError(f"kernel indices {bad.tolist()} are out of range: {what} (0-{n - 1})")
    return kernels.astype(np.int32)


def coarse_features(features: Features, factor: int) -> Features:
    """`features` for stage 1's coarse phase, whose videos are `factor` times smaller in H and W.

    A features function that resizes every video to a fixed model input declares how to see a
    smaller one with a method `coarse(factor)` returning the same function with that input
    divided by `factor` in H and W (on itself, or on a jax.tree_util.Partial's func), as
    built-in models' features do: the network then sees the small video at the scale it will
    see the large one, at ~1/factor^2 of the cost. Any other function gets the small video as
    it is (right for a fully convolutional function that takes the video at its own size;
    `_check_coarse` refuses one whose output does not shrink with its input)."""
    fn = features.func if isinstance(features, jax.tree_util.Partial) else features
    if not hasattr(fn, "coarse"):
        return features
    if isinstance(features, jax.tree_util.Partial):
        return jax.tree_util.Partial(fn.coarse(factor), *features.args, **features.keywords)
    return fn.coarse(factor)


def _check_coarse(features: Features, coarse: Features, config: Stage1Config,
                  objective: objectives_lib.Objective) -> None:
    """Refuse a coarse to fine run whose coarse phase would optimise something else."""
    if objective.fixed_position:
        raise ValueError("coarse to fine (coarse_steps > 0) cannot map a neuron position given "
                         "in layer coordinates onto the coarse phase's smaller layer; use "
                         "neuron() at the centre, or coarse_steps=0")
    small = config.phases()[0].size
    try:
        out = jax.eval_shape(coarse, jax.ShapeDtypeStruct((*small, 3), jnp.float32))
    except Exception as e:  # noqa: BLE001  the model's own message says what broke
        raise ValueError(f"coarse to fine: the layer cannot be computed on the coarse phase's "
                         f"{small} video ({type(e).__name__}: {e}); use a smaller "
                         f"coarse_factor, a larger size, or coarse_steps=0") from None
    if coarse is not features:  # it declared how to see the small video (`coarse`)
        return
    full = jax.eval_shape(features, jax.ShapeDtypeStruct((*config.size, 3), jnp.float32))
    if out.shape == full.shape and max(out.shape[1:3]) > 1:
        raise ValueError(
            f"coarse to fine: `features` gives the same {full.shape} output for the coarse "
            f"{small} video as for the full {config.size} one, so it resizes videos to a fixed "
            "input, and the coarse phase's pattern would change scale when tiled. Give the "
            "function a `coarse(factor)` method (see stage1.coarse_features), or use "
            "coarse_steps=0")


_MEMORY: dict = {}


def program_memory(features: Features, config: Stage1Config, chunk: int,
                   objective: objectives_lib.Objective | None = None,
                   devices: Sequence[jax.Device] | None = None) -> int | None:
    """Bytes per device of stage 1's largest program (a segment of optimisation steps) for
    `chunk` kernels split over `devices`, from XLA's memory analysis (kvjax.devices.
    program_bytes); None if the backend gives none. The program is compiled exactly as
    `optimize` will call it, so a run with that chunk reuses the compilation. Cached."""
    objective = objective or objectives_lib.channel()
    config = config.phases()[-1]  # the full-size phase: the largest programs
    devs = devices_lib.local_devices(devices)
    arrays, static = partition((features, objective))
    prog = _program_config(config)
    _, seg_len, unrolled = _plan(int(config.steps), int(config.progress_every),
                                 devs[0].platform)
    cache_key = (static, tuple((a.shape, str(a.dtype)) for a in arrays), prog, seg_len, chunk,
                 devs)
    if cache_key not in _MEMORY:
        mesh = devices_lib.kernel_mesh(devs)
        weights = devices_lib.abstract(arrays, devs, devices_lib.REPLICATED)
        ks = devices_lib.abstract(jax.ShapeDtypeStruct((chunk,), jnp.int32), devs,
                                  devices_lib.KERNEL_AXIS)
        key = jax.eval_shape(lambda: jax.random.key(0))
        states, _ = jax.eval_shape(functools.partial(_start, static=static, config=prog),
                                   weights, key=key, kernels=ks)
        states = devices_lib.abstract(states, devs, devices_lib.KERNEL_AXIS)
        compiled = _segment.lower(weights, static, states, ks, None if unrolled else jnp.int32(
            seg_len), prog, seg_len, unrolled, mesh).compile()
        _MEMORY[cache_key] = devices_lib.program_bytes(compiled)
    return _MEMORY[cache_key]


def auto_chunk_size(features: Features, n_kernels: int, config: Stage1Config,
                    objective: objectives_lib.Objective | None = None,
                    devices: Sequence[jax.Device] | None = None,
                    free_bytes: int | None = None) -> int:
    """Kernels per chunk for n_kernels that fit the devices' free memory (a multiple of the
    device count), at most `kvjax.devices.max_per_device` per device (4 on CPU, where larger
    programs are slower per kernel): kvjax.devices.auto_chunk over `program_memory`, the
    weights (array leaves of features and objective) being the fixed part. free_bytes: free
    memory per device, measured when None."""
    devs = devices_lib.local_devices(devices)
    arrays, _ = partition((features, objective or objectives_lib.channel()))
    fixed = sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in arrays)
    return devices_lib.auto_chunk(
        lambda chunk: program_memory(features, config, chunk, objective, devs), fixed,
        n_kernels, devs, free_bytes, max_per_device=devices_lib.max_per_device(devs))


def optimize(features: Features, kernels: Sequence[int], config: Stage1Config | None = None,
             key: jax.Array | None = None, objective: objectives_lib.Objective | None = None,
             progress: Progress | None = None,
             devices: Sequence[jax.Device] | None = None) -> Stage1Result:
    """Maximise `objective` (default: channel) for each kernel in `kernels`; see the module doc.

    features: pure f32[T,H,W,3] in [0,1] -> f32[t,h,w,C] (one video, model preprocessing
      included). kernels: channel indices (K of them, any order, repeats allowed).
    key: a PRNG key (default jax.random.key(0)). progress(steps_done, steps_total, chunk_index,
      n_chunks) is called after every scan segment. devices: where to run (default: all of
      this process's devices, jax.local_devices()); each chunk's kernels are split over them.
    Returns numpy arrays (host memory), kernels in the order requested.
    """
    config = config or Stage1Config.preset("fast")
    key = jax.random.key(0) if key is None else key
    objective = objective or objectives_lib.channel()
    kernels = _check_kernels(kernels, features, config, objective)
    phases, align = config.phases(), tile_align(objective)
    phase_features = [features] * len(phases)
    if len(phases) > 1:
        phase_features[0] = coarse_features(features, config.coarse_factor)
        _check_coarse(features, phase_features[0], config, objective)
    devs = devices_lib.local_devices(devices)
    mesh = devices_lib.kernel_mesh(devs)
    chunk_size = config.chunk_size
    if chunk_size is None:
        chunk_size = auto_chunk_size(features, len(kernels), config, objective, devs)
    parts = []  # per phase: (weights on the devices, static part, program config, plan)
    placed = {}  # id of a weight array -> its copy on the devices (phases share the weights)
    for f, cfg in zip(phase_features, phases):
        arrays, static = partition((f, objective))
        for a in arrays:
            if id(a) not in placed:
                placed[id(a)] = devices_lib.place(a, devs, devices_lib.REPLICATED)
        parts.append(([placed[id(a)] for a in arrays], static, _program_config(cfg),
                      int(cfg.steps),
                      _plan(int(cfg.steps), int(config.progress_every), devs[0].platform)))
    _, report_every = _segments(int(config.steps), int(config.progress_every))
    n_chunks, chunk = devices_lib.chunking(len(kernels), int(chunk_size), len(devs))
    padded = np.resize(kernels, n_chunks * chunk)  # pads by repeating from the start

    outs = []
    for c in range(n_chunks):
        ks = devices_lib.place(padded[c * chunk:(c + 1) * chunk], devs,
                               devices_lib.KERNEL_AXIS)
        arrays, static, prog, _, _ = parts[0]
        states, start = _start(arrays, static, key, ks, prog, mesh)
        if len(parts) > 1:  # the start as the full-size network sees the tiled initial video
            fine_arrays, fine_static, fine_prog = parts[-1][:3]
            _, start = _finish(fine_arrays, fine_static,
                               _tile(states, prog, fine_prog, align, mesh), ks, fine_prog, mesh)
        traces, done = [], 0
        for i, (arrays, static, prog, steps, plan) in enumerate(parts):
            if i:
                states = _tile(states, parts[i - 1][2], prog, align, mesh)
            n_segments, seg_len, unrolled = plan
            for s in range(n_segments):
                n_active = min(seg_len, steps - s * seg_len)
                states, values = _segment(arrays, static, states, ks,
                                          None if unrolled else jnp.int32(n_active), prog,
                                          seg_len, unrolled, mesh)
                traces.append(values[:, :n_active])
                done += n_active
                crossed = done // report_every > (done - n_active) // report_every
                if progress is not None and (not unrolled or crossed or done == config.steps):
                    jax.block_until_ready(values)
                    progress(done, config.steps, c, n_chunks)
        arrays, static, prog = parts[-1][:3]
        videos, final = _finish(arrays, static, states, ks, prog, mesh)
        trace = jnp.concatenate(traces, 1) if traces else jnp.zeros((chunk, 0), jnp.float32)
        outs.append(devices_lib.to_host((videos, trace, final, start, states.finite)))

    k = len(kernels)
    result = Stage1Result(*(np.concatenate(parts)[:k] for parts in zip(*outs)))
    chex.assert_shape(result.videos, (k, *config.size, 3))
    chex.assert_shape(result.trace, (k, config.steps))
    chex.assert_shape([result.activation, result.activation_start, result.finite], (k,))
    return result
