"""`jit`: jax.jit with the XLA options kvjax's programs need (fast on CPU, deterministic on GPU).

Why: recent jaxlib CPU builds hand convolutions, dots and reductions to YNNPACK ("YNN
fusions", on by default: library fusion types INDIVIDUAL_CONVOLUTION, INDIVIDUAL_DOT,
REDUCE; a REDUCE fusion also swallows a convolution that feeds the reduction). For the 2D
convolutions that kvjax.ops turns 3D convolutions into, YNNPACK's convolution was 1.6-2x
slower than XLA's own (Eigen) one; its dots were no faster than XLA's. Measured on the 2-core
AMD EPYC dev box, jax 0.10.2 (benchmarks/results/ops-cpu.md has the full tables):

    I3D stem conv (s2d) + ReLU, forward + input gradient, 1x32x224x224   0.98 s -> 0.50 s
    I3D up to Mixed_3b, forward + input gradient, 32x224x224           1.88 s -> 1.18 s
                                                                      (PyTorch 2.13: 1.79 s)
    the same, the latest benchmarks/ops.py run                         1.75 s -> 1.23 s
                                                                      (PyTorch 2.13: 1.75 s)
    3x3 conv 192->192 on 16x56x56, forward then sum                    0.30 s -> 0.18 s
    2048x2048 float32 matmul                                           0.09 s -> 0.08 s

So kvjax compiles its programs with every YNN fusion off.

On GPU, kvjax compiles its programs with XLA's deterministic ops (`xla_gpu_deterministic_ops`):
the same key gives the same result, as on CPU. Without them XLA's GPU scatter-add, the
gradient of stage 2's warp (a gather), adds in whatever order its threads run: on an NVIDIA
H200 (jax 0.11.2), kvjax.decompose of the same videos with the same key twice differed in 6 of
1536 texture values by one float32 ulp; with them, every field was equal (tests/test_stage2.py)
and two `kvjax visualize` runs wrote byte-identical files. The price there: the default run
was done in 21-22 s against 17 s without (benchmarks/results/gpu-h200.md). TPU: nothing
changes.

The options are per compiled program (jax.jit's `compiler_options`), not process-wide
XLA_FLAGS, so importing kvjax changes nothing for the user's own programs (on GPU, a user who
wants those deterministic too sets XLA_FLAGS=--xla_gpu_deterministic_ops=true). Users who jit
a `model.features(...)` function themselves get the same options with `kvjax.jit` (same
signature as jax.jit) or `jax.jit(..., compiler_options=kvjax.compiler.options())`.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax

YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"
YNN_FUSION_TYPES = ""


@functools.cache
def _cpu_options() -> tuple[tuple[str, str], ...]:
    """The CPU options this jaxlib accepts: probed once by compiling a trivial program (a
    jaxlib without YNN fusions rejects the option name; it then gets none, and loses nothing,
    since the slow path does not exist there). An empty list of fusion types turns them all
    off."""
    opts = {YNN_FUSION_OPTION: YNN_FUSION_TYPES}
    try:
        one = jax.device_put(1.0, jax.local_devices(backend="cpu")[0])
        jax.jit(lambda x: x + 1, compiler_options=opts).lower(one).compile()
    except Exception:  # noqa: BLE001 - unknown option or value: this jaxlib has no such path
        return ()
    return tuple(opts.items())


GPU_OPTIONS = {"xla_gpu_deterministic_ops": True}


@functools.cache
def _gpu_options() -> tuple[tuple[str, Any], ...]:
    """GPU_OPTIONS if this jaxlib's GPU compiler takes them (probed once, as _cpu_options),
    else none: a build without the option runs as XLA's default does."""
    try:
        one = jax.device_put(1.0, jax.local_devices(backend="gpu")[0])
        jax.jit(lambda x: x + 1, compiler_options=GPU_OPTIONS).lower(one).compile()
    except Exception:  # noqa: BLE001 - unknown option: this jaxlib cannot be asked for it
        return ()
    return tuple(GPU_OPTIONS.items())


def options(platform: str | None = None) -> dict[str, Any] | None:
    """Compiler options for programs on `platform` (default: jax.default_backend()): the CPU
    options above on "cpu", the deterministic ops on "gpu", None elsewhere (and where the
    compiler does not take them)."""
    platform = platform or jax.default_backend()
    if platform == "cpu":
        return dict(_cpu_options()) or None
    if platform == "gpu":
        return dict(_gpu_options()) or None
    return None


def _inside_a_trace(args) -> bool:
    """Whether a call happens inside another trace: a traced argument, or (concrete
    arguments, e.g. a closed-over array inside a jitted loss) JAX's trace state."""
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(args)):
        return True
    try:
        from jax._src.core import trace_state_clean  # not public; absent: tracers only
    except ImportError:
        return False
    return not trace_state_clean()


class _Jit:
    """A jax.jit per platform, chosen at call time by jax.default_backend(). Called inside
    another trace (jit, eval_shape, vmap...), where XLA takes options only from the outer
    program, it is a plain nested jax.jit."""

    def __init__(self, fun: Callable, jit_kwargs: dict[str, Any]):
        # name and docstring only: update_wrapper's default also copies fun.__dict__, and a
        # jax.grad / vmap of another _Jit carries that one's _fun, which would replace ours
        functools.update_wrapper(self, fun, updated=())
        self._fun, self._kwargs, self._jits = fun, jit_kwargs, {}

    def _for_backend(self, args=()):
        if _inside_a_trace(args):
            platform = "nested"
        else:
            platform = jax.default_backend()
        if platform not in self._jits:
            self._jits[platform] = jax.jit(self._fun, compiler_options=options(platform),
                                           **self._kwargs)
        return self._jits[platform]

    def __call__(self, *args, **kwargs):
        return self._for_backend((args, kwargs))(*args, **kwargs)

    def lower(self, *args, **kwargs):
        return self._for_backend().lower(*args, **kwargs)

    def _cache_size(self) -> int:
        return sum(j._cache_size() for j in self._jits.values())


def jit(fun: Callable | None = None, **jit_kwargs):
    """jax.jit(fun, **jit_kwargs) compiled with `options()` for the backend in use; usable as
    a decorator with or without arguments (@jit, @jit(static_argnames=...))."""
    if fun is None:
        return functools.partial(jit, **jit_kwargs)
    return _Jit(fun, jit_kwargs)
