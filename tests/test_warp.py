"""kvjax.warp: values against integer shifts and linear ramps, gradients against finite
differences, flow resizing."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kvjax import warp as W


def _image(h=12, w=10, c=3, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(size=(h, w, c)).astype(np.float32))


def _const_flow(h, w, dx, dy):
    return jnp.broadcast_to(jnp.array([dx, dy], jnp.float32).reshape(1, 1, 2), (h, w, 2))


@pytest.mark.parametrize("dx,dy", [(0, 0), (1, 0), (0, 1), (-2, 3), (3, -1), (20, -20)])
def test_integer_shift_matches_clamped_indexing(dx, dy):
    img = _image()
    h, w, _ = img.shape
    out = W.warp(img, _const_flow(h, w, dx, dy))
    rows = np.clip(np.arange(h) + dy, 0, h - 1)
    cols = np.clip(np.arange(w) + dx, 0, w - 1)
    ref = np.asarray(img)[rows][:, cols]
    np.testing.assert_allclose(out, ref, atol=1e-6)


def test_flow_x_is_columns_y_is_rows():
    """D = (-1, 0) shows the image moved one pixel right: out[:, j] = img[:, j - 1]."""
    img = _image()
    h, w, _ = img.shape
    out = np.asarray(W.warp(img, _const_flow(h, w, -1.0, 0.0)))
    np.testing.assert_allclose(out[:, 1:], np.asarray(img)[:, :-1], atol=1e-6)
    out = np.asarray(W.warp(img, _const_flow(h, w, 0.0, -1.0)))  # moved down one row
    np.testing.assert_allclose(out[1:], np.asarray(img)[:-1], atol=1e-6)


def test_subpixel_is_exact_on_linear_ramps():
    h, w = 16, 16
    y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    ramp = jnp.asarray(np.stack([x, y, 0.3 * x - 0.7 * y], -1).astype(np.float32))
    rng = np.random.default_rng(1)
    flow = jnp.asarray(rng.uniform(-2, 2, (h, w, 2)).astype(np.float32))
    out = np.asarray(W.warp(ramp, flow))
    sx = np.clip(x + np.asarray(flow[..., 0]), 0, w - 1)
    sy = np.clip(y + np.asarray(flow[..., 1]), 0, h - 1)
    np.testing.assert_allclose(out, np.stack([sx, sy, 0.3 * sx - 0.7 * sy], -1), atol=1e-4)


def test_half_pixel_is_mean_of_neighbours():
    img = _image()
    h, w, _ = img.shape
    out = np.asarray(W.warp(img, _const_flow(h, w, 0.5, 0.0)))
    ref = 0.5 * (np.asarray(img)[:, :-1] + np.asarray(img)[:, 1:])
    np.testing.assert_allclose(out[:, :-1], ref, atol=1e-6)


def _fd_check(fun, args, argnum, seed, eps=1e-2, rtol=2e-2):
    """Directional derivative from jax.grad against a central difference (in float32)."""
    direction = jnp.asarray(np.random.default_rng(seed).normal(
        size=args[argnum].shape).astype(np.float32))
    g = jax.grad(fun, argnums=argnum)(*args)
    analytic = float(jnp.sum(g * direction))

    def shifted(s):
        a = list(args)
        a[argnum] = a[argnum] + s * direction
        return float(fun(*a))

    numeric = (shifted(eps) - shifted(-eps)) / (2 * eps)
    assert abs(analytic - numeric) <= rtol * max(abs(numeric), 1e-3), (analytic, numeric)


def test_gradients_match_finite_differences():
    h, w = 12, 10
    img = _image(h, w)
    # sample positions well inside the image and away from integer grid lines, so a small
    # finite step stays on one bilinear patch (the warp is piecewise bilinear in D)
    rng = np.random.default_rng(2)
    frac = rng.uniform(0.3, 0.7, (h, w, 2))
    y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    tx = np.clip(x, 1, w - 3) + frac[..., 0]
    ty = np.clip(y, 1, h - 3) + frac[..., 1]
    flow = jnp.asarray(np.stack([tx - x, ty - y], -1).astype(np.float32))
    weights = jnp.asarray(rng.normal(size=(h, w, 3)).astype(np.float32))

    def loss(i, d):
        return jnp.sum(weights * W.warp(i, d))

    _fd_check(loss, (img, flow), 0, seed=3, eps=1e-1)      # linear in I: any step size
    _fd_check(loss, (img, flow), 1, seed=4, eps=1e-2)
    assert float(jnp.max(jnp.abs(jax.grad(loss, 1)(img, flow)))) > 0


def test_gradient_wrt_flow_is_zero_outside_the_image():
    img = _image()
    h, w, _ = img.shape
    g = jax.grad(lambda d: jnp.sum(W.warp(img, d)))(_const_flow(h, w, 50.0, 50.0))
    assert float(jnp.max(jnp.abs(g))) == 0.0


def test_warp_frames_vmaps_over_time():
    img = _image()
    h, w, _ = img.shape
    flows = jnp.stack([_const_flow(h, w, t, 0) for t in range(3)])
    out = W.warp_frames(img, flows)
    assert out.shape == (3, h, w, 3)
    np.testing.assert_allclose(out[2], W.warp(img, flows[2]), atol=1e-6)


def test_wrong_flow_shape_says_what_is_expected():
    with pytest.raises(ValueError, match=r"flow must be f32\[12, 10, 2\]"):
        W.warp(_image(), jnp.zeros((10, 12, 2)))


def test_resize_flow_scales_vectors_with_the_grid():
    flow = _const_flow(64, 32, 2.0, -4.0)[None]
    out = W.resize_flow(flow, (16, 16))
    assert out.shape == (1, 16, 16, 2)
    np.testing.assert_allclose(out[..., 0], 1.0, atol=1e-5)   # x: 16 / 32
    np.testing.assert_allclose(out[..., 1], -1.0, atol=1e-5)  # y: 16 / 64


def test_fraction_pixel_round_trip():
    flow = jnp.asarray(np.random.default_rng(5).normal(size=(4, 8, 6, 2)).astype(np.float32))
    frac = W.pixels_to_fraction(flow)
    np.testing.assert_allclose(frac[..., 0], flow[..., 0] / 6, rtol=1e-6)
    np.testing.assert_allclose(frac[..., 1], flow[..., 1] / 8, rtol=1e-6)
    np.testing.assert_allclose(W.fraction_to_pixels(frac), flow, rtol=1e-6)
