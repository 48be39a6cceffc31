"""kvjax.stage1: activation maximisation, vmapped over kernels, chunked, compiled once."""
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kvjax import objectives, stage1, transforms

import tiny_model
from tiny_model import C, SIZE, config, tiny_features
from tiny_model import conv_relu as _conv_relu


@pytest.fixture(scope="module")
def features():
    return tiny_features()


@pytest.fixture(scope="module")
def reference(features):
    """Four kernels in one chunk (pixel param); reused by several tests."""
    return stage1.optimize(features, [0, 1, 2, 3], config(), jax.random.key(7))


def test_a_few_steps_raise_the_objective(reference):
    r = reference
    chex.assert_shape(r.videos, (4, *SIZE, 3))
    chex.assert_shape(r.trace, (4, 12))
    assert bool(jnp.all(r.finite))
    assert bool(jnp.all(r.activation > r.activation_start + 1e-3)), (r.activation_start,
                                                                      r.activation)
    assert bool(jnp.all((r.videos >= 0) & (r.videos <= 1)))


def test_spectral_param_also_raises_the_objective(features):
    r = stage1.optimize(features, [1, 2], config(param="spectral", steps=8), jax.random.key(0))
    assert bool(jnp.all(r.activation > r.activation_start + 1e-3))


def test_vmapped_run_equals_per_kernel_runs(features, reference):
    cfg = config()
    for i, k in enumerate([0, 1, 2, 3]):
        alone = stage1.optimize(features, [k], dataclasses.replace(cfg, chunk_size=1),
                                jax.random.key(7))
        np.testing.assert_allclose(alone.videos[0], reference.videos[i], atol=1e-5)
        np.testing.assert_allclose(alone.trace[0], reference.trace[i], atol=1e-5, rtol=1e-5)
    # ... and equals the pure API (init, then one lax.scan of steps) without vmap or chunks.
    state = stage1.init(jax.random.key(7), 2, cfg)
    state, values = jax.jit(lambda s: stage1.run(s, features, 2, cfg, cfg.steps))(state)
    np.testing.assert_allclose(values, reference.trace[2], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(stage1.render(state, cfg), reference.videos[2], atol=1e-5)


def test_chunks_compile_once_and_results_do_not_depend_on_chunking(reference):
    fn = lambda w, video: _conv_relu(w, video)  # a new static part: nothing compiled yet
    weights = lambda seed: tiny_features(seed).args[0]
    features = jax.tree_util.Partial(fn, weights(0))
    before = stage1.compiled_programs()
    seen = []
    progress = lambda done, total, chunk, n: seen.append((done, total, chunk, n,
                                                          stage1.compiled_programs()))
    # Kernels 3, 0, 2, 1, 0 in chunks of at most 2: three chunks of 2 (one padded).
    r = stage1.optimize(features, [3, 0, 2, 1, 0], config(chunk_size=2), jax.random.key(7),
                        progress=progress)
    after = stage1.compiled_programs()
    assert after - before == 3  # start, segment, finish: each compiled once
    assert [s[:4] for s in seen] == [(d, 12, c, 3) for c in range(3) for d in (4, 8, 12)]
    assert all(s[4] == after for s in seen if s[2] > 0)  # nothing compiled after chunk 0
    order = [3, 0, 2, 1, 0]
    np.testing.assert_allclose(r.videos, reference.videos[jnp.asarray(order)], atol=1e-5)
    np.testing.assert_allclose(r.activation, reference.activation[jnp.asarray(order)],
                               rtol=1e-5, atol=1e-6)
    # Other steps and chunk sizes, and new weight values, reuse the same programs.
    r2 = stage1.optimize(jax.tree_util.Partial(fn, weights(1)), [1, 2, 3],
                         config(chunk_size=2, steps=4),
                         jax.random.key(7))
    assert stage1.compiled_programs() == after
    assert r2.trace.shape == (3, 4)


def test_cpu_runs_up_to_four_unrolled_steps_per_program(features, reference):
    # CPU: the largest count <= 4 dividing the steps, unrolled (no scan, no masked steps).
    assert stage1._plan(1500, 50, "cpu") == (375, 4, True)
    assert stage1._plan(50, 50, "cpu") == (25, 2, True)
    assert stage1._plan(7, 50, "cpu") == (7, 1, True)
    assert stage1._plan(0, 50, "cpu") == (0, 1, True)
    assert stage1._plan(12, 5, "gpu") == (3, 4, False)  # scan segments elsewhere
    # The unrolled form is the scan's computation: 12 steps as 3 x 4 unrolled, for kernel 1.
    cfg = config()
    state = stage1.init(jax.random.key(7), 1, cfg)
    seg = jax.jit(lambda s: stage1.run(s, features, 1, cfg, 4, unroll=True))
    values = []
    for _ in range(3):
        state, v = seg(state)
        values.append(v)
    np.testing.assert_allclose(np.concatenate(values), reference.trace[1], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(stage1.render(state, cfg), reference.videos[1], atol=1e-5)
    same, none = stage1.run(state, features, 1, cfg, 0, unroll=True)
    assert none.shape == (0,) and same is state
    with pytest.raises(ValueError, match="n_active"):
        stage1.run(state, features, 1, cfg, 4, n_active=jnp.int32(2), unroll=True)


def test_weights_are_arguments_not_constants(features):
    arrays, static = stage1.partition((features, objectives.channel()))
    assert len(arrays) == 1 and arrays[0].shape == (2, 3, 3, 3, C)
    _, static2 = stage1.partition((tiny_features(seed=3), objectives.channel()))
    assert static == static2 and hash(static) == hash(static2)


def test_same_seed_same_result_other_seed_other_result(features, reference):
    again = stage1.optimize(features, [0, 1, 2, 3], config(), jax.random.key(7))
    for a, b in zip(again, reference):
        np.testing.assert_array_equal(a, b)
    other = stage1.optimize(features, [0, 1, 2, 3], config(), jax.random.key(8))
    assert not np.allclose(other.videos, reference.videos)


@dataclasses.dataclass(frozen=True)
class NaNAbove(objectives.Objective):
    """The channel objective, but NaN for kernel `bad` once it exceeds `threshold`."""
    bad: int
    threshold: float

    def __call__(self, acts, kernel):
        m = objectives.channel()(acts, kernel)
        return m + jnp.where((kernel == self.bad) & (m > self.threshold), jnp.nan, 0.0)


def test_nan_in_one_kernel_is_reported_and_leaves_the_others_alone(features, reference):
    start, end = reference.trace[1, 0], reference.trace[1, -1]
    threshold = float(start + 0.3 * (end - start))
    r = stage1.optimize(features, [0, 1, 2, 3], config(), jax.random.key(7),
                        objective=NaNAbove(1, threshold))
    np.testing.assert_array_equal(r.finite, [True, False, True, True])
    for i in (0, 2, 3):
        np.testing.assert_allclose(r.videos[i], reference.videos[i], atol=1e-6)
        np.testing.assert_allclose(r.trace[i], reference.trace[i], atol=1e-6)
    trace = np.asarray(r.trace[1])
    first_nan = int(np.argmax(np.isnan(trace)))
    assert 0 < first_nan < 12 and np.isnan(trace[first_nan:]).all()
    np.testing.assert_allclose(trace[:first_nan], reference.trace[1, :first_nan], atol=1e-6)
    assert bool(jnp.all(jnp.isfinite(r.videos[1])))  # the last finite state is kept
    assert float(r.activation_start[1]) < float(r.activation[1])


@jax.custom_vjp
def _nan_gradient_if(x, on):
    return x


_nan_gradient_if.defvjp(lambda x, on: (x, on),
                        lambda on, g: (jnp.where(on, jnp.nan, g), None))


@dataclasses.dataclass(frozen=True)
class NaNGradientAbove(objectives.Objective):
    """The channel objective, finite, but with a NaN gradient once it exceeds `threshold`.
    It reads only the kernel's channel, so the one-channel readout runs (and the kernel
    index it is given is then 0: which kernel breaks is set by the threshold)."""
    threshold: float
    one_channel = True  # not a field: a class attribute, as the built-in objectives'

    def __call__(self, acts, kernel):
        m = objectives.channel()(acts, kernel)
        return _nan_gradient_if(m, m > self.threshold)


def test_nan_gradient_with_the_one_channel_readout_freezes_only_that_kernel(reference):
    # Kernel 3 climbs highest in the reference run: a threshold above every value of the
    # others and below kernel 3's best breaks kernel 3 alone, at its first step above it.
    others, bad = reference.trace[:3].max(), reference.trace[3]
    threshold = float(others + bad.max()) / 2
    first = int(np.argmax(bad > threshold))
    assert others < threshold < bad.max() and first > 0
    readout = tiny_features(readout=True)
    objective = NaNGradientAbove(threshold)
    assert _uses_readout(readout, objective)
    r = stage1.optimize(readout, [0, 1, 2, 3], config(), jax.random.key(7), objective=objective)
    np.testing.assert_array_equal(r.finite, [True, True, True, False])
    for i in (0, 1, 2):
        np.testing.assert_allclose(r.videos[i], reference.videos[i], atol=1e-5)
        np.testing.assert_allclose(r.trace[i], reference.trace[i], atol=1e-5)
    trace = np.asarray(r.trace[3])
    assert np.isnan(trace[first:]).all()
    np.testing.assert_allclose(trace[:first], reference.trace[3, :first], atol=1e-5)
    assert bool(jnp.all(jnp.isfinite(r.videos[3])))  # the last finite state is kept


def test_a_plain_function_and_other_objectives_work():
    w = 0.3 * jax.random.normal(jax.random.key(0), (2, 3, 3, 3, C))
    r = stage1.optimize(lambda v: _conv_relu(w, v), [0], config(steps=5), jax.random.key(0),
                        objective=objectives.neuron() + 0.1 * objectives.channel())
    assert r.trace.shape == (1, 5) and bool(r.finite[0])


def _uses_readout(features, objective, **kw) -> bool:
    """Whether a stage-1 step asks `features` for one channel (traced afresh: no jit cache)."""
    cfg = config(**kw)
    tiny_model.READOUTS.clear()
    state = stage1.init(jax.random.key(0), 1, cfg)
    jax.make_jaxpr(lambda s: stage1.step(s, features, 1, cfg, objective))(state)
    return bool(tiny_model.READOUTS)


def test_one_channel_readout_gives_the_same_runs(reference):
    # Features that can compute one channel alone (built-in models can): stage 1 uses that
    # for objectives that read only the kernel's channel, with the same results as the
    # whole layer; one_channel=False and other objectives take the whole layer.
    readout = tiny_features(readout=True)
    mixed = objectives.neuron() + 0.1 * objectives.channel()
    assert _uses_readout(readout, objectives.channel()) and _uses_readout(readout, mixed)
    assert not _uses_readout(readout, mixed, one_channel=False)
    assert not _uses_readout(readout, objectives.direction(jnp.ones(C)))
    assert not _uses_readout(tiny_features(), objectives.channel())  # cannot: whole layer
    r = stage1.optimize(readout, [0, 1, 2, 3], config(), jax.random.key(7))
    for a, b in zip(r, reference):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    run = lambda **kw: stage1.optimize(readout, [1, 3], config(steps=5, **kw),  # noqa: E731
                                       jax.random.key(0), objective=mixed)
    for a, b in zip(run(), run(one_channel=False)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_user_errors_say_what_is_valid(features):
    with pytest.raises(ValueError, match=r"4 kernels \(0-3\)"):
        stage1.optimize(features, [0, 4], config())
    rows = objectives.direction(jnp.eye(C)[:3])  # one direction per kernel, 3 of them
    with pytest.raises(ValueError, match=r"reads 3 indices .*\(0-2\)"):
        stage1.optimize(features, [3], config(), objective=rows)
    more = objectives.direction(jnp.concatenate([jnp.eye(C), -jnp.eye(C)]))  # 2C rows
    r = stage1.optimize(features, [C + 1], config(steps=2), objective=more)
    assert r.videos.shape[0] == 1 and bool(r.finite[0])
    with pytest.raises(ValueError, match="unknown preset"):
        stage1.Stage1Config.preset("slow")
    with pytest.raises(ValueError, match="unknown Stage1Config field"):
        stage1.Stage1Config.preset("paper", stepz=3)


def test_paper_preset_is_the_reference():
    p = stage1.Stage1Config.preset("paper")
    assert (p.steps, p.lr, p.size, p.param, p.init_sd, p.optimizer) == (
        1500, 0.05, (16, 128, 128), "pixel", 0.01, None)
    assert p.transform == transforms.Affine.paper()
    f = stage1.Stage1Config.preset("fast", steps=10)
    assert f.steps == 10 and f.param == "spectral"
