"""Where a stage-1 step's time goes off the CPU, and which op forms are faster there.

    PYTHONPATH=.:tests:benchmarks python benchmarks/gpu_profile.py [--out DIR]
    PYTHONPATH=.:tests:benchmarks python benchmarks/gpu_profile.py --layers Mixed_3b --kernels 16

For each layer and K: one stage-1 step at the `paper` preset (16x128x128 videos, I3D input
32x224x224, channel objective, the exact ReLU gradient), K kernels vmapped in one program
compiled with kvjax.jit, one step per call (benchmarks/stage1.py's `vmapped_programs`), timed
as the median of `--calls` calls after two warm-up calls, in each of these forms (measured
in turn, each compiled anew):
- `base`: as kvjax runs it on this backend;
- `nondet`: without kvjax's GPU compiler options (XLA's deterministic ops; kvjax/compiler.py);
- `s2d3d`: strided convolutions (the stem) as space-to-depth then a stride-1 native 3D conv;
- `s2d2d`: strided convolutions as on CPU (space-to-depth, temporal taps folded, a 2D conv);
- `pools_vjp`: max pools in the CPU's separable form with the hand-written gradient;
- `grouped`: the one-channel readout of K videos as one grouped convolution (K output
  channels of work) instead of every video against the K selected kernels (K x K);
- `time_composed`: the stem convolves the 16-frame video with kernels composed with the
  resize to 32 frames (ops.TimeResized, as on CPU) instead of the formed 32 frames;
- `fwd`: the network's forward alone (no gradient, no transform), as a lower bound.
Then, for `base` (and with `--profile-forms`, others), a jax.profiler trace of `--profile-calls`
calls, summarised by XLA op and by GPU kernel: milliseconds per step for the 25 costliest (a
profiler that fails is recorded in the row, and the run goes on). Every form but `fwd` computes
the same step: each row records its first step's objective values and their largest difference
from `base`'s (`max_abs_diff_vs_base`; rounding-level expected). Results: a printed table and
DIR/gpu_profile_<stamp>.json (default benchmarks/results), with the machine, written after
every row (a run stopped at its time limit keeps what it measured). Each form of each layer and
K compiles anew: on an H200 a stage-1 program compiled in 5-25 s, so size --forms and --kernels
to the device time at hand.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import json
import os
import tempfile
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

import kvjax
from kvjax import ops, stage1
from stage1 import RESULTS, forward_gflops, machine, vmapped_programs

SIZE = (16, 128, 128)
INPUT = (32, 224, 224)
FORMS = ("base", "nondet", "s2d3d", "s2d2d", "pools_vjp", "grouped", "time_composed", "fwd")


def _strided(impl):
    native = ops.CONV_IMPLS["native"]

    def conv(x, w, strides, pads):
        if any(s > 1 for s in strides):
            return ops.CONV_IMPLS[impl](x, w, strides, pads)
        return native(x, w, strides, pads)
    return conv


def _patch(form: str):
    stack = contextlib.ExitStack()
    if form == "nondet":
        stack.enter_context(mock.patch.object(kvjax.compiler, "options", lambda *a: None))
    elif form in ("s2d3d", "s2d2d"):
        impl = "s2d3d" if form == "s2d3d" else "s2d"
        stack.enter_context(mock.patch.dict(ops.CONV_IMPLS, {"native": _strided(impl)}))
    elif form == "pools_vjp":
        max_native = ops.POOL_IMPLS["native"]

        def pool(x, init, op, window, strides, pads):
            if op is jax.lax.max:
                return ops._pool_separable_vjp(x, init, op, window, strides, pads)
            return max_native(x, init, op, window, strides, pads)
        stack.enter_context(mock.patch.dict(ops.POOL_IMPLS, {"native": pool}))
    elif form == "grouped":
        stack.enter_context(mock.patch.object(ops, "CHANNEL_BATCH_FORM", "grouped"))
    elif form == "time_composed":
        fuses = ops._fuses_time_resize
        stack.enter_context(mock.patch.object(
            ops, "_fuses_time_resize", lambda r, shape, st, pads, impl: fuses(r, shape, st, pads)))
    elif form not in ("base", "fwd"):
        raise ValueError(f"unknown form {form!r}; expected one of {FORMS}")
    return stack


def _program(form, f, config, k):
    ks = jnp.arange(k)
    states = jax.jit(jax.vmap(lambda kk: stage1.init(jax.random.key(0), kk, config)))(ks)
    if form == "fwd":
        video = jax.vmap(lambda s: stage1.render(s, config))(states)
        fwd = kvjax.jit(lambda f, v, ks: jax.vmap(lambda v, kk: f(v, channel=kk).mean())(v, ks))
        return lambda: fwd(f, video, ks)
    step, _ = vmapped_programs(config)
    return lambda: step(f, states, ks)[1]


def time_form(form, f, config, k, calls):
    with _patch(form):
        run = _program(form, f, config, k)
        t0 = time.perf_counter()
        first = np.asarray(jax.block_until_ready(run()))
        compile_s = time.perf_counter() - t0
        jax.block_until_ready(run())
        times = []
        for _ in range(calls):
            t = time.perf_counter()
            jax.block_until_ready(run())
            times.append(time.perf_counter() - t)
    return run, compile_s, times, first


def summarise(trace_dir: str, n_calls: int, top: int = 25) -> dict:
    """Per device plane: the costliest XLA ops and kernels, ms per call (summed over streams)."""
    from jax.profiler import ProfileData
    paths = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    out = {}
    for path in paths:
        data = ProfileData.from_file(path)
        for plane in data.planes:
            if not plane.name.startswith("/device:"):
                continue
            by_line = collections.defaultdict(collections.Counter)
            for line in plane.lines:
                kind = ("ops" if "XLA Ops" in line.name else "modules" if "Modules" in line.name
                        else "kernels" if line.name.startswith("Stream") else None)
                if kind is None:
                    continue
                for ev in line.events:
                    by_line[kind][ev.name] += ev.duration_ns / 1e6 / n_calls
            out[plane.name] = {kind: {"total_ms": sum(c.values()),
                                      "top": [(n, round(ms, 4)) for n, ms in c.most_common(top)]}
                               for kind, c in by_line.items()}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", default="Conv3d_1a_7x7,Mixed_3b,Mixed_4b")
    p.add_argument("--kernels", default="1,16")  # each layer with each K
    p.add_argument("--forms", default=",".join(FORMS))
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--profile-forms", default="base")
    p.add_argument("--profile-calls", type=int, default=3)
    p.add_argument("--out", default=RESULTS)
    a = p.parse_args(argv)
    model = kvjax.load_model("i3d")
    info = machine()
    print(json.dumps({k: info[k] for k in info if k != "env"})[:600], flush=True)
    rows = []
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = os.path.join(a.out, f"gpu_profile_{stamp}.json")
    os.makedirs(a.out, exist_ok=True)

    def save():  # after every row: a run stopped at its time limit keeps what it measured
        with open(path + ".tmp", "w") as fh:
            json.dump({"machine": info, "rows": rows}, fh, indent=1)
        os.replace(path + ".tmp", path)
    for layer in a.layers.split(","):
        f = model.features(layer, input_size=INPUT, relu_grad="exact")
        fwd = forward_gflops(f, SIZE)
        for k in map(int, a.kernels.split(",")):
            config = stage1.Stage1Config.preset("paper", size=SIZE, steps=1)
            base_values = None
            for form in a.forms.split(","):
                try:
                    run, compile_s, times, first = time_form(form, f, config, k, a.calls)
                except Exception as e:  # noqa: BLE001 - e.g. out of memory: record, go on
                    rows.append({"layer": layer, "K": k, "form": form,
                                 "error": f"{type(e).__name__}: {e}"[:300]})
                    print(rows[-1], flush=True)
                    save()
                    continue
                ms = 1e3 * float(np.median(times))
                passes = 1 if form == "fwd" else 2  # forward (+ input gradient)
                row = {"layer": layer, "K": k, "form": form, "compile_s": compile_s,
                       "ms": ms, "ms_per_kernel": ms / k, "ms_range": [1e3 * min(times),
                                                                       1e3 * max(times)],
                       "first_values": first.tolist(), "forward_gflop_per_kernel": fwd,
                       "tflops": passes * fwd * k / ms}  # GFLOP / ms
                if form == "base":
                    base_values = first
                elif form != "fwd" and base_values is not None:
                    row["max_abs_diff_vs_base"] = float(np.abs(first - base_values).max())
                if form in a.profile_forms.split(","):
                    try:
                        d = tempfile.mkdtemp(prefix="kvjax-prof-")
                        with _patch(form), jax.profiler.trace(d):
                            for _ in range(a.profile_calls):
                                jax.block_until_ready(run())
                        row["profile"] = summarise(d, a.profile_calls)
                    except Exception as e:  # noqa: BLE001 - no profiler here: keep the timing
                        row["profile_error"] = f"{type(e).__name__}: {e}"[:300]
                rows.append(row)
                save()
                print(json.dumps({k_: v for k_, v in row.items() if k_ != "profile"}),
                      flush=True)
                for plane, kinds in row.get("profile", {}).items():
                    for kind, s in kinds.items():
                        print(f"  {plane} {kind}: {s['total_ms']:.3f} ms per step", flush=True)
                        for name, t in s["top"][:15]:
                            print(f"    {t:8.3f}  {name[:110]}", flush=True)
    print("wrote", path, flush=True)


if __name__ == "__main__":
    main()
