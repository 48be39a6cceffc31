"""Stage 2 on videos with known motion, plus the batching/key/compile properties.

Velocities in this file are CONTENT velocities in IMAGE coordinates (x right, y DOWN), px per
frame; the summary reports directions on screen (y UP): (1, 0) -> 0 deg, (0, -1) -> 90 deg,
(-1, 0) -> 180 deg, (0, 1) -> 270 deg.

The synthetic videos are sums of sinusoids evaluated at the moved coordinates, so every
sub-pixel translation or rotation is exact (no interpolation in the ground truth).
"""
import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kvjax import stage2
from kvjax.errors import KvjaxError

T, H, W = 16, 64, 64
TRANSLATIONS = [(1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0), (0.5, 0.5)]
SCREEN_DEG = [0.0, 270.0, 180.0, 90.0, 315.0]
OMEGA = 1.5  # deg/frame, about 0.8 px/frame at the rim of the 64 x 64 frame
GRATING = dict(direction_deg=30.0, speed=1.0, period=8.0)  # moves 15 px over the clip


def _grid(h=H, w=W):
    return np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64),
                       indexing="ij")[::-1]  # x, y


def _smooth_texture(seed, x, y, n=24):
    """A smooth random colour texture f(x, y) -> [..., 3]: n plane waves, periods 10-40 px."""
    rng = np.random.default_rng(seed)
    f = rng.uniform(1 / 40, 1 / 10, n)
    th = rng.uniform(0, 2 * np.pi, n)
    phase = rng.uniform(0, 2 * np.pi, (n, 3))
    amp = rng.normal(size=(n, 3))
    out = 0.0
    for i in range(n):
        arg = 2 * np.pi * f[i] * (np.cos(th[i]) * x + np.sin(th[i]) * y)
        out = out + amp[i] * np.cos(arg[..., None] + phase[i])
    return out


def _to_unit(v):
    return (0.5 + 0.45 * v / np.abs(v).max()).astype(np.float32)


def translating_video(seed, vx, vy, t=T, h=H, w=W):
    x, y = _grid(h, w)
    return _to_unit(np.stack([_smooth_texture(seed, x - vx * s, y - vy * s) for s in range(t)]))


def rotating_video(seed, omega_deg, t=T, h=H, w=W):
    """Content turning about the centre by omega_deg per frame, positive = +x towards +y in
    image coordinates (clockwise on screen); its velocity field has curl 2 * omega (image
    coords: d vy/dx - d vx/dy)."""
    x, y = _grid(h, w)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    frames = []
    for s in range(t):
        a = -np.radians(omega_deg) * s  # V_t(p) = I0(R(-omega t)(p - c) + c)
        xs = np.cos(a) * (x - cx) - np.sin(a) * (y - cy) + cx
        ys = np.sin(a) * (x - cx) + np.cos(a) * (y - cy) + cy
        frames.append(_smooth_texture(seed, xs, ys))
    return _to_unit(np.stack(frames))


def grating_video(direction_deg, speed, period, t=T, h=H, w=W):
    """A saturated (sigmoid, gain 6) colour grating drifting at `speed` px/frame towards the
    on-screen direction `direction_deg`: periodic, nearly binary, and moving far."""
    x, y = _grid(h, w)
    ux, uy = np.cos(np.radians(direction_deg)), -np.sin(np.radians(direction_deg))
    frames = []
    for s in range(t):
        phase = 2 * np.pi * ((x * ux + y * uy) - speed * s) / period
        grey = 1 / (1 + np.exp(-6 * np.sin(phase)))
        frames.append(np.stack([grey, 0.3 + 0.4 * grey, 1 - grey], -1))
    return np.stack(frames).astype(np.float32)


def _angle_err(a, b):
    return abs((a - b + 180.0) % 360.0 - 180.0)


