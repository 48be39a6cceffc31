"""kvjax.jit: the same values as jax.jit, compiled without XLA's YNNPACK convolution fusion.

The speed it buys is measured in benchmarks/ops.py (never asserted here); what is tested is
that the option reaches XLA (no convolution inside a YNN fusion, where plain jax.jit puts one
on this jaxlib), that nothing else is switched off, and that results do not change.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import kvjax
from kvjax import compiler, ops


def _ynn_fused(hlo: str) -> list[str]:
    """For each YNN fusion in optimised HLO text, the ops of the computation it calls."""
    bodies = {}
    for block in re.split(r"\n(?=\S)", hlo):
        m = re.match(r"(?:ENTRY )?%([\w.\-]+)", block)
        if m:
            bodies[m.group(1)] = block
    called = re.findall(r"calls=%([\w.\-]+)[^\n]*\"__ynn_fusion\"", hlo)
    return [" ".join(re.findall(r"= \S+ ([a-z\-]+)\(", bodies[c])) for c in called]


def _conv_relu_sum(x, w):
    """A 2D convolution whose output feeds more than a reduction (as in any network)."""
    y = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(jax.nn.relu(y) * y)


def _args():
    kx, kw = jax.random.split(jax.random.key(0))
    # big enough for XLA to hand the convolutions to YNNPACK (it keeps tiny ones)
    return (jax.random.normal(kx, (2, 32, 32, 16)), jax.random.normal(kw, (3, 3, 16, 32)))


def _fused(jitted, args) -> list[str]:
    return _ynn_fused(jitted.lower(*args).compile().as_text())


def _forced(fn, fusion_type: str):
    """jax.jit with only this YNN fusion type on: the positive control, independent of which
    types this jaxlib turns on by default."""
    return jax.jit(fn, compiler_options={compiler.YNN_FUSION_OPTION:
                                         "LIBRARY_FUSION_TYPE_" + fusion_type})


def _conv_mean(x, w):
    return jnp.mean(lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC")))


@pytest.mark.cpu_backend
@pytest.mark.parametrize("fn, fusion_type", [
    (jax.value_and_grad(_conv_relu_sum, argnums=(0, 1)), "INDIVIDUAL_CONVOLUTION"),
    # a REDUCE fusion swallows the convolution that feeds it (e.g. an objective read
    # straight from a conv layer)
    (_conv_mean, "REDUCE"),
], ids=["conv-relu-grad", "conv-mean"])
def test_kvjax_jit_keeps_convolutions_out_of_ynn_fusions(fn, fusion_type):
    args = _args()
    if compiler.options("cpu") is None:
        # the probe found no YNN fusions in this jaxlib: XLA must indeed refuse the option
        with pytest.raises(Exception):
            _fused(_forced(fn, fusion_type), args)
        return
    assert compiler.options("cpu") == {compiler.YNN_FUSION_OPTION: compiler.YNN_FUSION_TYPES}
    forced = _fused(_forced(fn, fusion_type), args)
    assert any("convolution" in ops_ for ops_ in forced), forced  # the check can see one
    assert _fused(kvjax.jit(fn), args) == []  # no YNN fusion at all
    for a, b in zip(jax.tree_util.tree_leaves(kvjax.jit(fn)(*args)),
                    jax.tree_util.tree_leaves(_forced(fn, fusion_type)(*args))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.abs(b).max()))


def test_kvjax_jit_gives_the_same_values_and_gradients():
    args = _args()
    fn = jax.value_and_grad(_conv_relu_sum, argnums=(0, 1))
    (v0, g0), (v1, g1) = jax.jit(fn)(*args), kvjax.jit(fn)(*args)
    np.testing.assert_allclose(v1, v0, rtol=1e-5)
    for a, b in zip(g1, g0):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))


def test_kvjax_jit_on_a_3d_network_block():
    """The I3D-style unit (kvjax.ops conv3d + ReLU) gives jax.jit's numbers under kvjax.jit."""
    kx, kw = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (1, 6, 12, 12, 3))
    w = jax.random.normal(kw, (3, 3, 3, 3, 8)) * 0.2
    f = jax.value_and_grad(lambda x: jnp.mean(jax.nn.relu(ops.conv3d(x, w))))
    (v0, g0), (v1, g1) = jax.jit(f)(x), kvjax.jit(f)(x)
    np.testing.assert_allclose(v1, v0, rtol=1e-5)
    np.testing.assert_allclose(g1, g0, atol=1e-6 * float(jnp.abs(g0).max()) + 1e-9)


def test_jit_as_decorator_with_static_arguments_and_cache():
    @compiler.jit(static_argnames="n")
    def power(x, n):
        return x ** n

    assert float(power(jnp.float32(2.0), n=3)) == 8.0
    assert float(power(jnp.float32(3.0), n=3)) == 27.0
    assert power._cache_size() == 1          # same static n: one compilation
    power(jnp.float32(2.0), n=2)
    assert power._cache_size() == 2
    assert power.__name__ == "power"


def test_jit_nested_in_a_trace_runs_inline():
    """Compiler options belong to top-level programs; a kvjax.jit function called inside
    another trace (jax.jit, eval_shape, vmap) must still work."""
    inner = compiler.jit(lambda x: jnp.sin(x) * 2)
    x = jnp.arange(4.0)
    np.testing.assert_allclose(jax.jit(lambda x: inner(x) + 1)(x), jnp.sin(x) * 2 + 1, rtol=1e-6)
    assert jax.eval_shape(inner, x).shape == (4,)
    np.testing.assert_allclose(jax.vmap(inner)(x), jnp.sin(x) * 2, rtol=1e-6)
    # concrete arguments inside a trace (a fixed array in a jitted loss, a scan body)
    fixed = np.arange(4.0)
    np.testing.assert_allclose(jax.jit(lambda z: inner(fixed) + z)(1.0), np.sin(fixed) * 2 + 1,
                               rtol=1e-6)
    carry, _ = jax.lax.scan(lambda c, _: (c + inner(fixed), None), jnp.zeros(4), None, length=2)
    np.testing.assert_allclose(carry, 2 * np.sin(fixed) * 2, rtol=1e-6)


def test_options_per_platform():
    """CPU: the YNN switch, where jaxlib has it; GPU: deterministic ops, where this process
    has a GPU (the option is probed there); TPU: none."""
    assert compiler.options("tpu") is None
    try:
        has_gpu = bool(jax.local_devices(backend="gpu"))
    except RuntimeError:  # no GPU backend in this process
        has_gpu = False
    assert compiler.options("gpu") == (compiler.GPU_OPTIONS if has_gpu else None)
    cpu = compiler.options("cpu")
    assert cpu is None or set(cpu) == {compiler.YNN_FUSION_OPTION}


def test_jit_of_a_transformed_kvjax_jit_function_runs_the_transform():
    """jax.grad / vmap of a kvjax.jit function, jitted again with kvjax.jit, is that
    transform (the wrapper once took the inner function's attributes and ran it instead)."""
    f = compiler.jit(lambda x: jnp.sum(x ** 2))
    x = jnp.arange(12.0).reshape(4, 3)
    np.testing.assert_allclose(compiler.jit(jax.vmap(f))(x), np.sum(np.asarray(x) ** 2, 1))
    np.testing.assert_allclose(compiler.jit(jax.grad(f))(x), 2 * np.asarray(x))
    value, grad = compiler.jit(jax.value_and_grad(f))(x)
    assert float(value) == float(np.sum(np.asarray(x) ** 2)) and grad.shape == x.shape
