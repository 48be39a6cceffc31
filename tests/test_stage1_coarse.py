"""kvjax.stage1 coarse to fine (Stage1Config.coarse_steps): a small run, tiled, then full size."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kvjax import objectives, param, stage1
from kvjax.models.base import resize_video

import tiny_model
from tiny_model import SIZE, config, tiny_features

SMALL = (SIZE[0], SIZE[1] // 2, SIZE[2] // 2)
KEY = jax.random.key(11)


def _tile(videos, factor=2, centre=False):
    """Videos f32[K,T,H,W,3] tiled factor x factor, corners at the corners or (centre) rolled
    so the centre stays the centre (NumPy, independent of param.tile)."""
    h, w = videos.shape[2:4]
    shift = [(factor * n - 1) // 2 - (n - 1) // 2 if centre else 0 for n in (h, w)]
    return np.roll(np.tile(videos, (1, 1, factor, factor, 1)), shift, axis=(2, 3))


def _channel_mean(features, video, k):
    return float(jnp.mean(features(jnp.asarray(video))[..., k]))


@pytest.fixture(scope="module")
def features():
    return tiny_features(seed=2)


def test_all_coarse_steps_are_a_small_run_tiled(features):
    """coarse_steps == steps: exactly a plain run on the small video (same keys, same
    programs), its video tiled with its corners at the corners (a channel objective); the
    start and final activations are measured at full size."""
    kw = dict(param="spectral", steps=5, spectral_decay=1.5)  # 5: one step per CPU program
    small = stage1.optimize(features, [0, 3, 1], config(size=SMALL, **kw), KEY)
    r = stage1.optimize(features, [0, 3, 1], config(coarse_steps=5, **kw), KEY)
    assert r.videos.shape == (3, *SIZE, 3) and r.trace.shape == (3, 5)
    np.testing.assert_allclose(r.videos, _tile(small.videos), atol=2e-6)
    np.testing.assert_array_equal(r.trace, small.trace)
    for i, k in enumerate([0, 3, 1]):
        assert r.activation[i] == pytest.approx(_channel_mean(features, r.videos[i], k),
                                                rel=1e-5, abs=1e-6)
        cfg = config(size=SMALL, **kw)
        start = cfg.make_param().render(stage1.init(KEY, k, cfg).params)
        assert r.activation_start[i] == pytest.approx(
            _channel_mean(features, _tile(np.asarray(start)[None])[0], k), rel=1e-5, abs=1e-6)


CFG = config(steps=7, coarse_steps=2, chunk_size=2)  # 2 coarse + 5 fine steps
KERNELS = [2, 0, 3, 1]


@pytest.fixture(scope="module")
def coarse_run(features):
    """CFG on KERNELS in two chunks, with a features function nothing has compiled yet:
    (result, programs compiled by it, progress reports with the program count at each)."""
    fn = lambda w, video: tiny_model.conv_relu(w, video)  # noqa: E731  a new static part
    fresh = jax.tree_util.Partial(fn, *features.args)
    before, seen = stage1.compiled_programs(), []
    progress = lambda done, total, c, n: seen.append((done, total, c,  # noqa: E731
                                                      stage1.compiled_programs()))
    r = stage1.optimize(fresh, KERNELS, CFG, KEY, progress=progress)
    return r, stage1.compiled_programs() - before, seen, fresh


def test_coarse_to_fine_compiles_once_and_reports_every_step(coarse_run):
    r, compiled, seen, fresh = coarse_run
    assert compiled == 5  # start, segment (coarse); tile; segment, finish (full size)
    # CPU: programs of up to 4 unrolled steps, reported once a multiple of progress_every (5)
    # is crossed and at the end; elsewhere a lax.scan segment per phase here (2 coarse steps,
    # then 5 full-size ones), each reported (stage1._plan)
    done = (4, 7) if jax.default_backend() == "cpu" else (2, 7)
    assert [s[:3] for s in seen] == [(d, 7, c) for c in range(2) for d in done]
    # The second chunk compiles nothing (on CPU nothing compiles after the first report; on
    # GPU the full-size programs compile after the coarse segment's report)
    first_chunk_done = [s[3] for s in seen if s[2] == 0][-1]
    assert all(s[3] == first_chunk_done for s in seen if s[2] == 1)
    if jax.default_backend() == "cpu":
        assert all(s[3] == seen[-1][3] for s in seen)
    before = stage1.compiled_programs()
    again = stage1.optimize(fresh, KERNELS, CFG, KEY)
    assert stage1.compiled_programs() == before
    np.testing.assert_array_equal(again.videos, r.videos)  # same seed, same result
    assert np.all(again.finite) and np.all(again.activation > again.activation_start + 0.05)


def test_each_kernel_is_its_coarse_run_tiled_then_fine_steps_with_a_fresh_optimiser(
        features, coarse_run):
    """Each vmapped kernel equals its own run composed by hand from init, run and param.tile:
    coarse steps on the small video, tiled, then plain full-size steps from a fresh Adam."""
    r = coarse_run[0]
    small, full = config(size=SMALL, steps=2), config(steps=5)
    run = jax.jit(stage1.run, static_argnums=(3, 4))
    for i in (0, 3):
        k = KERNELS[i]
        state, _ = run(stage1.init(KEY, k, small), features, k, small, 2)
        params = param.tile("pixel", state.params, SMALL, 2, align="corner")
        state = stage1.Stage1State(params, full.make_optimizer().init(params), state.key,
                                   state.finite)
        state, values = run(state, features, k, full, 5)
        np.testing.assert_allclose(r.videos[i], stage1.render(state, full), atol=1e-5)
        np.testing.assert_allclose(r.trace[i, 2:], values, rtol=1e-4, atol=1e-5)


def test_builtin_features_see_the_coarse_video_at_a_smaller_input(i3d):
    """A model's features resize to a fixed input; coarse_features halves that input."""
    model = i3d
    f = model.features("Conv3d_1a_7x7", input_size=(4, 32, 32))
    coarse = stage1.coarse_features(f, 2)
    video = jax.random.uniform(jax.random.key(0), (4, 16, 16, 3))
    small = model.features("Conv3d_1a_7x7", input_size=(4, 16, 16))
    got, want, full = jax.jit(lambda v: (coarse(v), small(v), f(v)))(video)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert got.shape == (2, 8, 8, 64) and full.shape == (2, 16, 16, 64)


