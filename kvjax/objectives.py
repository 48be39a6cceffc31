"""Objectives: what stage 1 maximises, as a function of one layer's activations.

An objective is called as `objective(acts, kernel) -> f32[]` with acts f32[t, h, w, C] (one
video's activations, no batch axis) and `kernel` the kernel (channel) index, possibly traced,
so one objective vmaps over many kernels. Objectives are always *maximised*: stage 1 minimises
the negative internally and reports the objective itself, so larger is always better.

They compose like Lucid's: `0.5 * channel() + neuron()` is an objective, evaluated as the same
combination of the parts. Objectives are pytrees: a direction vector and a `Scaled`
coefficient are leaves, positions are static structure. Stage 1 (`stage1.partition`) passes
the array leaves to its compiled program as arguments and compiles Python-number leaves (a
coefficient given as 0.5) in as constants; under a user's own `jax.jit` they are traced.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import chex
import jax
import jax.numpy as jnp


def _pytree(cls, data=(), meta=()):
    return jax.tree_util.register_dataclass(dataclasses.dataclass(frozen=True, eq=False)(cls),
                                            data_fields=list(data), meta_fields=list(meta))


class Objective:
    """Base class: callable (acts f32[t,h,w,C], kernel int) -> f32[], maximised.

    `one_channel`: True when the objective reads nothing but acts[..., kernel]; it then gives
    the same value on that channel alone (acts f32[t,h,w,1], kernel 0), which lets stage 1
    compute only that channel of the layer. `fixed_position`: True when it reads a position
    given in layer coordinates (a neuron not at the centre), which stage 1's coarse phase
    (Stage1Config.coarse_steps) cannot map onto its smaller layer output. `reads_centre`: True
    when it reads the layer's centre position (a neuron at its default position); the coarse
    phase's video is then tiled with its centre kept at the centre (`param.tile`'s "centre"),
    else with its corners at the corners.
    """
    one_channel = False
    fixed_position = False  # reads a position given in layer coordinates (see Neuron)
    reads_centre = False  # reads the layer's centre position (see Neuron)

    def __call__(self, acts: jax.Array, kernel) -> jax.Array:
        raise NotImplementedError

    def n_indices(self, channels: int) -> int:
        """How many kernel indices (0 .. n-1) this objective reads on a layer of `channels`
        channels: the channels, unless the index picks something else (a direction's row)."""
        return channels

    def __add__(self, other):
        if isinstance(other, (int, float)) and other == 0:
            return self  # lets sum() start from 0
        if not isinstance(other, Objective):
            return NotImplemented
        return Sum((self, other))

    __radd__ = __add__

    def __mul__(self, coef):
        if isinstance(coef, Objective):
            return NotImplemented
        return Scaled(coef, self)

    __rmul__ = __mul__

    def __neg__(self):
        return Scaled(-1.0, self)

    def __sub__(self, other):
        return self + (-other)

    def __truediv__(self, coef):
        return Scaled(1.0 / coef, self)


def _channel_of(acts: jax.Array, kernel) -> jax.Array:
    """acts[..., kernel]: f32[t,h,w]. A concrete index out of range is an error; a traced one
    is clamped (stage1.optimize checks the kernels it is given before tracing)."""
    chex.assert_rank(acts, 4)
    if not isinstance(kernel, jax.core.Tracer) and not 0 <= int(kernel) < acts.shape[-1]:
        raise ValueError(f"kernel index {int(kernel)} is out of range: the layer has "
                         f"{acts.shape[-1]} channels (0-{acts.shape[-1] - 1})")
    return jax.lax.dynamic_index_in_dim(acts, jnp.asarray(kernel, jnp.int32), axis=-1,
                                        keepdims=False)


class Channel(Objective):
    """Mean of the kernel's channel over every position (t, h, w) of the layer: the paper's."""
    one_channel = True

    def __call__(self, acts, kernel):
        return jnp.mean(_channel_of(acts, kernel))


Channel = _pytree(Channel)


class Neuron(Objective):
    """The kernel's activation at one position (t, h, w) of the layer's output.

    position: (t, h, w) indices, or None for the centre ((n - 1) // 2 on each axis).
    """
    position: tuple[int, int, int] | None = None
    one_channel = True

    @property
    def fixed_position(self):
        return self.position is not None

    @property
    def reads_centre(self):
        return self.position is None

    def __call__(self, acts, kernel):
        x = _channel_of(acts, kernel)
        pos = self.position
        if pos is None:
            pos = tuple((n - 1) // 2 for n in x.shape)
        if len(pos) != 3 or not all(-n <= p < n for p, n in zip(pos, x.shape)):
            raise ValueError(f"neuron position must be (t, h, w) inside the layer's output "
                             f"{x.shape}; got {pos}")
        return x[tuple(pos)]


Neuron = _pytree(Neuron, meta=("position",))


class Direction(Objective):
    """Mean over positions of <acts[t,h,w,:], v>, a direction in channel space.

    vector: f32[C] (the same direction for every kernel; the kernel index is ignored) or
    f32[N, C] (row `kernel` for kernel index `kernel`, to vmap over N directions).
    Not normalised: scale `vector` to taste (Lucid's cosine-style variants are left out).
    """
    vector: jax.Array

    def n_indices(self, channels):
        return self.vector.shape[0] if self.vector.ndim == 2 else channels

    def __call__(self, acts, kernel):
        chex.assert_rank(acts, 4)
        v = jnp.asarray(self.vector, acts.dtype)
        if v.ndim == 2:
            if not isinstance(kernel, jax.core.Tracer) and not 0 <= int(kernel) < v.shape[0]:
                raise ValueError(f"kernel index {int(kernel)} is out of range: the direction "
                                 f"has {v.shape[0]} rows (0-{v.shape[0] - 1})")
            v = jax.lax.dynamic_index_in_dim(v, jnp.asarray(kernel, jnp.int32), 0, False)
        if v.shape != acts.shape[-1:]:
            raise ValueError(f"direction vector must have one entry per channel "
                             f"({acts.shape[-1]}); got shape {self.vector.shape}")
        return jnp.mean(acts @ v)


Direction = _pytree(Direction, data=("vector",))


class Sum(Objective):
    """The sum of several objectives."""
    terms: tuple

    @property
    def one_channel(self):
        return all(t.one_channel for t in self.terms)

    @property
    def fixed_position(self):
        return any(t.fixed_position for t in self.terms)

    @property
    def reads_centre(self):
        return any(t.reads_centre for t in self.terms)

    def n_indices(self, channels):
        return min(t.n_indices(channels) for t in self.terms)

    def __call__(self, acts, kernel):
        return sum((t(acts, kernel) for t in self.terms[1:]), self.terms[0](acts, kernel))


Sum = _pytree(Sum, data=("terms",))


class Scaled(Objective):
    """coef * objective (coef a leaf: a Python number or an array)."""
    coef: float
    objective: Objective

    @property
    def one_channel(self):
        return self.objective.one_channel

    @property
    def fixed_position(self):
        return self.objective.fixed_position

    @property
    def reads_centre(self):
        return self.objective.reads_centre

    def n_indices(self, channels):
        return self.objective.n_indices(channels)

    def __call__(self, acts, kernel):
        return self.coef * self.objective(acts, kernel)


Scaled = _pytree(Scaled, data=("coef", "objective"))


def channel() -> Objective:
    """The paper's objective: mean activation of the kernel's channel over all positions."""
    return Channel()


def neuron(position: Sequence[int] | None = None) -> Objective:
    """The kernel's activation at `position` (t, h, w) of the layer output; None: centre."""
    return Neuron(None if position is None else tuple(int(p) for p in position))


def direction(vector) -> Objective:
    """Mean over positions of the activations' dot product with `vector` (f32[C] or f32[N,C])."""
    return Direction(jnp.asarray(vector, jnp.float32))


def evaluate(objective: Objective, acts: jax.Array, kernel) -> jax.Array:
    """objective(acts, kernel) as a float32 scalar, checking the shapes at the boundary."""
    chex.assert_rank(acts, 4)
    value = jnp.asarray(objective(acts, kernel), jnp.float32)
    chex.assert_shape(value, ())
    return value


__all__ = ["Objective", "Channel", "Neuron", "Direction", "Sum", "Scaled",
           "channel", "neuron", "direction", "evaluate"]
