"""kvjax.ops against XLA's own lax.conv_general_dilated / lax.reduce_window (float32).

Every kernel size, stride and padding the built-in models use, at small spatial sizes:
values and gradients w.r.t. input and weights, plus jit, vmap over a leading kernel axis,
and a second derivative.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxprs import equations
from kvjax import ops

# (name, x shape N,T,H,W,Cin, kernel kt,kh,kw, Cout, strides, padding)
CONV_CASES = [
    ("i3d_stem_7x7x7_s2", (1, 9, 13, 12, 3), (7, 7, 7), 8, (2, 2, 2), "SAME"),
    ("i3d_1x1x1", (2, 4, 5, 6, 7), (1, 1, 1), 5, (1, 1, 1), "SAME"),
    ("i3d_3x3x3", (1, 5, 7, 6, 6), (3, 3, 3), 9, (1, 1, 1), "SAME"),
    ("valid_3x3x3", (1, 5, 7, 6, 4), (3, 3, 3), 3, (1, 1, 1), "VALID"),
    ("c3d_3x3x3_pad1", (1, 4, 6, 7, 3), (3, 3, 3), 6, (1, 1, 1), ((1, 1), (1, 1), (1, 1))),
    ("r3d_stem_3x7x7_s122", (1, 4, 14, 13, 3), (3, 7, 7), 6, (1, 2, 2), ((1, 1), (3, 3), (3, 3))),
    ("r3d_3x3x3_s2_pad1", (1, 5, 8, 7, 4), (3, 3, 3), 6, (2, 2, 2), ((1, 1), (1, 1), (1, 1))),
    ("r3d_shortcut_1x1x1_s2", (1, 5, 8, 7, 4), (1, 1, 1), 6, (2, 2, 2), ((0, 0), (0, 0), (0, 0))),
    ("r21d_stem_1x7x7_s122", (1, 3, 12, 11, 3), (1, 7, 7), 5, (1, 2, 2), ((0, 0), (3, 3), (3, 3))),
    ("r21d_3x1x1", (1, 5, 4, 4, 5), (3, 1, 1), 6, (1, 1, 1), ((1, 1), (0, 0), (0, 0))),
    ("r21d_3x1x1_s2", (1, 6, 4, 4, 5), (3, 1, 1), 6, (2, 1, 1), ((1, 1), (0, 0), (0, 0))),
    ("r21d_1x3x3", (1, 3, 6, 7, 4), (1, 3, 3), 5, (1, 1, 1), ((0, 0), (1, 1), (1, 1))),
    ("r21d_1x3x3_s122", (1, 3, 8, 7, 4), (1, 3, 3), 5, (1, 2, 2), ((0, 0), (1, 1), (1, 1))),
]


def _ref_conv(x, w, strides, padding):
    """XLA's 3D convolution; lax resolves "SAME" itself (independently of kvjax)."""
    return lax.conv_general_dilated(x, w, strides, padding,
                                    dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))


def _value_and_grads(conv, x, w, ct):
    """conv(x, w) and d<conv(x, w), ct>/d(x, w), jitted."""
    def f(x, w):
        y = conv(x, w)
        return jnp.sum(y * ct), y
    (_, y), g = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(x, w)
    return y, g


def _close(a, b, rtol=2e-5):
    """|a - b| small relative to the scale of the reference b."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = max(np.abs(b).max(), 1e-6)
    np.testing.assert_allclose(a, b, rtol=0, atol=rtol * scale)


def _normal(shape, seed):
    """Random f32 from numpy: eager jax.random would compile a program per shape."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32))


def _inputs(x_shape, kernel, cout, seed=0):
    return _normal(x_shape, seed), _normal((*kernel, x_shape[-1], cout), seed + 100)


def _check_conv(case, impls):
    _, x_shape, kernel, cout, strides, padding = case
    x, w = _inputs(x_shape, kernel, cout)
    ct = _normal(jax.eval_shape(lambda x, w: _ref_conv(x, w, strides, padding), x, w).shape, 1)
    y_ref, (gx_ref, gw_ref) = _value_and_grads(
        lambda x, w: _ref_conv(x, w, strides, padding), x, w, ct)
    for impl in impls:
        y, (gx, gw) = _value_and_grads(
            lambda x, w: ops.conv3d(x, w, strides, padding, impl=impl), x, w, ct)
        _close(y, y_ref)
        _close(gx, gx_ref)
        _close(gw, gw_ref)


@pytest.mark.parametrize("case", CONV_CASES, ids=[c[0] for c in CONV_CASES])
def test_conv3d_matches_native(case):
    """The CPU choice (what the models run) for every shape the built-in models use."""
    _check_conv(case, ["cpu"])


