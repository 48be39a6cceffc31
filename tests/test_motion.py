"""kvjax.motion: sign conventions, summaries on analytic cases, colour coding."""
import jax.numpy as jnp
import numpy as np
import pytest

from kvjax import motion as M


def _field(t, h, w, vx, vy):
    return jnp.broadcast_to(jnp.array([vx, vy], jnp.float32).reshape(1, 1, 1, 2), (t, h, w, 2))


def test_velocity_is_minus_the_displacement_step():
    """Content moving right by v gives D_t = -v t, and the reported velocity is +v."""
    t = jnp.arange(5, dtype=jnp.float32).reshape(5, 1, 1, 1)
    v = jnp.array([1.5, -0.5], jnp.float32).reshape(1, 1, 1, 2)
    d = jnp.broadcast_to(-v * t, (5, 4, 3, 2))
    vel = M.velocity_from_displacement(d)
    np.testing.assert_allclose(vel, np.broadcast_to([1.5, -0.5], (5, 4, 3, 2)), atol=1e-6)
    np.testing.assert_allclose(M.displacement_from_velocity(vel), d, atol=1e-6)


def test_velocity_single_frame_is_zero():
    assert float(jnp.max(jnp.abs(M.velocity_from_displacement(jnp.ones((1, 2, 2, 2)))))) == 0.0


def test_screen_direction():
    """Image coords have y down; on screen +y is up, so row-decreasing motion is 90 deg."""
    vx, vy, deg = np.array([(1, 0, 0), (0, -1, 90), (-1, 0, 180), (0, 1, 270),
                            (1, -1, 45), (-2, -2, 135), (1, 1, 315)], np.float32).T
    got = np.asarray(M.screen_direction_deg(jnp.asarray(vx), jnp.asarray(vy)))
    np.testing.assert_allclose((got - deg + 180) % 360 - 180, 0.0, atol=1e-4)
    assert np.all((got >= 0.0) & (got < 360.0))
    # just below the x axis: -1e-8 rad, whose mod 360 rounds to 360.0 in float32
    assert float(M.screen_direction_deg(jnp.float32(1.0), jnp.float32(1e-8))) == 0.0


def test_direction_and_speed_of_constant_fields():
    vel = jnp.stack([_field(4, 5, 6, 3.0, -4.0), _field(4, 5, 6, 0.0, 2.0)])
    np.testing.assert_allclose(M.speed_px_per_frame(vel), [5.0, 2.0], rtol=1e-5)
    np.testing.assert_allclose(M.direction_deg(vel),
                               [np.degrees(np.arctan2(4, 3)), 270.0], atol=1e-3)


def test_speed_is_mean_magnitude_not_magnitude_of_mean():
    """Half the pixels move right, half left: mean vector zero, mean speed 1."""
    vel = jnp.concatenate([_field(3, 4, 2, 1.0, 0.0), _field(3, 4, 2, -1.0, 0.0)], axis=2)
    np.testing.assert_allclose(M.speed_px_per_frame(vel), 1.0, rtol=1e-5)


def test_speed_ignores_frame_zero():
    """Frame 0 only repeats frame 1 (v_0 := v_1), so it does not enter the means."""
    vel = _field(3, 2, 2, 1.0, 0.0).at[0].set(100.0)
    np.testing.assert_allclose(M.speed_px_per_frame(vel), 1.0, rtol=1e-5)


def _video(seed=0, shape=(6, 5, 4, 3)):
    return jnp.asarray(np.random.default_rng(seed).uniform(size=shape).astype(np.float32))


def test_motion_fraction_analytic_cases():
    v = _video()
    mean = jnp.mean(v, axis=0, keepdims=True)
    assert float(M.motion_fraction(v, v)) == pytest.approx(1.0)
    assert float(M.motion_fraction(v, jnp.broadcast_to(mean, v.shape))) == pytest.approx(0.0, abs=1e-6)
    half = mean + 0.5 * (v - mean)        # explains half the deviation: 1 - 0.5^2
    assert float(M.motion_fraction(v, half)) == pytest.approx(0.75, abs=1e-5)
    bad = v + 10.0                        # worse than the mean frame: clipped to 0
    assert float(M.motion_fraction(v, bad)) == 0.0


