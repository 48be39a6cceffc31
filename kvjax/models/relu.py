"""The ReLU every built-in model uses, with an optional *redirected* gradient for dead kernels.

Activation maximisation starts from a near-grey video. A kernel whose ReLU is negative at
every position of that video outputs 0 everywhere, so its objective has zero gradient and
plain gradient ascent never moves it: the "optimal video" stays grey (seen on I3D's
Conv3d_1a_7x7 kernel 3 at the `fast` preset). Lucid's answer, reproduced here, is the
redirected ReLU gradient:

- forward: exactly max(x, 0);
- backward, with cotangent g = dLoss/dy of a loss being *minimised* (as kvjax.stage1 does,
  loss = -objective):
  - the true gradient g * (x > 0), wherever any of it is non-zero (per example: under vmap,
    per kernel), so a live ReLU gets its exact gradient;
  - otherwise (the whole tensor got no gradient through) g, except where x < 0 and g > 0,
    i.e. where descent would push a negative input further down. A dead kernel thus gets the
    gradient it would have if its ReLU were the identity, only in the direction that wakes
    it up.

The mode is chosen at trace time with `relu_gradient("redirect" | "exact")` (default
"exact"); `VideoModel.features` traces the network under the mode it was asked for.
"""
from __future__ import annotations

import contextlib
import contextvars

import jax
import jax.numpy as jnp

MODES = ("exact", "redirect")
_MODE = contextvars.ContextVar("kvjax_relu_gradient", default="exact")


@contextlib.contextmanager
def relu_gradient(mode: str):
    """Within this block, `relu` traces with the given gradient mode ("exact"/"redirect")."""
    if mode not in MODES:
        raise ValueError(f"relu gradient mode must be one of {MODES}; got {mode!r}")
    token = _MODE.set(mode)
    try:
        yield
    finally:
        _MODE.reset(token)


def relu(x: jax.Array) -> jax.Array:
    """max(x, 0); its gradient follows the current `relu_gradient` mode (module docstring)."""
    return _redirected_relu(x) if _MODE.get() == "redirect" else jax.nn.relu(x)


@jax.custom_vjp
def _redirected_relu(x: jax.Array) -> jax.Array:
    return jax.nn.relu(x)


def _fwd(x):
    return jax.nn.relu(x), x


def _bwd(x, g):
    exact = jnp.where(x > 0, g, 0.0)
    redirected = jnp.where((x < 0) & (g > 0), 0.0, g)
    return (jnp.where(jnp.any(exact != 0), exact, redirected),)


_redirected_relu.defvjp(_fwd, _bwd)