@pytest.mark.parametrize("case", [CONV_CASES[6], CONV_CASES[0], CONV_CASES[12]],
                         ids=lambda c: c[0])
def test_every_strategy_matches_native(case):
    """Each formulation, whether or not the CPU rule picks it now, on strided/asymmetric cases."""
    kernel = case[2]
    impls = ["taps2d", "fold2d", "s2d", "s2d3d"] + (["im2col"] if np.prod(kernel) <= 27 else [])
    _check_conv(case, impls + (["dot"] if kernel == (1, 1, 1) else []))


def test_dot_strategy_matches_native():
    _check_conv(CONV_CASES[7], ["dot", "taps2d", "fold2d", "s2d", "im2col"])


def test_same_padding_is_tensorflow_rule():
    # I3D stem: 224 -> 112 with k=7, s=2 needs 5 cells: 2 before, 3 after (TF puts more after).
    assert ops.resolve_padding((32, 224, 224), (7, 7, 7), (2, 2, 2), "SAME") == ((2, 3),) * 3
    assert ops.resolve_padding((16, 56, 56), (3, 3, 3), (1, 1, 1), "SAME") == ((1, 1),) * 3
    assert ops.resolve_padding((8, 9, 10), (3, 3, 3), (2, 2, 2), "VALID") == ((0, 0),) * 3


def test_asymmetric_same_differs_from_symmetric():
    # The comparison can fail: the stem under SAME is not the stem under symmetric padding.
    x, w = _inputs((1, 8, 12, 12, 3), (7, 7, 7), 4)
    same, sym = jax.jit(lambda x, w: (ops.conv3d(x, w, (2, 2, 2), "SAME"),
                                      ops.conv3d(x, w, (2, 2, 2), ((3, 3),) * 3)))(x, w)
    assert same.shape == sym.shape
    assert np.abs(np.asarray(same - sym)).max() > 1e-2 * np.abs(np.asarray(same)).max()


def _conv_ranks(jaxpr) -> list[int]:
    """The operand rank of every conv_general_dilated in a jaxpr and its sub-jaxprs."""
    return [e.invars[0].aval.ndim for e in equations(jaxpr)
            if e.primitive.name == "conv_general_dilated"]


@pytest.mark.parametrize("kernel,strides", [((3, 3, 3), (1, 1, 1)), ((7, 7, 7), (2, 2, 2)),
                                            ((3, 1, 1), (1, 1, 1))])
def test_cpu_default_avoids_xla_3d_conv(kernel, strides):
    x, w = _inputs((1, 8, 12, 12, 3), kernel, 4)
    loss = lambda impl: lambda x: jnp.sum(ops.conv3d(x, w, strides, "SAME", impl=impl))  # noqa: E731
    native = _conv_ranks(jax.make_jaxpr(jax.grad(loss("native")))(x).jaxpr)
    assert native and set(native) == {5}  # the check sees XLA's 3D conv where there is one
    ranks = _conv_ranks(jax.make_jaxpr(jax.grad(loss("cpu")))(x).jaxpr)
    assert ranks and set(ranks) == {4}  # forward and input gradient: 2D convolutions only
    if jax.default_backend() == "cpu":
        assert str(jax.make_jaxpr(lambda x: ops.conv3d(x, w))(x)) == str(
            jax.make_jaxpr(lambda x: ops.conv3d(x, w, impl="cpu"))(x))


def test_s2d_leaves_out_the_kernels_temporal_padding():
    # The stem's 7 temporal taps at stride 2 become 4 s2d taps; the 4th one's second time
    # phase is padding (zero weights), so the fold has 3 * 24 + 12 = 84 input channels, not
    # 96 (the values are checked against XLA's conv above).
    x, w = _inputs((1, 9, 13, 12, 3), (7, 7, 7), 8)
    jaxpr = jax.make_jaxpr(lambda x, w: ops.conv3d(x, w, (2, 2, 2), "SAME", impl="s2d"))(x, w)
    convs = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
    assert [tuple(e.invars[1].aval.shape) for e in convs] == [(4, 4, 84, 8)]


def test_vmap_of_input_gradient_over_kernel_axis():
    # Stage 1: K videos, each pushed towards its own channel; vmap(grad) over K.
    k = 3
    x, w = _inputs((k, 1, 5, 9, 8, 3), (3, 3, 3), 4)

    def objective(conv, video, channel):
        return jnp.mean(conv(video, w, (1, 2, 2), "SAME")[..., channel])

    channels = jnp.arange(k)
    ours = jax.jit(jax.vmap(jax.grad(lambda v, c: objective(ops.conv3d, v, c))))(x, channels)
    ref = jnp.stack([jax.jit(jax.grad(lambda v: objective(_ref_conv, v, i)))(x[i])
                     for i in range(k)])
    _close(ours, ref)


