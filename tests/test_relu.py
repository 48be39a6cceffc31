"""kvjax.models.relu: exact forward, exact or redirected gradient, and dead I3D kernels waking up."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kvjax import stage1
from kvjax.models.relu import relu, relu_gradient


def _grad(mode, x, g):
    """Vector-Jacobian product of relu at x with cotangent g (dLoss/dy) under `mode`."""
    with relu_gradient(mode):
        _, vjp = jax.vjp(relu, x)
    return vjp(g)[0]


def test_forward_is_relu_in_both_modes():
    x = jax.random.normal(jax.random.key(0), (5, 7))
    for mode in ("exact", "redirect"):
        with relu_gradient(mode):
            np.testing.assert_array_equal(relu(x), np.maximum(np.asarray(x), 0))


def test_live_tensor_gets_the_exact_gradient():
    x = jnp.array([-2.0, -0.5, 0.5, 3.0])
    g = jnp.array([-1.0, 1.0, -1.0, 2.0])
    want = np.array([0.0, 0.0, -1.0, 2.0])  # g where x > 0
    np.testing.assert_array_equal(_grad("exact", x, g), want)
    np.testing.assert_array_equal(_grad("redirect", x, g), want)


def test_dead_tensor_passes_only_the_gradient_that_raises_it():
    x = jnp.array([-2.0, -0.5, -1.0, -3.0])      # every input negative: output 0, no gradient
    g = jnp.array([-1.0, 1.0, -0.25, 2.0])       # descent moves x by -g: g < 0 raises x
    np.testing.assert_array_equal(_grad("exact", x, g), np.zeros(4))
    np.testing.assert_array_equal(_grad("redirect", x, g), [-1.0, 0.0, -0.25, 0.0])


def test_redirect_is_decided_per_example_under_vmap():
    x = jnp.array([[-1.0, -2.0], [-1.0, 2.0]])   # example 0 dead, example 1 live
    g = jnp.array([[-1.0, -1.0], [-1.0, -1.0]])
    with relu_gradient("redirect"):
        out = jax.vmap(lambda xi, gi: jax.vjp(relu, xi)[1](gi)[0])(x, g)
    np.testing.assert_array_equal(out, [[-1.0, -1.0], [0.0, -1.0]])


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="exact"):
        with relu_gradient("leaky"):
            pass


def test_dead_i3d_kernels_wake_up_with_redirected_gradient(i3d):
    """On a grey video some Conv3d_1a_7x7 kernels output 0 everywhere: exact gradient 0, so
    stage 1 could never move them. The redirected gradient is non-zero, and a few stage-1 steps
    (features built with the default relu_grad="redirect") give them a positive activation."""
    size = (8, 32, 32)
    grey = jnp.full(size + (3,), 0.5)
    layer = "Conv3d_1a_7x7"
    exact = i3d.features(layer, input_size=size, relu_grad="exact")
    act = np.asarray(exact(grey)).max(axis=(0, 1, 2))
    dead = [int(k) for k in np.flatnonzero(act == 0)[:2]]
    assert dead, "expected some Conv3d_1a_7x7 kernels to be dead on a grey video"
    redirect = i3d.features(layer, input_size=size)
    for k in dead:
        loss = lambda f, v: -f(v)[..., k].mean()
        assert float(jnp.abs(jax.grad(lambda v: loss(exact, v))(grey)).max()) == 0.0
        assert float(jnp.abs(jax.grad(lambda v: loss(redirect, v))(grey)).max()) > 0.0
    cfg = stage1.Stage1Config.preset("fast", steps=15, size=size, chunk_size=len(dead))
    res = stage1.optimize(redirect, dead, cfg, jax.random.key(0))
    assert np.all(np.asarray(res.activation) > 0), res.activation