def _corr(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def _mean_curl(velocity):
    """Mean of d vy/dx - d vx/dy (image coords) over frames 1.. and the interior."""
    v = np.asarray(velocity)[1:, 8:-8, 8:-8]
    dvy_dx = np.gradient(v[..., 1], axis=2)
    dvx_dy = np.gradient(v[..., 0], axis=1)
    return float(np.mean(dvy_dx - dvx_dy))


def _decompose_ground_truth(preset):
    """One vmapped decompose over every ground-truth case: 5 translations, a static video,
    two rotations (+, -), a drifting grating and the same grating in red-blue opposition
    (constant grey level), in this order."""
    videos = [translating_video(i, vx, vy) for i, (vx, vy) in enumerate(TRANSLATIONS)]
    videos.append(translating_video(7, 0.0, 0.0))             # static
    videos.append(rotating_video(8, OMEGA))
    videos.append(rotating_video(9, -OMEGA))
    videos.append(grating_video(**GRATING))
    videos.append(_opponent(grating_video(**GRATING)))
    videos = jnp.asarray(np.stack(videos))
    start = time.perf_counter()
    dec = jax.block_until_ready(stage2.decompose(videos, stage2.Stage2Config.preset(preset),
                                                 jax.random.key(0)))
    seconds = time.perf_counter() - start
    print(f"\nstage-2 {preset} preset, {videos.shape[0]} videos {videos.shape[1:]}: "
          f"{seconds:.1f} s")
    return np.asarray(videos), jax.tree.map(np.asarray, dec), seconds


@pytest.fixture(scope="module")
def ground_truth():
    return _decompose_ground_truth("fast")


@pytest.mark.slow
def test_paper_preset_recovers_the_motion():
    """The paper preset (2000 steps from noise, weight-1 TV on I): motion right, texture flat."""
    _, dec, _ = _decompose_ground_truth("paper")
    for i, ((vx, vy), deg) in enumerate(zip(TRANSLATIONS, SCREEN_DEG)):
        assert _angle_err(dec.summary["direction_deg"][i], deg) < 10.0
        assert abs(dec.summary["speed_px_per_frame"][i] - np.hypot(vx, vy)) < 0.25
    assert dec.summary["speed_px_per_frame"][5] < 0.1
    assert _mean_curl(dec.velocity[6]) > 0 > _mean_curl(dec.velocity[7])
    for i in (8, 9):  # the grating, grey-level and red-blue
        assert _angle_err(dec.summary["direction_deg"][i], GRATING["direction_deg"]) < 10.0


def test_translations_direction_speed_and_texture(ground_truth):
    videos, dec, _ = ground_truth
    rows = []
    for i, ((vx, vy), deg) in enumerate(zip(TRANSLATIONS, SCREEN_DEG)):
        d_err = _angle_err(dec.summary["direction_deg"][i], deg)
        s_err = dec.summary["speed_px_per_frame"][i] - np.hypot(vx, vy)
        c = _corr(dec.texture[i, 4:-4, 4:-4], videos[i, 0, 4:-4, 4:-4])
        rows.append(((vx, vy), d_err, s_err, c))
        print(f"v=({vx:+.1f},{vy:+.1f}) direction error {d_err:.2f} deg, speed error "
              f"{s_err:+.3f} px/frame, texture corr {c:.4f}")
    for v, d_err, s_err, c in rows:
        assert d_err < 10.0, (v, d_err)
        assert abs(s_err) < 0.25, (v, s_err)
        assert c > 0.9, (v, c)


def test_static_video_has_no_motion(ground_truth):
    videos, dec, _ = ground_truth
    assert dec.summary["speed_px_per_frame"][5] < 0.1
    assert np.abs(dec.displacement[5]).max() < 0.5          # px, anywhere in the clip
    assert dec.summary["recon_mse"][5] < 1e-3  # the video's variance is ~2e-2
    print(f"static: max |D| {np.abs(dec.displacement[5]).max():.3f} px, recon mse "
          f"{dec.summary['recon_mse'][5]:.2e}")
    assert _corr(dec.texture[5], videos[5, 0]) > 0.9


def test_rotation_curl_has_the_right_sign(ground_truth):
    _, dec, _ = ground_truth
    curl_pos, curl_neg = _mean_curl(dec.velocity[6]), _mean_curl(dec.velocity[7])
    true = 2 * np.radians(OMEGA)
    print(f"mean curl {curl_pos:+.4f} / {curl_neg:+.4f}, true {true:+.4f} / {-true:+.4f}")
    assert curl_pos > 0.25 * true and curl_neg < -0.25 * true


@pytest.mark.parametrize("i,name", [(8, "grey-level"), (9, "red-blue opponent")])
def test_saturated_grating_moving_far(ground_truth, i, name):
    """METHOD.md's hard case: a periodic, saturated pattern that moves 15 px over the clip;
    also when only its hue changes (the opponent version: before the motion estimate summed
    colour channels, 89.7 deg at 2.0 px/frame)."""
    _, dec, _ = ground_truth
    d_err = _angle_err(dec.summary["direction_deg"][i], GRATING["direction_deg"])
    s_err = dec.summary["speed_px_per_frame"][i] - GRATING["speed"]
    print(f"{name} grating: direction error {d_err:.2f} deg, speed error {s_err:+.3f} "
          f"px/frame")
    assert d_err < 10.0 and abs(s_err) < 0.25


def test_outputs_are_consistent(ground_truth):
    videos, dec, _ = ground_truth
    k = videos.shape[0]
    assert dec.texture.shape == (k, H, W, 3)
    assert dec.displacement.shape == dec.velocity.shape == (k, T, H, W, 2)
    assert dec.reconstruction.shape == videos.shape
    assert dec.loss_trace.shape == (k, stage2.Stage2Config.preset("fast").steps)
    assert set(dec.summary) == {"direction_deg", "speed_px_per_frame", "motion_fraction",
                                "recon_mse"}
    assert all(np.shape(a) == (k,) for a in dec.summary.values())
    assert np.all(np.isfinite(dec.loss_trace))
    assert np.all(dec.loss_trace[:, -1] < dec.loss_trace[:, 0])
    # the texture is in the video's units (not the internal [-0.5, 0.5] scaling)
    np.testing.assert_allclose(dec.texture.mean((1, 2, 3)), videos[:, 0].mean((1, 2, 3)),
                               atol=0.05)
    # moving textures: the warp explains most of what changes over time
    assert np.all(dec.summary["motion_fraction"][:5] > 0.5)
    np.testing.assert_allclose(dec.summary["recon_mse"],
                               ((dec.reconstruction - videos) ** 2).mean((1, 2, 3, 4)),
                               rtol=1e-4)


_global_velocity = jax.jit(stage2.global_velocity)


@pytest.mark.parametrize("vx,vy", [(1.0, 0.0), (0.5, 0.5), (-1.5, 0.7), (3.0, -2.0)])
def test_global_velocity_recovers_translations(vx, vy):
    v = _global_velocity(jnp.asarray(translating_video(3, vx, vy)))
    np.testing.assert_allclose(v, [vx, vy], atol=0.05)


def test_global_velocity_of_a_grating_is_its_normal_velocity():
    """Along the stripes nothing moves (aperture problem): the smallest shift is reported."""
    v = np.asarray(_global_velocity(jnp.asarray(grating_video(**GRATING))))
    a = np.radians(GRATING["direction_deg"])
    np.testing.assert_allclose(v, [np.cos(a), -np.sin(a)], atol=0.1)


def _opponent(video):
    """The video's grey level turned into a red-blue opposition: the frames' channel mean is
    0.5 everywhere, so a grey-level motion estimate sees nothing at all."""
    g = np.mean(video, axis=-1, keepdims=True)
    return np.concatenate([g, np.full_like(g, 0.5), 1.0 - g], axis=-1).astype(np.float32)


def test_global_velocity_sees_colour_only_motion():
    """Content that changes hue but not grey level moves as visibly as grey content (before
    the channels were summed, these gave (0, 0): decomposing the grating from noise then
    reported 89.7 deg at 2.0 px/frame)."""
    video = _opponent(translating_video(3, -1.5, 0.7))
    assert np.ptp(video.mean(-1)) < 1e-6
    np.testing.assert_allclose(_global_velocity(jnp.asarray(video)), [-1.5, 0.7], atol=0.05)
    v = np.asarray(_global_velocity(jnp.asarray(_opponent(grating_video(**GRATING)))))
    a = np.radians(GRATING["direction_deg"])
    np.testing.assert_allclose(v, [np.cos(a), -np.sin(a)], atol=0.1)


def _changing_static_videos():
    """A static texture (no motion at all) whose frames change over time, by name."""
    t = np.arange(T, dtype=np.float32).reshape(T, 1, 1, 1)
    tex = translating_video(4, 0.0, 0.0) - 0.5  # +-0.45
    return {
        "fade": 0.35 + tex / 9 + 0.02 * t,                 # brightness ramp, low contrast
        "flicker": 0.5 + tex / 9 + 0.05 * (-1.0) ** t,     # brightness alternating
        "counterphase": 0.5 + tex * (-1.0) ** t,           # contrast reversing every frame
        "contrast ramp": 0.5 + tex * (0.2 + 0.05 * t),
        "uniform ramp": np.broadcast_to(0.2 + 0.6 * t / (T - 1), tex.shape),  # no texture
    }


@pytest.mark.parametrize("name", sorted(_changing_static_videos()))
def test_global_velocity_is_zero_when_only_brightness_or_contrast_change(name):
    """Before per-frame normalisation, the match check and the structure check these read
    as motion: counterphase (-4.9, 5.5) px/frame, fade (0.05, -0.03) here and 0.78 px/frame
    after decomposing, uniform frames an arbitrary axis."""
    video = jnp.asarray(_changing_static_videos()[name], jnp.float32)
    np.testing.assert_allclose(_global_velocity(video), [0.0, 0.0], atol=0.01)


def test_global_velocity_of_a_fading_translation():
    t = np.arange(T, dtype=np.float32).reshape(T, 1, 1, 1)
    video = translating_video(3, -1.5, 0.7) * 0.7 + 0.015 * t
    np.testing.assert_allclose(_global_velocity(jnp.asarray(video)), [-1.5, 0.7], atol=0.02)


# ------------------------------------------------------------------ small property tests
# They share one config and K = 2, so decompose compiles once for all of them.

SMALL = stage2.Stage2Config.preset("fast", steps=5)


def _small_videos(k=2):
    return jnp.asarray(np.stack([translating_video(i, 1.0 - i, 0.5, t=4, h=16, w=16)
                                 for i in range(k)]))


def test_vmapped_decompose_equals_per_video():
    videos = _small_videos()
    key = jax.random.key(3)
    batch = stage2.decompose(videos, SMALL, key)
    keys = stage2.kernel_keys(key, videos.shape[0])
    one = jax.jit(stage2.decompose_one, static_argnums=1)
    for i in range(videos.shape[0]):
        single = one(videos[i], SMALL, keys[i])
        for name, a, b in zip(stage2.Decomposition._fields, batch, single):
            if name == "summary":
                for s in a:
                    np.testing.assert_allclose(a[s][i], b[s], rtol=1e-3, atol=1e-3, err_msg=s)
            elif name in ("displacement", "velocity"):
                # Adam moves a parameter whose gradient is ~0 by a full step of noise-given
                # sign, so the batched and single programs' rounding (1e-6 px in the global
                # velocity) may differ there by up to a step: lr_flow x the frame size in px
                # (0.016 px here; measured 0.005 at the top rows)
                step_px = SMALL.lr_flow * videos.shape[2]
                np.testing.assert_allclose(a[i], b, rtol=1e-3, atol=step_px, err_msg=name)
            else:
                np.testing.assert_allclose(a[i], b, rtol=1e-3, atol=1e-3, err_msg=name)


def test_same_key_same_result_and_keys_matter():
    """Bit for bit on every backend (on GPU, kvjax compiles with XLA's deterministic ops:
    without them an H200 gave 1-ulp differences in the texture)."""
    videos = _small_videos()
    a = stage2.decompose(videos, SMALL, jax.random.key(1))
    b = stage2.decompose(videos, SMALL, jax.random.key(1))
    c = stage2.decompose(videos, SMALL, jax.random.key(2))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(a.texture, c.texture)


def test_second_call_compiles_nothing():
    videos = _small_videos()
    stage2.decompose(videos, SMALL, jax.random.key(0))
    before = stage2.compiled_programs()
    stage2.decompose(videos + 0.01, SMALL, jax.random.key(5))
    assert stage2.compiled_programs() == before


def test_kernel_keys_and_chunks_change_nothing():
    """Video i uses fold_in(key, kernels[i]); equal chunks run through one program (the last
    padded) and give what one batch gives."""
    videos = _small_videos(2)
    key = jax.random.key(3)
    named = stage2.decompose(videos[::-1], SMALL, key, kernels=[1, 0])
    batch = stage2.decompose(videos, SMALL, key)
    # Bit for bit on CPU. A GPU program may add in another order at another batch position,
    # deterministic ops or not (an H200: 1-ulp texture differences); the wrong keys move
    # every field by 2e-4 (loss) to 0.11 px (displacement) here.
    same = (np.testing.assert_array_equal if jax.default_backend() == "cpu" else
            functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-5))
    for a, b in zip(jax.tree.leaves(named), jax.tree.leaves(batch)):
        same(a, b[::-1])
    five = jnp.concatenate([videos, videos[::-1], videos[:1]])   # 5 videos, kernels 7..11
    seen = []
    chunked = stage2.decompose(five, dataclasses.replace(SMALL, chunk_size=2), key,
                               kernels=range(7, 12),
                               progress=lambda done, n: seen.append(
                                   (done, n, stage2.compiled_programs())))
    assert [s[:2] for s in seen] == [(1, 3), (2, 3), (3, 3)]
    assert seen[0][2] == seen[-1][2]  # nothing compiled after the first chunk
    whole = stage2.decompose(five, dataclasses.replace(SMALL, chunk_size=5), key,
                             kernels=range(7, 12))
    assert isinstance(chunked.texture, np.ndarray) and chunked.texture.shape[0] == 5
    for a, b in zip(jax.tree.leaves(chunked), jax.tree.leaves(whole)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    with pytest.raises(KvjaxError, match=r"kernels must name each of the 5 videos"):
        stage2.decompose(five, SMALL, key, kernels=[1, 2])


def test_step_and_run_are_pure():
    target = _small_videos()[0] - 0.5
    state = jax.jit(stage2.init, static_argnums=2)(jax.random.key(0), target, SMALL)
    step = jax.jit(stage2.step, static_argnums=2)
    s1, loss1 = step(state, target, SMALL)
    s2, loss2 = step(state, target, SMALL)
    assert float(loss1) == float(loss2) and int(s1.step) == 1
    final, trace = jax.jit(stage2.run, static_argnums=2)(state, target, SMALL)
    assert trace.shape == (SMALL.steps,) and int(final.step) == SMALL.steps
    assert float(trace[0]) == float(loss1)


def test_presets_and_config_errors():
    paper = stage2.Stage2Config.preset("paper")
    assert paper.steps == 2000 and paper.init_std == 0.01 and paper.texture_init == "noise"
    assert (paper.w_recon, paper.w_smooth_d, paper.w_smooth_i, paper.w_static) == (1, 1, 1, 1)
    assert paper.lr == 1e-3 and paper.lr_flow is None and paper.motion_init == "phase"
    fast = stage2.Stage2Config.preset("fast", steps=7)
    assert fast.steps == 7 and fast.steps < paper.steps
    with pytest.raises(KvjaxError, match="valid: paper, fast"):
        stage2.Stage2Config.preset("slow")
    with pytest.raises(KvjaxError, match="unknown Stage2Config field"):
        stage2.Stage2Config.preset("fast", step=3)
    with pytest.raises(KvjaxError, match="flow_param must be one of"):
        stage2.Stage2Config(flow_param="spline")
    with pytest.raises(KvjaxError, match=r"f32\[K, T, H, W, 3\]"):
        stage2.decompose(jnp.zeros((4, 8, 8, 3)), SMALL, jax.random.key(0))
    with pytest.raises(KvjaxError, match="none of them empty"):
        stage2.decompose(jnp.zeros((0, 4, 8, 8, 3)), SMALL, jax.random.key(0))