def test_vmap_over_weights_and_inputs():
    x, w = _inputs((2, 1, 4, 6, 6, 3), (3, 3, 3), 4)
    w = jnp.stack([w, -2.0 * w])
    ours = jax.jit(jax.vmap(lambda x, w: ops.conv3d(x, w, (1, 1, 1), "SAME")))(x, w)
    ref = jax.jit(lambda x, w: jnp.stack([_ref_conv(x[i], w[i], (1, 1, 1), "SAME")
                                          for i in range(2)]))(x, w)
    _close(ours, ref)


def test_second_derivative():
    # Forward-over-reverse (Hessian-vector product) through the CPU formulation.
    x, w = _inputs((1, 4, 6, 6, 2), (3, 3, 3), 3)
    v = _normal(x.shape, 3)

    def hvp(conv):
        f = lambda x: jnp.sum(jnp.tanh(conv(x, w, (1, 1, 1), "SAME")))  # noqa: E731
        return jax.jit(lambda x, v: jax.jvp(jax.grad(f), (x,), (v,))[1])(x, v)
    _close(hvp(ops.conv3d), hvp(_ref_conv), rtol=1e-4)


def test_conv3d_rejects_bad_input():
    x, w = _inputs((1, 4, 6, 6, 2), (3, 3, 3), 3)
    with pytest.raises(ValueError, match="Cin"):
        ops.conv3d(x, w[..., :1, :])
    with pytest.raises(ValueError, match="impl"):
        ops.conv3d(x, w, impl="nope")
    with pytest.raises(ValueError, match="padding"):
        ops.conv3d(x, w, padding="FULL")


# (name, x shape, window, strides, padding)
MAX_POOL_CASES = [
    ("i3d_1x3x3_s122", (1, 3, 11, 12, 4), (1, 3, 3), (1, 2, 2), "SAME"),
    ("i3d_3x3x3_s1", (1, 4, 7, 6, 4), (3, 3, 3), (1, 1, 1), "SAME"),
    ("i3d_3x3x3_s2", (1, 5, 7, 8, 4), (3, 3, 3), (2, 2, 2), "SAME"),
    ("i3d_2x2x2_s2", (1, 5, 7, 6, 4), (2, 2, 2), (2, 2, 2), "SAME"),
    ("c3d_1x2x2", (1, 4, 8, 6, 4), (1, 2, 2), (1, 2, 2), "VALID"),
    ("c3d_2x2x2", (1, 4, 8, 6, 4), (2, 2, 2), (2, 2, 2), "VALID"),
    ("c3d_pool5_pad011", (1, 4, 5, 5, 4), (2, 2, 2), (2, 2, 2), ((0, 0), (1, 1), (1, 1))),
]


def _ref_pool(x, init, op, window, strides, padding):
    pad = padding if isinstance(padding, str) else ((0, 0), *padding, (0, 0))
    return lax.reduce_window(x, init, op, (1, *window, 1), (1, *strides, 1), pad)


def _pool_value_and_grad(pool, x, ct):
    def f(x):
        y = pool(x)
        return jnp.sum(y * ct), y
    (_, y), g = jax.jit(jax.value_and_grad(f, has_aux=True))(x)
    return y, g


@pytest.mark.parametrize("case", MAX_POOL_CASES, ids=[c[0] for c in MAX_POOL_CASES])
def test_max_pool_matches_reduce_window(case):
    # Random normal inputs: ties have probability ~0, so the argmax (and gradient) is unique.
    _, shape, window, strides, padding = case
    x = _normal(shape, 0)
    ref_fn = lambda x: _ref_pool(x, -jnp.inf, lax.max, window, strides, padding)  # noqa: E731
    ct = _normal(jax.eval_shape(ref_fn, x).shape, 1)
    y_ref, g_ref = _pool_value_and_grad(ref_fn, x, ct)
    for impl in ("cpu", "separable", "separable_vjp", "native"):
        y, g = _pool_value_and_grad(
            lambda x: ops.max_pool3d(x, window, strides, padding, impl=impl), x, ct)
        _close(y, y_ref, rtol=0)
        _close(g, g_ref, rtol=1e-6)  # gradient sums may round in another order


