"""kvjax.transforms: warps move content where their definition says; random draws stay in range."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kvjax import transforms as tf

SHAPE = (5, 9, 11, 2)


def delta(at, shape=SHAPE):
    return jnp.zeros(shape).at[(*at, 0)].set(1.0)


def test_integer_shift_moves_a_delta_exactly():
    out = tf.warp(delta((1, 2, 3)), shift=(2, 3, -1))
    np.testing.assert_array_equal(out, delta((3, 5, 2)))


def test_scale_one_shift_zero_is_identity_on_both_paths():
    v = jax.random.uniform(jax.random.key(0), SHAPE)
    np.testing.assert_array_equal(tf.warp(v, (0, 0, 0), 1.0), v)
    np.testing.assert_allclose(tf.warp(v, (0, 0, 0), 1.0, jnp.float32(0.0)), v, atol=1e-6)


def test_zeros_come_in_from_outside():
    out = tf.warp(jnp.ones(SHAPE), shift=(1, 0, 2))
    assert float(out[0].max()) == 0.0 and float(out[:, :, :2].max()) == 0.0
    np.testing.assert_array_equal(out[1:, :, 2:], 1.0)


def test_scale_about_the_corner_fixes_voxel_zero_and_scales_time():
    out = tf.warp(delta((1, 2, 3), (5, 9, 11, 1)), (0, 0, 0), 2.0, center=(0, 0, 0))
    assert float(out[2, 4, 6, 0]) == 1.0 and float(out.sum()) == pytest.approx(8.0)
    kept = tf.warp(delta((1, 2, 3), (5, 9, 11, 1)), (0, 0, 0), 2.0, scale_time=False)
    assert float(kept[1, 4, 6, 0]) == 1.0


def test_separable_and_gather_paths_agree():
    v = jax.random.uniform(jax.random.key(1), SHAPE)
    for shift, scale in [((1, -2, 3), 0.9), ((0.5, 1.25, -0.75), 1.1)]:
        a = tf.warp(v, shift, scale, center=(2, 4, 5))
        b = tf.warp(v, shift, scale, jnp.float32(0.0), center=(2, 4, 5))
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_rotation_is_counter_clockwise_on_screen():
    # Content 2 px right of the centre rotates 90 degrees to 2 px above it (y up on screen).
    out = tf.warp(delta((2, 4, 7)), (0, 0, 0), 1.0, math.pi / 2, center=(2, 4, 5))
    np.testing.assert_allclose(out, delta((2, 2, 5)), atol=1e-5)


def _draws(transform, n=512):
    return jax.vmap(transform.sample)(jax.random.split(jax.random.key(0), n))


def test_paper_transform_draws_the_reference_sets():
    shift, scale, angle = _draws(tf.Affine.paper())
    assert set(np.unique(shift[:, 0]).tolist()) == {0, 1, 2, 3}          # frames, one-sided
    for axis in (1, 2):
        assert set(np.unique(shift[:, axis]).tolist()) == set(range(8))  # pixels, one-sided
    expected = [0.90, 0.92, 0.94, 0.96, 0.98, 1.0, 1.02, 1.04, 1.06, 1.08, 1.10]
    np.testing.assert_allclose(np.unique(scale), expected, rtol=1e-6)
    np.testing.assert_array_equal(angle, 0.0)
    assert tf.Affine.paper() == tf.Affine(jitter=(3, 7, 7), one_sided=True, scales=expected,
                                          scale_time=True, center="corner")


def test_paper_transform_is_one_warp_about_the_corner():
    t = tf.Affine.paper()
    v = jax.random.uniform(jax.random.key(2), SHAPE)
    key = jax.random.key(3)
    shift, scale, _ = t.sample(key)
    np.testing.assert_allclose(t(key, v), tf.warp(v, shift, scale, center=(0, 0, 0)), atol=1e-6)


def test_default_transform_is_centred_and_symmetric():
    t = tf.Affine(jitter=(1, 3, 3), rotate_deg=10.0)
    shift, scale, angle = _draws(t, 2048)
    assert set(np.unique(shift[:, 1]).tolist()) == set(range(-3, 4))
    assert abs(float(shift.mean())) < 0.2 and abs(float(angle.mean())) < 0.02
    assert float(jnp.abs(angle).max()) <= math.radians(10.0)
    # Scaling about the middle keeps a centred delta exactly in place; about the corner (the
    # reference's) the same scale moves it off its voxel.
    c = tf.Affine(jitter=(0, 0, 0), scales=(1.1,))(jax.random.key(0), delta((2, 4, 5)))
    assert float(c[2, 4, 5, 0]) == pytest.approx(1.0, abs=1e-6)
    corner = tf.warp(delta((2, 4, 5)), jnp.zeros(3), 1.1, center=(0, 0, 0))
    assert float(corner[2, 4, 5, 0]) < 0.9


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="center"):
        tf.Affine(center="edge")
    with pytest.raises(ValueError, match="jitter"):
        tf.Affine(jitter=(1, 2))
