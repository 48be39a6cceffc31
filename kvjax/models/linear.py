"""A fully connected layer for classifier heads and attention projections of converted models."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class Linear(nnx.Module):
    """y = x @ kernel (+ bias) over the last axis; kernel f32[in, out] (PyTorch's weight
    transposed). x may have any leading axes."""

    def __init__(self, cin: int, cout: int, *, bias: bool = True, rngs: nnx.Rngs):
        init = jax.nn.initializers.lecun_normal()
        self.kernel = nnx.Param(init(rngs.params(), (cin, cout), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32)) if bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x @ self.kernel[...]
        if self.bias is None:
            return y
        return y + self.bias[...].reshape((1,) * (y.ndim - 1) + (-1,))