def test_max_pool_with_a_hand_written_gradient_on_other_windows_strides_and_pads():
    # The hand-written backward routes each stride phase's taps by hand: windows larger,
    # smaller and equal to the stride (a phase with no tap, one with two), uneven pads, and
    # a window of 270 cells (more codes than 8 bits hold: int16).
    rng = np.random.default_rng(3)
    for window, strides, pads in [((1, 1, 3), (1, 2, 3), ((0, 0), (0, 0), (2, 0))),
                                  ((2, 4, 1), (3, 3, 2), ((1, 0), (0, 2), (0, 0))),
                                  ((4, 2, 3), (3, 1, 2), ((2, 1), (1, 1), (0, 2))),
                                  ((3, 5, 2), (2, 4, 1), ((0, 0), (2, 2), (1, 0))),
                                  ((3, 9, 10), (2, 1, 3), ((1, 0), (0, 1), (2, 0)))]:
        x = jnp.asarray(rng.normal(size=(2, 7, 9, 8, 3)), jnp.float32)
        ref_fn = lambda x: _ref_pool(x, -jnp.inf, lax.max, window, strides, pads)  # noqa: E731
        ct = jnp.asarray(rng.normal(size=jax.eval_shape(ref_fn, x).shape), jnp.float32)
        y_ref, g_ref = _pool_value_and_grad(ref_fn, x, ct)
        assert np.isfinite(y_ref).all()  # no window wholly in the padding: _close stays strict
        y, g = _pool_value_and_grad(
            lambda x: ops.max_pool3d(x, window, strides, pads, impl="separable_vjp"), x, ct)
        _close(y, y_ref, rtol=0)
        _close(g, g_ref, rtol=1e-6)


def test_max_pool_hand_written_gradient_breaks_ties_as_the_separable_chain():
    # Inputs of three values (after ReLU most cells tie at 0; partial ties everywhere): the
    # hand-written gradient sends each window's gradient to the very cell that autodiff of
    # the separable select chain picks (along T, then H, then W, the first on a tie), for
    # overlapping and strided windows, with padding; sums of the same terms, so equal.
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.integers(0, 3, size=(2, 6, 7, 8, 3)), jnp.float32)
    for window, strides, padding in [((3, 3, 3), (1, 1, 1), "SAME"),
                                     ((1, 3, 3), (1, 2, 2), "SAME"),
                                     ((3, 3, 3), (2, 2, 2), "SAME"),
                                     ((2, 3, 2), (1, 2, 1), "VALID")]:
        ct = jnp.asarray(rng.normal(size=jax.eval_shape(
            lambda x: ops.max_pool3d(x, window, strides, padding), x).shape), jnp.float32)
        y_ref, g_ref = _pool_value_and_grad(
            lambda x: ops.max_pool3d(x, window, strides, padding, impl="separable"), x, ct)
        y, g = _pool_value_and_grad(
            lambda x: ops.max_pool3d(x, window, strides, padding, impl="separable_vjp"), x, ct)
        np.testing.assert_array_equal(y, y_ref)
        _close(g, g_ref, rtol=1e-6)
        # and the gradient is not spread over tied cells: as many cells get some as the chain's
        assert int((np.asarray(g) != 0).sum()) == int((np.asarray(g_ref) != 0).sum())


def test_max_pool_padding_never_wins():
    x = -10.0 - jnp.abs(_normal((1, 3, 5, 5, 2), 0))  # all below the pad 0
    y = jax.jit(lambda x: ops.max_pool3d(x, (3, 3, 3), (2, 2, 2), "SAME"))(x)
    assert float(y.max()) < -10.0


@pytest.mark.parametrize("impl", ["separable", "separable_vjp", "native"])
def test_max_pool_ties_give_the_gradient_to_one_cell_and_nan_propagates(impl):
    # Ties (ReLU zeros before every I3D pool are common): in each 2x2x2 window of a constant
    # input, the window's whole gradient goes to one cell (for the separable form the first,
    # corner (0, 0, 0)), none is split or lost.
    x = jnp.zeros((1, 4, 4, 6, 3))
    pool = lambda x: ops.max_pool3d(x, (2, 2, 2), (2, 2, 2), "VALID", impl=impl)  # noqa: E731
    ct = 1.0 + jnp.abs(_normal((1, 2, 2, 3, 3), 1))
    _, g = _pool_value_and_grad(pool, x, ct)
    per_window = np.asarray(g).reshape(1, 2, 2, 2, 2, 3, 2, 3).transpose(0, 1, 3, 5, 7, 2, 4, 6)
    per_window = per_window.reshape(1, 2, 2, 3, 3, 8)
    assert np.all((per_window != 0).sum(-1) == 1)
    np.testing.assert_array_equal(per_window.sum(-1), np.asarray(ct))
    if impl.startswith("separable"):
        np.testing.assert_array_equal(per_window[..., 0], np.asarray(ct))
    # A NaN makes exactly the windows that hold it NaN (3x3x3 stride 1: overlapping windows),
    # as XLA's reduce_window max does, and no others.
    xn = _normal((1, 4, 5, 5, 2), 0).at[0, 1, 2, 3, 1].set(jnp.nan)
    y = jax.jit(lambda x: ops.max_pool3d(x, (3, 3, 3), (1, 1, 1), "SAME", impl=impl))(xn)
    y_ref = _ref_pool(xn, -jnp.inf, lax.max, (3, 3, 3), (1, 1, 1), "SAME")
    np.testing.assert_array_equal(np.isnan(y), np.isnan(y_ref))
    assert int(np.isnan(y).sum()) == 3 * 3 * 3


