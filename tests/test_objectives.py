"""kvjax.objectives: the building blocks read the right numbers and compose linearly."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kvjax import objectives as obj

ACTS = jax.random.normal(jax.random.key(0), (3, 5, 4, 6))


def test_building_blocks_read_the_right_numbers():
    k = 4
    assert float(obj.channel()(ACTS, k)) == pytest.approx(float(ACTS[..., k].mean()), rel=1e-6)
    assert float(obj.neuron()(ACTS, k)) == float(ACTS[1, 2, 1, k])   # centre: (n - 1) // 2
    assert float(obj.neuron((2, 0, 3))(ACTS, k)) == float(ACTS[2, 0, 3, k])
    v = jax.random.normal(jax.random.key(1), (6,))
    assert float(obj.direction(v)(ACTS, k)) == pytest.approx(float((ACTS @ v).mean()), rel=1e-5)
    rows = jnp.eye(6)
    assert float(obj.direction(rows)(ACTS, k)) == pytest.approx(float(ACTS[..., k].mean()),
                                                                rel=1e-6)


def test_objectives_compose_linearly():
    f, g, h = obj.channel(), obj.neuron(), obj.direction(jnp.arange(6.0))
    for k in range(6):
        combo = 2.5 * f + g - h / 4
        want = 2.5 * f(ACTS, k) + g(ACTS, k) - h(ACTS, k) / 4
        np.testing.assert_allclose(combo(ACTS, k), want, rtol=1e-6)
        np.testing.assert_allclose(sum([f, g, h])(ACTS, k), f(ACTS, k) + g(ACTS, k) + h(ACTS, k),
                                   rtol=1e-6)
        np.testing.assert_allclose((-f)(ACTS, k), -f(ACTS, k))


def test_objectives_vmap_and_jit_over_a_traced_kernel_index():
    f = obj.channel() + 0.5 * obj.direction(jnp.ones((6, 6)))
    kernels = jnp.arange(6)
    batched = jax.jit(jax.vmap(f, in_axes=(None, 0)))(ACTS, kernels)
    np.testing.assert_allclose(batched, [f(ACTS, k) for k in range(6)], rtol=1e-5, atol=1e-7)


def test_objectives_are_pytrees_whose_leaves_are_coefficients_and_vectors():
    v = jnp.arange(6.0)
    leaves = jax.tree_util.tree_leaves(3 * obj.neuron((0, 1, 2)) + obj.direction(v))
    assert len(leaves) == 2 and leaves[0] == 3 and leaves[1] is v   # no position among them


def test_bad_inputs_say_what_is_expected():
    with pytest.raises(ValueError, match="inside the layer's output"):
        obj.neuron((9, 0, 0))(ACTS, 0)
    with pytest.raises(ValueError, match="one entry per channel"):
        obj.direction(jnp.ones(5))(ACTS, 0)
    with pytest.raises(TypeError):
        obj.channel() * obj.channel()
    with pytest.raises(ValueError, match="3 rows"):  # not clamped to the last row
        obj.direction(jnp.ones((3, 6)))(ACTS, 3)
    for f in (obj.channel(), obj.neuron(), 2 * obj.channel() + obj.neuron()):
        for k in (6, 9, -1):   # not clamped to the last channel (6 channels: 0-5)
            with pytest.raises(ValueError, match=r"6 channels \(0-5\)"):
                f(ACTS, k)


def test_kernel_indices_an_objective_reads():
    """A direction with one row per kernel reads its rows' indices, not the layer's channels;
    a combination reads only the indices valid for every part (stage 1 checks against it)."""
    rows = obj.direction(jnp.ones((9, 6)))
    assert obj.channel().n_indices(6) == 6 and obj.direction(jnp.ones(6)).n_indices(6) == 6
    assert rows.n_indices(6) == 9 and (2 * rows).n_indices(6) == 9
    assert (obj.channel() + rows).n_indices(6) == 6
    assert (obj.direction(jnp.ones((3, 6))) + rows).n_indices(6) == 3


def test_one_channel_objectives_give_the_same_value_on_that_channel_alone():
    # What lets stage 1 compute only the kernel's channel: an objective that says it reads
    # nothing else must give the same number from acts[..., k:k+1] with index 0.
    v = jnp.arange(6.0)
    one = [obj.channel(), obj.neuron(), obj.neuron((2, 0, 3)), 2 * obj.channel() - obj.neuron(),
           sum([obj.channel(), obj.neuron()]) / 3]
    for f in one:
        assert f.one_channel
        for k in range(6):
            np.testing.assert_allclose(f(ACTS[..., k:k + 1], 0), f(ACTS, k), rtol=1e-6)
    for f in (obj.direction(v), obj.channel() + obj.direction(v), 3 * obj.direction(v)):
        assert not f.one_channel
