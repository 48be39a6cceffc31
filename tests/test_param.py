"""kvjax.param: parameterisations render valid videos; zero params are flat grey."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kvjax import param

SIZE = (4, 8, 10)


@pytest.mark.parametrize("make", [param.pixel, param.spectral])
def test_zero_params_render_flat_grey(make):
    p = make(SIZE)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, p.init(jax.random.key(0)))
    np.testing.assert_allclose(p.render(zeros), 0.5, atol=1e-7)


@pytest.mark.parametrize("make", [param.pixel, param.spectral])
def test_render_shape_range_and_init_scale(make):
    p = make(SIZE)
    params = p.init(jax.random.key(0))
    np.testing.assert_allclose(jnp.std(params), 0.01, rtol=0.2)
    video = p.render(params)
    assert video.shape == (*SIZE, 3) and video.dtype == jnp.float32
    assert bool(jnp.all((video > 0) & (video < 1)))
    big = jax.tree_util.tree_map(lambda x: 1e3 * x, params)  # sigmoid keeps it in range
    assert bool(jnp.all((p.render(big) >= 0) & (p.render(big) <= 1)))


@pytest.mark.parametrize("size", [(16, 64, 64), (5, 9, 11)])
def test_spectral_init_renders_with_the_pixel_inits_contrast(size):
    """With decay 1 the spectral basis is about unitary (sqrt(T*H*W) cancels irfftn's 1/N;
    Lucid's /4 against the 1/f gain): a spectral init renders with about the contrast of a
    pixel init of the same sd (measured ratio 0.96-0.98), so learning rates carry over. A
    wrong FFT normalisation would be off by a factor of sqrt(N) or more."""
    logit = lambda v: jnp.log(v) - jnp.log1p(-v)  # noqa: E731  the value before the sigmoid
    contrast = lambda p: float(jnp.std(logit(p.render(p.init(jax.random.key(0))))))  # noqa: E731
    ratio = contrast(param.spectral(size, decay=1.0)) / contrast(param.pixel(size))
    assert 0.5 < ratio < 2.0


def test_color_matrix_columns_scaled_by_largest_norm():
    norms = np.linalg.norm(param.COLOR_CORRELATION_NORMALIZED, axis=0)
    assert norms.max() == pytest.approx(1.0)
    np.testing.assert_allclose(param.COLOR_CORRELATION_NORMALIZED * np.linalg.norm(
        param.COLOR_CORRELATION_SVD_SQRT, axis=0).max(), param.COLOR_CORRELATION_SVD_SQRT,
        rtol=1e-6)


def test_render_decorrelates_colours_as_lucid_does():
    """Pixel params e_j at one voxel render as sigmoid(column j of Lucid's
    color_correlation_svd_sqrt / its largest column norm), written out here from Lucid's
    numbers (rows R, G, B): orientation, normalisation and sigmoid together."""
    lucid = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
    lucid = lucid / np.sqrt(0.26 ** 2 + 0.27 ** 2 + 0.27 ** 2)  # column 0 is the longest
    p = param.pixel(SIZE)
    for j in range(3):
        params = jnp.zeros((*SIZE, 3)).at[1, 2, 3, j].set(2.0)
        video = np.asarray(p.render(params), np.float64)
        np.testing.assert_allclose(np.log(video / (1 - video))[1, 2, 3], 2.0 * lucid[:, j],
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.delete(video.reshape(-1, 3), 1 * 80 + 2 * 10 + 3, 0),
                                   0.5)   # every other voxel stays grey


def test_spectral_dc_coefficient_gives_a_constant_colour():
    p = param.spectral(SIZE)
    params = jnp.zeros((2, *SIZE[:2], SIZE[2] // 2 + 1, 3)).at[0, 0, 0, 0, 0].set(1e-3)
    video = p.render(params)
    assert float(jnp.ptp(video[..., 0])) < 1e-6 and float(jnp.abs(video[0, 0, 0, 0] - 0.5)) > 1e-6


def test_spectral_scale_is_one_over_frequency():
    t, h, w = SIZE
    s = param.spectrum_scale(SIZE)
    n = np.sqrt(t * h * w)
    assert s[0, 0, 0] == pytest.approx(n * max(SIZE))               # DC: the floor 1/max(T,H,W)
    assert s[1, 0, 0] == pytest.approx(n * t)                       # f_t = 1/T cycles per frame
    assert s[0, 0, 2] == pytest.approx(n * w / 2)                   # f_w = 2/W
    assert param.spectrum_scale(SIZE, time_weight=2.0)[1, 0, 0] == pytest.approx(n * t / 2)


def test_spectral_low_frequencies_dominate():
    """Random params render smoother than pixel noise, the more so the larger the decay."""
    size = (8, 32, 32)

    def rough(p):  # neighbour differences relative to the spread, in w and in t
        v = p.render(p.init(jax.random.key(1)))
        return float((jnp.mean(jnp.abs(jnp.diff(v, axis=2))) +
                      jnp.mean(jnp.abs(jnp.diff(v, axis=0)))) / jnp.std(v))

    r_pixel = rough(param.pixel(size, sd=0.1))
    r1, r2 = (rough(param.spectral(size, sd=0.1, decay=d)) for d in (1.0, 2.0))
    assert r2 < 0.5 * r1 and r1 < r_pixel


def test_constructors_are_cached_and_checked():
    assert param.pixel(SIZE) is param.pixel(SIZE)
    assert param.make("spectral", SIZE) is param.spectral(SIZE)
    with pytest.raises(ValueError, match="valid: pixel, spectral"):
        param.make("fourier", SIZE)
    with pytest.raises(ValueError, match="T, H, W"):
        param.pixel((4, 8))


@pytest.mark.parametrize("size, factor", [((4, 8, 10), 2), ((3, 6, 6), 3), ((4, 7, 9), 2),
                                          ((2, 5, 6), 3)])
@pytest.mark.parametrize("name, kw", [("pixel", {}), ("spectral", dict(decay=1.5)),
                                      ("spectral", dict(decay=1.0, time_weight=2.0))])
@pytest.mark.parametrize("align", ["corner", "centre"])
def test_tile_renders_the_video_tiled_with_its_corners_or_centre_kept(size, factor, name, kw,
                                                                      align):
    """param.tile (stage 1's coarse to fine) is exact: the big params render as the small
    video repeated factor x factor (NumPy), as it is ("corner") or rolled so that its centre
    pixel is the big one's centre ("centre")."""
    small_p = param.make(name, size, **kw)
    params = jax.tree_util.tree_map(lambda x: 100 * x, small_p.init(jax.random.key(1)))
    small = np.asarray(small_p.render(params))
    assert small.std() > 0.05  # far from flat grey: a wrong mapping would show
    t, h, w = size
    big = param.make(name, (t, factor * h, factor * w), **kw).render(
        param.tile(name, params, size, factor, align=align, **kw))
    centre = lambda n: (n - 1) // 2  # noqa: E731
    shift = [centre(factor * n) - centre(n) if align == "centre" else 0 for n in (h, w)]
    want = np.roll(np.tile(small, (1, factor, factor, 1)), shift, axis=(1, 2))
    np.testing.assert_allclose(big, want, atol=1e-6)
    if align == "centre":
        np.testing.assert_array_equal(want[:, centre(factor * h), centre(factor * w)],
                                      small[:, centre(h), centre(w)])
    with pytest.raises(ValueError, match="unknown tile alignment 'middle'; valid: corner, cent"):
        param.tile(name, params, size, factor, align="middle", **kw)