@pytest.mark.parametrize("window,strides,shape", [((2, 7, 7), (1, 1, 1), (2, 4, 7, 7, 5)),
                                                  ((2, 2, 2), (2, 2, 2), (1, 4, 6, 6, 3))])
def test_avg_pool_matches_reduce_window(window, strides, shape):
    x = _normal(shape, 0)
    n = float(np.prod(window))
    ref_fn = lambda x: _ref_pool(x, 0.0, lax.add, window, strides, "VALID") / n  # noqa: E731
    ct = _normal(jax.eval_shape(ref_fn, x).shape, 1)
    y_ref, g_ref = _pool_value_and_grad(ref_fn, x, ct)
    for impl in ("cpu", "separable", "native"):
        y, g = _pool_value_and_grad(
            lambda x: ops.avg_pool3d(x, window, strides, "VALID", impl=impl), x, ct)
        _close(y, y_ref)
        _close(g, g_ref)


@pytest.mark.parametrize("impl", [None, "separable_vjp"])
def test_max_pool_vmap_grad(impl):
    x = _normal((3, 1, 4, 7, 7, 2), 0)
    f = lambda pool: lambda v: jnp.sum(pool(v) ** 2)  # noqa: E731
    ours = jax.jit(jax.vmap(jax.grad(f(
        lambda v: ops.max_pool3d(v, (3, 3, 3), (2, 2, 2), impl=impl)))))(x)
    ref = jax.jit(jax.vmap(jax.grad(f(lambda v: _ref_pool(v, -jnp.inf, lax.max, (3, 3, 3),
                                                  (2, 2, 2), "SAME")))))(x)
    _close(ours, ref, rtol=1e-6)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU forms")
def test_reverse_mode_only_switches_cpu_max_pools():
    # Outside the context the CPU max pool is plain autodiff: forward mode works and agrees
    # with reverse mode. Inside, it is the hand-written reverse-only form: the same gradient,
    # and jax.jvp refuses it; average pools are unaffected.
    x = _normal((1, 4, 9, 8, 3), 0)
    v = _normal(x.shape, 1)
    pool = lambda x: ops.max_pool3d(x, (3, 3, 3), (2, 2, 2))  # noqa: E731
    loss = lambda x: jnp.sum(jnp.sin(pool(x)))  # noqa: E731
    grad_plain = jax.grad(loss)(x)
    tangent = jax.jvp(loss, (x,), (v,))[1]
    np.testing.assert_allclose(tangent, jnp.vdot(grad_plain, v), rtol=1e-5)
    with ops.reverse_mode_only():
        grad_vjp = jax.grad(loss)(x)
        with pytest.raises(TypeError, match="custom_vjp"):
            jax.jvp(loss, (x,), (v,))
        jax.jvp(lambda x: ops.avg_pool3d(x, (2, 2, 2), (2, 2, 2)).sum(), (x,), (v,))
    _close(grad_vjp, grad_plain, rtol=1e-6)
    jax.jvp(loss, (x,), (v,))  # the context is left: forward mode again
    # A function jitted and traced inside is traced apart from the same jitted function
    # outside (JAX's jit cache keys on the context's XLA metadata), both ways round: forward
    # mode works outside after a trace inside, and inside it is the reverse-only form again.
    jitted = jax.jit(lambda x: jnp.sum(jnp.sin(pool(x))))
    with ops.reverse_mode_only():
        _close(jax.grad(jitted)(x), grad_plain, rtol=1e-6)
    np.testing.assert_allclose(jax.jvp(jitted, (x,), (v,))[1], tangent, rtol=1e-5)
    with ops.reverse_mode_only():
        with pytest.raises(TypeError, match="custom_vjp"):
            jax.jvp(jitted, (x,), (v,))


# ------------------------------------------------------------------- conv3d_channel

@pytest.mark.parametrize("case", [CONV_CASES[0], CONV_CASES[2], CONV_CASES[4]],
                         ids=lambda c: c[0])