def test_motion_fraction_of_a_static_video_is_zero():
    still = jnp.broadcast_to(_video()[:1], (6, 5, 4, 3))
    assert float(M.motion_fraction(still, still)) == 0.0


def test_summarize_keys_shapes_and_mse():
    v = jnp.stack([_video(0), _video(1)])
    r = v + jnp.array([0.1, 0.2], jnp.float32).reshape(2, 1, 1, 1, 1)
    s = M.summarize(v, r, jnp.stack([_field(6, 5, 4, 1.0, 0.0)] * 2))
    assert set(s) == {"direction_deg", "speed_px_per_frame", "motion_fraction", "recon_mse"}
    assert all(a.shape == (2,) for a in s.values())
    np.testing.assert_allclose(s["recon_mse"], [0.01, 0.04], rtol=1e-4)


# ---------------------------------------------------------------------------- colours

def test_flow_to_rgb_hue_of_the_four_directions():
    flow = jnp.array([[1, 0], [0, -1], [-1, 0], [0, 1]], jnp.float32).reshape(1, 4, 2)
    rgb = [(1, 0, 0),       # right: red (hue 0)
           (0.5, 1, 0),     # up on screen: hue 1/4
           (0, 1, 1),       # left: cyan (hue 1/2)
           (0.5, 0, 1)]     # down: hue 3/4
    np.testing.assert_allclose(M.flow_to_rgb(flow)[0], rgb, atol=1e-5)


def test_flow_to_rgb_normalises_automatically_and_zero_is_black():
    rng = np.random.default_rng(0)
    flows = jnp.asarray(rng.normal(size=(3, 8, 8, 2)).astype(np.float32))
    a = M.flow_to_rgb(flows)
    np.testing.assert_allclose(M.flow_to_rgb(10.0 * flows), a, atol=1e-5)   # no knob to tune
    assert a.shape == (3, 8, 8, 3) and float(a.min()) >= 0 and float(a.max()) <= 1
    assert float(jnp.max(M.flow_to_rgb(flows.at[0, 0, 0].set(0.0))[0, 0, 0])) == 0.0
    # one common scale across the fields: a field with half the motion is darker
    both = M.flow_to_rgb(jnp.stack([flows[0], 0.5 * flows[0]]))
    assert float(both[1].max(-1).mean()) < float(both[0].max(-1).mean())


def test_colour_wheel_agrees_with_flow_to_rgb():
    size = 33
    wheel = M.colour_wheel(size)
    assert wheel.shape == (size, size, 3)
    c = size // 2
    for (row, col), (vx, vy) in {(c, size - 1): (1, 0), (0, c): (0, -1),
                                 (c, 0): (-1, 0), (size - 1, c): (0, 1)}.items():
        expect = M.flow_to_rgb(jnp.array([vx, vy], jnp.float32).reshape(1, 1, 2))[0, 0]
        np.testing.assert_allclose(wheel[row, col], expect, atol=1e-5)
    np.testing.assert_allclose(wheel[c, c], 0.0, atol=1e-6)   # no motion: black centre
    np.testing.assert_allclose(wheel[0, 0], 1.0)               # outside the disc: white


def test_arrow_samples_of_a_constant_field():
    flow = _field(1, 16, 24, 2.0, -1.0)[0]
    pos, vec = M.arrow_samples(flow, spacing=8)
    assert pos.shape == (6, 2) and vec.shape == (6, 2)
    np.testing.assert_allclose(vec, np.broadcast_to([2.0, -1.0], (6, 2)))
    np.testing.assert_allclose(pos[0], [3.5, 3.5])
    np.testing.assert_allclose(pos[-1], [19.5, 11.5])
