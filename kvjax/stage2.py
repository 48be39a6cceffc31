"""Stage 2: explain each stage-1 video by one static texture and a per-frame deformation.

    V_t(p) ~ R_t(p) = I(p + D_t(p))          (backward bilinear warp, kvjax.warp)

Losses (METHOD.md, each with its weight in `Stage2Config`):

    recon    = mean_{t,p,c} (V_t - R_t)^2
    smoothD  = mean_t TV(D_t) + mean_{t,p} |v_{t+1} - v_t|
    smoothI  = TV(I)
    static   = mean_{p,c} (V_0 - I)^2

with TV(X) = mean |X(p + e_x) - X(p)| + mean |X(p + e_y) - X(p)| (mean absolute difference of
neighbours) and v_t = -(D_t - D_{t-1}) the content velocity (METHOD.md's sign; the absolute
value does not depend on it). The time term of smoothD is the reference code's difference
along t of its flow parameter, whose running sum is the displacement, so the parameter is
the per-frame step D_t - D_{t-1} = -v_t: constant motion costs nothing, changes of velocity
do. Penalising |D_{t+1} - D_t| instead would charge for motion
itself and pull every speed towards zero.

Units: V is min-max scaled to [-0.5, 0.5] per video (the weights were set for that range);
D is optimised in fractions of the image size (x / W, y / H) so that TV(D) is comparable
with the other terms, and is reported in pixels. Outputs go back to the input's units.

Parameterisation of D (`flow_param`), measured on 64 x 64 x 16 videos (tests/test_stage2.py):
- "velocity" (default): parameters u f32[T, H, W, 2], D_t = sum_{s <= t} u_s (the
  reference's choice). Without a motion initialisation it still learns translations
  (speed errors -0.03 to -0.39 px/frame at 1 px/frame, 300 steps), where "displacement" finds
  almost nothing (-0.30 to -0.86: D_15 = 15 px is far outside a bilinear warp's basin). With
  the phase initialisation both recover translations (speed errors -0.011 vs -0.002), but on
  a rotating texture only "velocity" learns the local motion (mean curl 67% of the truth,
  motion_fraction 0.69 and 0.75, against 5 to 8% and 0.0), because a local correction of u moves every
  later frame together.
- "displacement": parameters are D itself.

Motion initialisation (`motion_init="phase"`): the plain optimisation only sees about one
pixel around the current flow, so it underestimates speeds (measured above) and misses
far-moving periodic content. A global velocity (phase correlation, a Gauss-Newton refinement,
the normal velocity for one-dimensional content: `global_velocity`) sets the starting point
D_t = -v t; the optimisation then corrects the field locally. `motion_init="none"` starts from
the reference's noise. Coarse-to-fine optimisation was not needed on the ground-truth cases
once the motion starts there, so it is not implemented.

Presets (`Stage2Config.preset`):
- "paper": the reference's losses, weights (all 1), N(0, 0.01^2) init of texture and flow,
  2000 Adam steps, V scaled to [-0.5, 0.5], flows as fractions of the image size, the global
  motion initialisation; learning rate 1e-3 (the reference's 0.1 only worked with its broken
  grid, METHOD.md). Measured on the ground-truth cases with lr 1e-3 (3e-3): direction errors
  <= 2.8 deg (5.1), speed errors <= 0.09 px/frame (0.14), static video 0.016 px/frame
  (0.035); the weight-1 TV on I flattens the texture (correlation with the truth 0.83 to
  0.95, motion_fraction 0.0 to 0.29 on moving textures).
- "fast": 100 steps from the first frame (texture) and the global motion (flow), lr 1e-2 for
  the texture and 1e-3 for the flow (1e-2 on the flow, 0.64 px per step at 64 px, jitters a
  static video to 0.095 px/frame of false motion), and smoothI weight 0.1: with weight 1 the
  texture correlation is 0.87 and motion_fraction 0.04 to 0.34 on moving textures, with 0.1
  it is 0.995 and 0.89 to 0.92, while directions and speeds are unchanged. 100 steps give
  the same errors as 300.

Everything from one key: `decompose(videos, config, key, kernels=...)` gives video i the key
fold_in(key, kernels[i]) (`kernel_keys`; kernels default to 0..K-1), so a video's result
depends only on (key, its kernel index, config), not on the other videos or the chunking.

Many videos: as stage 1, `decompose` runs equal chunks of `config.chunk_size` videos (None: as
many as fit in device memory) through one compiled program, each chunk's kernel axis split
over the process's devices (kvjax.devices); results come back to host memory in order.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from kvjax import compiler
from kvjax import devices as devices_lib
from kvjax import motion, presets
from kvjax.errors import KvjaxError
from kvjax.warp import fraction_to_pixels, pixels_to_fraction, warp, warp_frames


@dataclasses.dataclass(frozen=True)
class Stage2Config:
    """Settings of the decomposition. Use `Stage2Config.preset("paper" | "fast", **overrides)`."""

    steps: int = 2000
    lr: float = 1e-3                 # Adam step: texture (scaled video units), flow if no lr_flow
    lr_flow: float | None = None     # Adam step for the flow (fractions of the image); None: lr
    w_recon: float = 1.0
    w_smooth_d: float = 1.0
    w_smooth_i: float = 1.0
    w_static: float = 1.0
    flow_param: str = "velocity"     # "velocity" (accumulated) | "displacement"
    init_std: float = 0.01           # N(0, std^2) init of texture and flow parameters
    texture_init: str = "noise"      # "noise" | "first_frame" (first frame plus the noise)
    motion_init: str = "phase"       # "phase" (global phase correlation) | "none"
    scale_video: bool = True         # min-max scale V to [-0.5, 0.5] before optimising
    chunk_size: int | None = None    # videos per compiled program; None: fit the free memory

    def __post_init__(self):
        choices = {"flow_param": ("velocity", "displacement"),
                   "texture_init": ("noise", "first_frame"),
                   "motion_init": ("phase", "none")}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise KvjaxError(f"Stage2Config.{name} must be one of {valid}; "
                                 f"got {getattr(self, name)!r}")
        if self.steps < 1:
            raise KvjaxError(f"Stage2Config.steps must be >= 1; got {self.steps}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise KvjaxError(f"Stage2Config.chunk_size must be >= 1, or None (fit the free "
                             f"device memory); got {self.chunk_size}")

    @classmethod
    def preset(cls, name: str = "fast", **overrides) -> "Stage2Config":
        """`paper`: the reference's losses, weights, N(0, 0.01^2) init and 2000 Adam steps,
        with a learning rate that suits a correct warp, and one addition: the flow starts at
        the global motion estimate (`motion_init="phase"`; "none" starts from the reference's
        noise alone, which misses far-moving periodic content, METHOD.md). `fast`: 100 steps
        from the first frame and the global motion, lighter TV on the texture. Measurements
        behind both: the module docstring.
        """
        return presets.select(cls, {
            "paper": cls(),
            "fast": cls(steps=100, lr=1e-2, lr_flow=1e-3, w_smooth_i=0.1,
                        texture_init="first_frame", init_std=1e-3),
        }, name, overrides)


class Stage2State(NamedTuple):
    """Optimisation state of one video: params {"texture": f32[H,W,3], "flow": f32[T,H,W,2]}."""

    params: Any
    opt_state: Any
    step: jax.Array


class Decomposition(NamedTuple):
    """Stage-2 result, kernels first (`decompose` returns numpy arrays in host memory; the
    same fields without K from `decompose_one`). Units: the input video's (texture,
    reconstruction) and pixels in image coordinates, y down (displacement, velocity)."""

    texture: np.ndarray         # f32[K, H, W, 3]
    displacement: np.ndarray    # f32[K, T, H, W, 2]  V_t(p) ~ I(p + D_t(p))
    velocity: np.ndarray        # f32[K, T, H, W, 2]  content px/frame, -(D_t - D_{t-1}); v_0 = v_1
    reconstruction: np.ndarray  # f32[K, T, H, W, 3]
    loss_trace: np.ndarray      # f32[K, steps]  total loss before each step
    summary: dict               # direction_deg, speed_px_per_frame, motion_fraction, recon_mse: f32[K]

    @property
    def motion(self) -> np.ndarray:
        """The content velocity `velocity` under the name `kvjax.Result` gives it:
        f32[K, T, H, W, 2] px/frame, image coordinates (y down)."""
        return self.velocity


# ------------------------------------------------------------------- global motion estimate

def _signed_offsets(n: int):
    """FFT index -> signed shift: 0, 1, ..., n/2 - 1, -n/2, ..., -1."""
    return ((jnp.arange(n) + n // 2) % n - n // 2).astype(jnp.float32)


def _cross_power(frames, lag: int):
    """Sum over t and channels of conj(F_t) F_{t+lag} for windowed frames f32[T, H, W, C]."""
    t, h, w, _ = frames.shape
    g = frames - jnp.mean(frames, axis=(1, 2), keepdims=True)
    window = jnp.outer(jnp.hanning(h), jnp.hanning(w)).astype(jnp.float32)
    f = jnp.fft.fft2(g * window[None, :, :, None], axes=(1, 2))
    return jnp.sum(jnp.conj(f[:-lag]) * f[lag:], axis=(0, 3))


def _correlation_peak(cross, centre, sigma, whiten_eps=1e-2):
    """Sub-pixel (x, y) argmax of the phase correlation surface near `centre`, and whether
    the surface shows a match at all.

    The surface is multiplied by a Gaussian prior around `centre` (width `sigma` px): for
    one-dimensional patterns such as gratings the surface is a ridge (aperture problem) and
    the prior picks its point nearest the centre. The match is believable only if the
    surface's highest value outweighs its deepest: frames that reverse contrast (a static
    pattern flickering in counterphase) correlate negatively at shift 0 and nowhere
    positively, and their argmax is noise.
    """
    h, w = cross.shape
    r = cross / (jnp.abs(cross) + whiten_eps * jnp.max(jnp.abs(cross)))
    surf = jnp.real(jnp.fft.ifft2(r))
    matched = jnp.max(surf) > -jnp.min(surf)
    dy = _signed_offsets(h)[:, None]
    dx = _signed_offsets(w)[None, :]
    # distance to the centre on the torus of shifts
    ddx = jnp.mod(dx - centre[0] + w / 2, w) - w / 2
    ddy = jnp.mod(dy - centre[1] + h / 2, h) - h / 2
    weighted = (surf - jnp.min(surf)) * jnp.exp(-(ddx ** 2 + ddy ** 2) / (2 * sigma ** 2))
    idx = jnp.argmax(weighted)
    iy, ix = idx // w, idx % w

    def parabola(left, mid, right):
        denom = left - 2 * mid + right
        return jnp.clip(jnp.where(denom < 0, 0.5 * (left - right) / jnp.where(denom < 0, denom, -1.0),
                                  0.0), -0.5, 0.5)

    sx = parabola(weighted[iy, (ix - 1) % w], weighted[iy, ix], weighted[iy, (ix + 1) % w])
    sy = parabola(weighted[(iy - 1) % h, ix], weighted[iy, ix], weighted[(iy + 1) % h, ix])
    return jnp.stack([dx[0, ix] + sx, dy[iy, 0] + sy]), matched


def _refine_translation(frames, v, iters: int = 6):
    """Damped Gauss-Newton on sum_{t,c} ||g_t(p - v) - g_{t+1}(p)||^2 over pixels whose
    source lies inside the frame (frames f32[T, H, W, C]): sub-pixel global velocity without
    the windowing bias of the phase correlation. The damping leaves directions the data cannot
    see where they were.
    """
    t, h, w, _ = frames.shape
    prev, nxt = frames[:-1], frames[1:]
    x = jnp.arange(w, dtype=jnp.float32)[None, :]
    y = jnp.arange(h, dtype=jnp.float32)[:, None]

    def residual(v, mask):
        flow = jnp.broadcast_to(-v.reshape(1, 1, 2), (h, w, 2))
        shifted = jax.vmap(lambda f: warp(f, flow))(prev)
        return ((shifted - nxt) * mask[None, :, :, None]).reshape(-1)

    def body(v, _):
        mask = ((x - v[0] >= 1.0) & (x - v[0] <= w - 2.0)
                & (y - v[1] >= 1.0) & (y - v[1] <= h - 2.0)).astype(jnp.float32)
        jac = jax.jacfwd(residual)(v, mask)
        jtj = jac.T @ jac
        damp = 1e-3 * jnp.trace(jtj) / 2 + 1e-12
        dv = -jnp.linalg.solve(jtj + damp * jnp.eye(2), jac.T @ residual(v, mask))
        return v + jnp.clip(dv, -1.0, 1.0), None

    return jax.lax.scan(body, v, None, length=iters)[0]


def _observable_projector(frames, aperture: float = 0.2, kmax: float = 0.25):
    """Projector f32[2, 2] onto the velocity directions the frames f32[T, H, W, C] can show.

    Aperture problem: one-dimensional content (gratings, single edges) only reveals the
    velocity across its stripes. The spectral structure tensor sum_k |G(k)|^2 k k^T (summed
    over frames and channels, Hann window, |k| <= kmax cycles/px so that aliased harmonics of sharp patterns stay out) has
    an eigenvalue near 0 along the stripes: directions whose eigenvalue is below `aperture`
    times the largest are dropped, so a grating reports its normal velocity. Measured: 0.005 to
    0.012 for saturated gratings, 0.06 to 0.14 for stage-1 videos of drifting-grating kernels
    (tests/test_end_to_end.py), 0.3 to 0.8 for smooth random textures. A texture more
    anisotropic than 0.2 loses the along-stripe part of its initial velocity (the optimisation
    can still find it when it is within about a pixel per frame).
    """
    t, h, w, _ = frames.shape
    g = frames - jnp.mean(frames, axis=(1, 2), keepdims=True)
    window = jnp.outer(jnp.hanning(h), jnp.hanning(w)).astype(jnp.float32)
    power = jnp.sum(jnp.abs(jnp.fft.fft2(g * window[None, :, :, None], axes=(1, 2))) ** 2,
                    axis=(0, 3))
    ky = jnp.broadcast_to(jnp.fft.fftfreq(h).astype(jnp.float32)[:, None], (h, w))
    kx = jnp.broadcast_to(jnp.fft.fftfreq(w).astype(jnp.float32)[None, :], (h, w))
    power = power * (kx ** 2 + ky ** 2 <= kmax ** 2)
    sxy = jnp.sum(power * kx * ky)
    tensor = jnp.stack([jnp.stack([jnp.sum(power * kx * kx), sxy]),
                        jnp.stack([sxy, jnp.sum(power * ky * ky)])])
    evals, evecs = jnp.linalg.eigh(tensor)
    seen = (evals > aperture * jnp.max(evals)).astype(jnp.float32)
    return (evecs * seen[None, :]) @ evecs.T


def global_velocity(video, refine: bool = True):
    """Global content velocity f32[2] (px/frame, image coords) of one video f32[T, H, W, C].

    Phase correlation of consecutive frames (cross-power spectra summed over the clip, Hann
    windowed) with a Gaussian prior that prefers the smallest shift finds the right basin even
    for periodic content; its estimate is biased towards zero by the window (about 0.1 px at
    1 px/frame), so a few damped Gauss-Newton steps on the frame-to-frame residual refine it;
    for one-dimensional content only the normal velocity is kept (`_observable_projector`).
    Pure JAX, vmappable. Every colour channel takes part (spectra, residuals and structure
    summed over channels), so content that only changes hue, e.g. a red-blue grating whose
    grey level is constant, moves as visibly as a grey one. Changes of brightness or contrast
    are not motion: each frame's channels are brought to mean 0 and the frame to mean square
    1 first. Returns zeros where no translation explains the frames: T == 1, frames without
    spatial structure (their spatial variance below 1e-6 of the clip's), or frames whose
    correlation surface is dominated by contrast reversal (`_correlation_peak`).
    """
    t, h, w, _ = video.shape
    if t < 2:
        return jnp.zeros((2,), jnp.float32)
    clip_var = jnp.mean((video - jnp.mean(video, axis=(0, 1, 2), keepdims=True)) ** 2)
    frames = video - jnp.mean(video, axis=(1, 2), keepdims=True)
    power = jnp.mean(frames ** 2, axis=(1, 2, 3), keepdims=True)
    structured = jnp.mean(power) > 1e-6 * clip_var
    frames = frames * jax.lax.rsqrt(jnp.maximum(power, 1e-30))
    v, matched = _correlation_peak(_cross_power(frames, 1), jnp.zeros(2), sigma=max(h, w) / 4)
    if refine:
        v = _refine_translation(frames, v)
    return jnp.where(structured & matched, _observable_projector(frames) @ v, 0.0)


# ----------------------------------------------------------------------- model and losses

def displacement_px(flow_params, config: Stage2Config):
    """Flow parameters (fractions of the image size) -> D f32[T, H, W, 2] in pixels."""
    d = jnp.cumsum(flow_params, axis=0) if config.flow_param == "velocity" else flow_params
    return fraction_to_pixels(d)


def _tv(x):
    """Mean absolute difference of neighbours along H and W of f32[..., H, W, C]."""
    dy = jnp.mean(jnp.abs(x[..., 1:, :, :] - x[..., :-1, :, :]))
    dx = jnp.mean(jnp.abs(x[..., :, 1:, :] - x[..., :, :-1, :]))
    return dx + dy


def losses(params, target, config: Stage2Config):
    """The four named loss terms (unweighted) for one scaled video target f32[T, H, W, 3]."""
    texture = params["texture"]
    d_px = displacement_px(params["flow"], config)
    recon = warp_frames(texture, d_px)
    d = pixels_to_fraction(d_px)
    smooth_d = jnp.mean(jax.vmap(_tv)(d))
    if d.shape[0] > 2:
        step = d[1:] - d[:-1]
        smooth_d = smooth_d + jnp.mean(jnp.abs(step[1:] - step[:-1]))
    return {
        "recon": jnp.mean((target - recon) ** 2),
        "smooth_d": smooth_d,
        "smooth_i": _tv(texture),
        "static": jnp.mean((target[0] - texture) ** 2),
    }


def total_loss(params, target, config: Stage2Config):
    terms = losses(params, target, config)
    return (config.w_recon * terms["recon"] + config.w_smooth_d * terms["smooth_d"]
            + config.w_smooth_i * terms["smooth_i"] + config.w_static * terms["static"])


def _optimizer(config: Stage2Config):
    lr_flow = config.lr if config.lr_flow is None else config.lr_flow
    return optax.multi_transform({"texture": optax.adam(config.lr), "flow": optax.adam(lr_flow)},
                                 {"texture": "texture", "flow": "flow"})


# --------------------------------------------------------------------- init / step / run

def init(key, target, config: Stage2Config) -> Stage2State:
    """Initial state for one scaled video target f32[T, H, W, 3]."""
    t, h, w, c = target.shape
    k_tex, k_flow = jax.random.split(key)
    texture = config.init_std * jax.random.normal(k_tex, (h, w, c), jnp.float32)
    if config.texture_init == "first_frame":
        texture = texture + target[0]
    flow = config.init_std * jax.random.normal(k_flow, (t, h, w, 2), jnp.float32)
    if config.motion_init == "phase":
        v = global_velocity(target).reshape(1, 1, 1, 2)
        frame = jnp.arange(t, dtype=jnp.float32).reshape(t, 1, 1, 1)
        d0 = jnp.broadcast_to(-v * frame, (t, h, w, 2))
        if config.flow_param == "velocity":
            d0 = jnp.concatenate([d0[:1], d0[1:] - d0[:-1]], axis=0)
        flow = flow + pixels_to_fraction(d0)
    params = {"texture": texture, "flow": flow}
    return Stage2State(params, _optimizer(config).init(params), jnp.zeros((), jnp.int32))


def step(state: Stage2State, target, config: Stage2Config):
    """One Adam step. Pure: (state, target) -> (new state, total loss before the step)."""
    loss, grads = jax.value_and_grad(total_loss)(state.params, target, config)
    updates, opt_state = _optimizer(config).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return Stage2State(params, opt_state, state.step + 1), loss


def run(state: Stage2State, target, config: Stage2Config):
    """`config.steps` steps as one lax.scan: -> (final state, loss trace f32[steps])."""
    return jax.lax.scan(lambda s, _: step(s, target, config), state, None, length=config.steps)


# ---------------------------------------------------------------------------- decompose

def _scale(video, config: Stage2Config):
    if not config.scale_video:
        return video, jnp.float32(0.0), jnp.float32(1.0), 0.0
    lo, hi = jnp.min(video), jnp.max(video)
    span = jnp.maximum(hi - lo, 1e-6)
    return (video - lo) / span - 0.5, lo, span, 0.5


def decompose_one(video, config: Stage2Config, key) -> Decomposition:
    """Decompose one video f32[T, H, W, 3]; fields as `Decomposition` without the K axis."""
    target, lo, span, offset = _scale(video, config)
    state, trace = run(init(key, target, config), target, config)
    d_px = displacement_px(state.params["flow"], config)
    texture = (state.params["texture"] + offset) * span + lo
    recon = warp_frames(texture, d_px)
    velocity = motion.velocity_from_displacement(d_px)
    return Decomposition(texture, d_px, velocity, recon, trace,
                         motion.summarize(video, recon, velocity))


def kernel_keys(key, kernels):
    """The per-video keys `decompose` uses: video i gets jax.random.fold_in(key, kernels[i])
    (kernels: a sequence of indices, or an int K for 0..K-1), so its result depends only on
    (key, its index, config), not on the videos beside it. Key array of shape (K,)."""
    if isinstance(kernels, (int, np.integer)):
        kernels = range(int(kernels))
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(kernels, jnp.int32))


def _program_config(config: Stage2Config) -> Stage2Config:
    """The config without the fields that do not change the compiled program."""
    return dataclasses.replace(config, chunk_size=None)


@compiler.jit(static_argnames=("config", "mesh"))
def _decompose_chunk(videos, key, kernels, config: Stage2Config, mesh=None) -> Decomposition:
    """One chunk: videos f32[k, T, H, W, 3], kernels i32[k] (their key indices)."""
    def local(videos, key, kernels):
        return jax.vmap(decompose_one, in_axes=(0, None, 0))(videos, config,
                                                             kernel_keys(key, kernels))
    specs = (devices_lib.KERNEL_AXIS, devices_lib.REPLICATED, devices_lib.KERNEL_AXIS)
    return devices_lib.over_kernels(local, mesh, specs)(videos, key, kernels)


def compiled_programs() -> int:
    """How many programs stage 2 has compiled so far (for tests and benchmarks): entries of
    its jit cache (see stage1.compiled_programs)."""
    return _decompose_chunk._cache_size()


_MEMORY: dict = {}


def program_memory(video_shape: Sequence[int], config: Stage2Config, chunk: int,
                   devices: Sequence[jax.Device] | None = None) -> int | None:
    """Bytes per device of the decomposition of `chunk` videos of shape (T, H, W, 3) split
    over `devices`, from XLA's memory analysis of the program compiled as `decompose` calls it
    (which then reuses the compilation); None if the backend gives none. Cached."""
    devs = devices_lib.local_devices(devices)
    prog = _program_config(config)
    cache_key = (tuple(video_shape), prog, chunk, devs)
    if cache_key not in _MEMORY:
        videos, ks = devices_lib.abstract(
            (jax.ShapeDtypeStruct((chunk, *video_shape), jnp.float32),
             jax.ShapeDtypeStruct((chunk,), jnp.int32)), devs, devices_lib.KERNEL_AXIS)
        key = jax.eval_shape(lambda: jax.random.key(0))
        compiled = _decompose_chunk.lower(videos, key, ks, prog,
                                          devices_lib.kernel_mesh(devs)).compile()
        _MEMORY[cache_key] = devices_lib.program_bytes(compiled)
    return _MEMORY[cache_key]


def auto_chunk_size(video_shape: Sequence[int], n_videos: int, config: Stage2Config,
                    devices: Sequence[jax.Device] | None = None,
                    free_bytes: int | None = None) -> int:
    """Videos per chunk that fit the devices' free memory (kvjax.devices.auto_chunk), up to
    MAX_PER_DEVICE per device on CPU too: unlike stage 1's (kvjax.devices.max_per_device),
    stage 2's programs are not slower per video when larger there (the default run's 8 videos,
    2-core AMD EPYC, 3 alternating rounds: 6.71 s as one chunk, 7.39 / 7.08 / 7.66 s in chunks
    of 4 / 2 / 1; benchmarks/results/stage1.md, fifteenth session)."""
    devs = devices_lib.local_devices(devices)
    return devices_lib.auto_chunk(
        lambda chunk: program_memory(video_shape, config, chunk, devs), 0, n_videos, devs,
        free_bytes)


def decompose(videos, config: Stage2Config | None = None, key=None, *,
              kernels: Sequence[int] | None = None,
              devices: Sequence[jax.Device] | None = None,
              progress: Callable[[int, int], object] | None = None) -> Decomposition:
    """Texture/motion decomposition of K videos f32[K, T, H, W, 3] (any float range, e.g. the
    stage-1 output in [0, 1]), vmapped over K in equal chunks of one compiled program.

    Video i uses the key fold_in(key, kernels[i]) (`kernel_keys`; kernels default to
    0..K-1), so `decompose_one(videos[i], config, that key)` gives the same result for it
    alone, whatever the chunking. devices: where to run (default: jax.local_devices()); each
    chunk's videos are split over them. progress(chunks_done, n_chunks) after each chunk.
    Returns numpy arrays (host memory) in the order of `videos`.
    """
    config = Stage2Config.preset("fast") if config is None else config
    key = jax.random.key(0) if key is None else key
    videos = np.asarray(videos, np.float32)
    if videos.ndim != 5 or videos.shape[-1] != 3 or 0 in videos.shape:
        raise KvjaxError(f"videos must be f32[K, T, H, W, 3], none of them empty; got shape "
                         f"{videos.shape}")
    k, t, h, w, _ = videos.shape
    kernels = np.arange(k, dtype=np.int32) if kernels is None else np.asarray(kernels, np.int32)
    if kernels.shape != (k,):
        raise KvjaxError(f"kernels must name each of the {k} videos (shape ({k},)); got "
                         f"shape {kernels.shape}")
    devs = devices_lib.local_devices(devices)
    mesh = devices_lib.kernel_mesh(devs)
    chunk_size = config.chunk_size
    if chunk_size is None:
        chunk_size = auto_chunk_size((t, h, w, 3), k, config, devs)
    n_chunks, chunk = devices_lib.chunking(k, chunk_size, len(devs))
    order = np.resize(np.arange(k), n_chunks * chunk)  # pads by repeating from the start
    prog = _program_config(config)
    outs = []
    for c in range(n_chunks):
        idx = order[c * chunk:(c + 1) * chunk]
        part = devices_lib.place((videos[idx], kernels[idx]), devs, devices_lib.KERNEL_AXIS)
        outs.append(devices_lib.to_host(_decompose_chunk(part[0], key, part[1], prog, mesh)))
        if progress is not None:
            progress(c + 1, n_chunks)
    out = jax.tree_util.tree_map(lambda *parts: np.concatenate(parts)[:k], *outs)
    chex.assert_shape(out.texture, (k, h, w, 3))
    chex.assert_shape([out.displacement, out.velocity], (k, t, h, w, 2))
    chex.assert_shape(out.reconstruction, (k, t, h, w, 3))
    return out