def test_conv3d_channel_is_the_slice_of_conv3d(case):
    # One kernel alone, and K kernels vmapped over (video, channel), fewer and more kernels
    # than output channels (the batched rule's two forms); values and input gradients.
    _, x_shape, kernel, cout, strides, padding = case
    for n_videos in (1, 3, cout + 2):
        x, w = _inputs((n_videos, *x_shape), kernel, cout)
        ks = jnp.asarray(np.random.default_rng(n_videos).integers(0, cout, n_videos))

        def loss(conv):
            return lambda x, k: jnp.sum(jnp.tanh(conv(x, k)))  # a non-linear use of the output
        ours = lambda x, k: ops.conv3d_channel(x, w, k, strides, padding)  # noqa: E731
        ref = lambda x, k: _ref_conv(x, w, strides, padding)[..., k][..., None]  # noqa: E731
        y = jax.jit(jax.vmap(ours))(x, ks)
        _close(y, jnp.stack([ref(x[i], ks[i]) for i in range(n_videos)]))
        g = jax.jit(jax.vmap(jax.grad(loss(ours))))(x, ks)
        _close(g, jnp.stack([jax.grad(loss(ref))(x[i], ks[i]) for i in range(n_videos)]))
    # Unbatched, and the weight gradient (stage 1 never uses it, but it must be right).
    lw = lambda conv: lambda w: jnp.sum(jnp.tanh(conv(x[0], w)))  # noqa: E731
    k = int(ks[0])
    _close(jax.jit(jax.grad(lw(lambda x, w: ops.conv3d_channel(x, w, k, strides, padding))))(w),
           jax.grad(lw(lambda x, w: _ref_conv(x, w, strides, padding)[..., k:k + 1]))(w))


def test_conv3d_channel_grouped_form_equals_the_diagonal_form(monkeypatch):
    # The batched readout as one grouped convolution (ops.CHANNEL_BATCH_FORM = "grouped", for
    # GPUs: benchmarks/gpu_profile.py) gives the values and input gradients of the default
    # diagonal form, strided and not, with fewer and more videos than channels.
    for case in (CONV_CASES[0], CONV_CASES[2]):
        _, x_shape, kernel, cout, strides, padding = case
        x, w = _inputs((cout + 1, *x_shape), kernel, cout)
        ks = jnp.asarray(np.random.default_rng(5).integers(0, cout, cout + 1))
        for n in (2, cout + 1):
            def run():
                f = lambda x, k: ops.conv3d_channel(x, w, k, strides, padding)  # noqa: E731
                loss = lambda x, k: jnp.sum(jnp.tanh(f(x, k)))  # noqa: E731
                return (jax.jit(jax.vmap(f))(x[:n], ks[:n]),
                        jax.jit(jax.vmap(jax.grad(loss)))(x[:n], ks[:n]))
            diagonal = run()
            monkeypatch.setattr(ops, "CHANNEL_BATCH_FORM", "grouped")
            grouped = run()
            monkeypatch.setattr(ops, "CHANNEL_BATCH_FORM", "diagonal")
            _close(grouped[0], diagonal[0])
            _close(grouped[1], diagonal[1])


def test_conv3d_channel_other_batchings():
    # Shared channel over a batch of videos; per-example weights; a channel batch alone.
    x, w = _inputs((3, 1, 4, 6, 6, 3), (3, 3, 3), 5)
    ref = lambda x, w, k: _ref_conv(x, w, (1, 1, 1), "SAME")[..., k:k + 1]  # noqa: E731
    f = lambda x, w, k: ops.conv3d_channel(x, w, k)  # noqa: E731
    _close(jax.vmap(f, (0, None, None))(x, w, 2), jax.vmap(ref, (0, None, None))(x, w, 2))
    ws = jnp.stack([w, -w, 2 * w])
    ks = jnp.asarray([4, 0, 2])
    _close(jax.vmap(f)(x, ws, ks), jnp.stack([ref(x[i], ws[i], int(ks[i])) for i in range(3)]))
    _close(jax.vmap(f, (None, None, 0))(x[0], w, ks),
           jnp.stack([ref(x[0], w, int(k)) for k in ks]))


def test_conv3d_channel_hessian_and_bad_shapes():
    """Forward over reverse (nothing batched in the custom_vmap rule) gives conv3d's hessian;
    pool and conv shapes that do not name (T, H, W) or leave nothing are refused."""
    x, w = _inputs((1, 3, 4, 4, 2), (3, 3, 3), 3)
    h = jax.hessian(lambda x: jnp.sum(jnp.sin(ops.conv3d_channel(x, w, 1))))(x)
    want = jax.hessian(lambda x: jnp.sum(jnp.sin(_ref_conv(x, w, (1, 1, 1), "SAME")[..., 1])))(x)
    _close(h, want)
    with pytest.raises(ValueError, match="three each"):
        ops.max_pool3d(x, (2, 2), (2, 2), "VALID")
    with pytest.raises(ValueError, match="output would be empty"):
        ops.conv3d(x, jnp.zeros((5, 3, 3, 2, 4)), padding="VALID")
    with pytest.raises(ValueError, match="three"):
        ops.conv3d(x, w, (1, 1))