def test_coarse_to_fine_errors_say_what_is_valid(features):
    ch = objectives.channel()
    with pytest.raises(ValueError, match=r"coarse_steps must be between 0 and steps \(12\)"):
        config(coarse_steps=13)
    with pytest.raises(ValueError, match="divisible by coarse_factor"):
        config(coarse_steps=2, size=(4, 12, 10), coarse_factor=3)
    with pytest.raises(ValueError, match="coarse_factor must be an integer >= 2"):
        config(coarse_factor=1)
    with pytest.raises(ValueError, match="neuron position given in layer coordinates"):
        stage1.optimize(features, [0], config(coarse_steps=2),
                        objective=objectives.neuron((1, 2, 2)))
    fixed = jax.tree_util.Partial(
        lambda w, v: tiny_model.conv_relu(w, resize_video(v, SIZE)), *features.args)
    with pytest.raises(ValueError, match="resizes videos to a fixed input"):
        stage1.optimize(fixed, [0], config(coarse_steps=2))
    with pytest.raises(ValueError, match=r"cannot be computed on the coarse phase's \(4, 1, 1\)"):
        stage1.optimize(features, [0], config(coarse_steps=2, size=(4, 4, 4), coarse_factor=4))
    # The centre neuron is allowed: its video is tiled with the centre kept at the centre, so
    # the full-size layer's centre sees what the small layer's centre saw (tiled by the
    # corners, the centre would see where four copies meet).
    centre = objectives.neuron()
    assert stage1.tile_align(centre) == "centre" == stage1.tile_align(0.5 * centre + 2 * ch)
    assert stage1.tile_align(ch) == "corner" == stage1.tile_align(ch + ch)
    small = stage1.optimize(features, [0, 1, 2, 3], config(size=SMALL, steps=4), KEY,
                            objective=centre)
    r = stage1.optimize(features, [0, 1, 2, 3], config(coarse_steps=4, steps=4), KEY,
                        objective=centre)
    assert np.any(small.activation > 0.01)
    np.testing.assert_allclose(r.videos, _tile(small.videos, centre=True), atol=2e-6)
    np.testing.assert_allclose(r.activation, small.activation, rtol=1e-5, atol=1e-6)