@pytest.mark.cpu_backend  # XLA's GPU cost analysis leaves out cuDNN's convolutions
def test_conv3d_channel_vmapped_computes_k_channels_not_all():
    # The point of conv3d_channel: K videos x K selected kernels, not K x Cout (nor a
    # grouped convolution). XLA's FLOP count of the compiled forward + input gradient.
    x, w = _inputs((2, 1, 4, 10, 10, 8), (3, 3, 3), 32)
    ks = jnp.asarray([3, 17])

    def compiled(objective):
        """(XLA's FLOP count, number of grouped convolutions) of vmap(grad(objective))."""
        program = jax.jit(jax.vmap(jax.grad(objective))).lower(x, ks).compile()
        cost = program.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return cost["flops"], program.as_text().count("feature_group_count")
    sliced, grouped = compiled(lambda x, k: jnp.sum(ops.conv3d_channel(x, w, k) ** 2))
    full, _ = compiled(lambda x, k: jnp.sum(ops.conv3d(x, w)[..., k] ** 2))
    assert sliced < 0.2 * full, (sliced, full)  # 2 of 32 channels: ~1/16
    assert grouped == 0
    # Positive control: slicing the weights by hand gives the grouped convolutions.
    _, naive = compiled(lambda x, k: jnp.sum(ops.conv3d(x, lax.dynamic_slice_in_dim(w, k, 1, -1))
                                             ** 2))
    assert naive > 0


def test_conv3d_channel_index_reads_like_indexing():
    # Negative from the end; a concrete index out of range is refused; a traced one is
    # clamped, batched or not (the diagonal form must not turn it into NaN); floats refused.
    x, w = _inputs((3, 1, 3, 5, 5, 2), (1, 3, 3), 4)
    ref = lambda x, k: _ref_conv(x, w, (1, 1, 1), "SAME")[..., k:k + 1]  # noqa: E731
    _close(ops.conv3d_channel(x[0], w, -1), ref(x[0], 3))
    for bad in (4, -5):
        with pytest.raises(ValueError, match=r"4 channels \(0-3"):
            ops.conv3d_channel(x[0], w, bad)
    with pytest.raises(TypeError, match="integer"):
        ops.conv3d_channel(x[0], w, 1.0)
    f = jax.jit(jax.vmap(lambda x, k: ops.conv3d_channel(x, w, k)))
    _close(f(x, jnp.asarray([7, -1, -9])), jnp.stack([ref(x[0], 3), ref(x[1], 3), ref(x[2], 0)]))
    _close(jax.jit(lambda x, k: ops.conv3d_channel(x, w, k))(x[0], 9), ref(x[0], 3))


def test_conv3d_channel_nested_vmap_and_a_shared_video():
    # vmap over videos and, inside, over channels; and one video for a batch of channels
    # (value and input gradient).
    x, w = _inputs((2, 1, 3, 5, 5, 2), (2, 3, 3), 5)
    ref = lambda x, k: _ref_conv(x, w, (1, 1, 1), "SAME")[..., k:k + 1]  # noqa: E731
    ks = jnp.asarray([[0, 4, 2], [1, 1, 3]])
    inner = jax.vmap(lambda x, k: ops.conv3d_channel(x, w, k), (None, 0))
    got = jax.jit(jax.vmap(inner))(x, ks)
    _close(got, jnp.stack([jnp.stack([ref(x[i], int(k)) for k in ks[i]]) for i in range(2)]))
    loss = lambda conv: lambda x, k: jnp.sum(jnp.sin(conv(x, k)))  # noqa: E731
    g = jax.jit(jax.vmap(jax.grad(loss(lambda x, k: ops.conv3d_channel(x, w, k))),
                         (None, 0)))(x[0], ks[0])
    _close(g, jnp.stack([jax.grad(loss(ref))(x[0], int(k)) for k in ks[0]]))


# ---------------------------------------------------------------- input resized along time

# (name, x shape N,T,H,W,Cin, frames, kernel, Cout, strides, padding, convolved unformed on CPU)
TIME_RESIZED_CASES = [
    ("i3d_stem_16_to_32", (1, 6, 13, 12, 3), 12, (7, 7, 7), 5, (2, 2, 2), "SAME", True),
    ("3x3x3_5_to_13", (2, 5, 7, 6, 4), 13, (3, 3, 3), 3, (1, 1, 1), "SAME", True),
    ("3x3x3_5_to_9", (1, 5, 7, 6, 4), 9, (3, 3, 3), 3, (1, 1, 1), "SAME", False),
    ("3x7x7_s122_valid", (1, 4, 14, 13, 3), 13, (3, 7, 7), 4, (1, 2, 2), "VALID", True),
    ("1x1x1_upsampled", (1, 4, 5, 5, 3), 9, (1, 1, 1), 4, (1, 1, 1), "SAME", False),
    ("3x3x3_downsampled", (1, 9, 6, 6, 3), 4, (3, 3, 3), 4, (1, 1, 1), "SAME", False),
    # an output frame of padding alone (frame 0 reads cells -10..-8): formed, not composed
    ("padding_only_frame", (1, 2, 5, 5, 3), 7, (3, 3, 3), 3, (5, 1, 1),
     ((10, 0), (1, 1), (1, 1)), False),
]


@pytest.mark.parametrize("case", TIME_RESIZED_CASES, ids=[c[0] for c in TIME_RESIZED_CASES])
def test_conv3d_of_a_time_resized_video_is_the_conv_of_the_resized_video(case, monkeypatch):
    # The reference resizes with NumPy's own interpolation (np.interp per pixel, corners
    # aligned) and convolves with XLA's 3D conv; values and input gradients, where kvjax
    # composes the kernels with the resize and where it forms the video first.
    _, x_shape, frames, kernel, cout, strides, padding, fused = case
    x, w = _inputs(x_shape, kernel, cout)
    src = np.arange(frames) * (x_shape[1] - 1) / max(frames - 1, 1)
    m = np.stack([np.interp(src, np.arange(x_shape[1]), np.eye(x_shape[1])[i])
                  for i in range(x_shape[1])], axis=1).astype(np.float32)  # f32[frames, T]
    formed = lambda x: jnp.einsum("ut,nthwc->nuhwc", m, x, precision="highest")  # noqa: E731
    resized = ops.TimeResized(x, frames)
    assert resized.shape == (x_shape[0], frames, *x_shape[2:])
    pads = ops.resolve_padding(resized.shape[1:4], kernel, strides, padding)
    assert ops._fuses_time_resize(resized, w.shape, strides, pads) is fused
    calls = []
    compose = ops._conv_time_resized
    monkeypatch.setattr(ops, "_conv_time_resized", lambda *a: calls.append(1) or compose(*a))
    ct = _normal(jax.eval_shape(lambda x: _ref_conv(formed(x), w, strides, padding), x).shape, 3)
    ref = jax.value_and_grad(lambda x: jnp.sum(_ref_conv(formed(x), w, strides, padding) * ct))
    ours = jax.value_and_grad(
        lambda x: jnp.sum(ops.conv3d(ops.TimeResized(x, frames), w, strides, padding) * ct))
    (v, g), (v_ref, g_ref) = jax.jit(ours)(x), jax.jit(ref)(x)
    assert bool(calls) == (fused and jax.default_backend() == "cpu")  # the branch taken
    _close(v, v_ref)
    _close(g, g_ref)
    _close(ops.conv3d(resized, w, strides, padding),
           _ref_conv(formed(x), w, strides, padding))
    # vmapped over videos (stage 1's K kernels) and as one channel (conv3d_channel forms it)
    xs = jnp.stack([x, -x, 2 * x])
    got = jax.jit(jax.vmap(lambda x: ops.conv3d(ops.TimeResized(x, frames), w, strides,
                                                padding)))(xs)
    _close(got, jnp.stack([_ref_conv(formed(xi), w, strides, padding) for xi in xs]))
    one = jax.jit(jax.vmap(lambda x, k: ops.conv3d_channel(ops.TimeResized(x, frames), w, k,
                                                           strides, padding)))(xs, jnp.arange(3))
    _close(one, jnp.stack([_ref_conv(formed(xi), w, strides, padding)[..., k:k + 1]
                           for k, xi in enumerate(xs)]))


def test_a_time_resized_stem_reads_fewer_frames():
    # I3D's stem at the paper preset: 16 video frames seen as 32, 7 taps, stride 2, SAME.
    # Composed with the resize, output frame o reads frames max(0, o-2)..min(15, o+2): 74
    # frame-taps in all against 16 x 7 = 112 of the conv of the formed video; every tap of
    # the composed kernels is the sum of the resize's weights it reads (rows sum to 1).
    coef = ops._time_coefficients(16, 32, 7, 2, (2, 3))
    spans = ops._time_spans(coef)
    assert spans == [(max(0, o - 2), min(16, o + 3)) for o in range(16)]
    assert sum(b - a for a, b in spans) == 74
    m = ops.resize_matrix(16, 32)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-6)
    assert ((m > 0).sum(axis=1) <= 2).all()
    np.testing.assert_allclose(coef[5].sum(axis=1), 1.0, atol=1e-6)  # an inner frame: no padding
    if jax.default_backend() == "cpu":  # and only 2D convolutions, 16 of them, one per frame
        x, w = _inputs((1, 16, 20, 20, 3), (7, 7, 7), 4)
        jaxpr = jax.make_jaxpr(lambda x: ops.conv3d(ops.TimeResized(x, 32), w, (2, 2, 2)))(x)
        assert _conv_ranks(jaxpr.jaxpr) == [4] * 16
