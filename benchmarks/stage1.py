"""Stage 1 benchmark: step time against the FLOP floor, and pixel vs spectral per second.

    PYTHONPATH=. python benchmarks/stage1.py steps    [--layers ...] [--kernels 1,4,16]
    PYTHONPATH=. python benchmarks/stage1.py converge [--layer Mixed_3b] [--seconds ...]
    PYTHONPATH=. python benchmarks/stage1.py all

`steps`: seconds per optimisation step at the `paper` preset (16x128x128 pixels resized to
I3D's 32x224x224, reference transform, Adam) for each layer and number of kernels K vmapped
in one program, next to the floor: the truncated network's forward plus input-gradient FLOPs
(2x the forward's, from XLA's cost analysis of the forward) times K, divided by this machine's
measured float32 matmul rate. `converge`: the objective (no transform) reached against
wall-clock time for the pixel and the spectral parameterisation on 8 kernels of one layer.

Results (JSON, with the machine description and its load average, since the machines here
are shared) go to benchmarks/results/stage1_<mode>_<timestamp>.json. Options shrink the work
(--size, --input-size, --steps) when a full paper-size run does not fit the time at hand.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import kvjax
from kvjax import ops, stage1

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


# ----------------------------------------------------------------------------- machine

def machine() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "jax": jax.__version__,
            "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
            "loadavg_start": os.getloadavg(),
            "matmul_gflops_f32": matmul_gflops()}


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best-of-`repeats` float32 n x n matmul rate of the default device, GFLOP/s."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    mm = jax.jit(lambda x: x @ x)
    mm(a).block_until_ready()
    best = min(_timed(lambda: mm(a).block_until_ready()) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def forward_gflops(features, size) -> float:
    """The convolutions' FLOPs (2 per multiply-add) in one forward pass of `features` on a
    video of `size` (T, H, W): the network's intrinsic work, whatever formulation kvjax.ops
    picks (XLA's own count includes the formulations' overheads). Pooling, BatchNorm, ReLU and
    the input resize are left out (well under 1% here)."""
    total = []
    conv = ops.conv3d

    def counting(x, w, *args, **kw):
        y = conv(x, w, *args, **kw)
        total.append(2 * np.prod(y.shape, dtype=np.int64) * np.prod(w.shape[:4], dtype=np.int64))
        return y

    ops.conv3d = counting
    try:
        jax.eval_shape(features, jax.ShapeDtypeStruct((*size, 3), jnp.float32))
    finally:
        ops.conv3d = conv
    return float(sum(total)) / 1e9


def xla_forward_gflops(features, size) -> float:
    """XLA's FLOP count of the compiled formulation's forward pass (for comparison)."""
    cost = jax.jit(features).lower(jax.ShapeDtypeStruct((*size, 3), jnp.float32)).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan"))) / 1e9


# ----------------------------------------------------------------------------- step time

def step_times(model, layers, ks, size, input_size, steps, rate) -> list[dict]:
    rows = []
    for layer in layers:
        f = model.features(layer, input_size=input_size)
        fwd = forward_gflops(f, size)
        fwd_xla = xla_forward_gflops(f, size)
        for k in ks:
            cfg = stage1.Stage1Config.preset("paper", size=size, steps=steps, progress_every=1,
                                             chunk_size=k)
            stamps = []
            t0 = time.perf_counter()
            try:
                stage1.optimize(f, range(k), cfg, jax.random.key(0),
                                progress=lambda *a: stamps.append(time.perf_counter()))
            except Exception as e:  # e.g. out of memory: record it and go on
                rows.append({"layer": layer, "K": k, "error": f"{type(e).__name__}: {e}"[:300]})
                print(rows[-1], flush=True)
                continue
            per_step = float(np.median(np.diff(stamps))) if len(stamps) > 1 else float("nan")
            floor = 2 * fwd * k / rate
            rows.append({"layer": layer, "K": k, "size": size, "model_input": input_size,
                         "forward_gflop_per_kernel": fwd,
                         "xla_forward_gflop_per_kernel": fwd_xla, "compile_and_first_step_s":
                         stamps[0] - t0, "step_s": per_step, "step_s_per_kernel": per_step / k,
                         "floor_s": floor, "step_over_floor": per_step / floor,
                         "loadavg": os.getloadavg()})
            print(json.dumps(rows[-1]), flush=True)
    return rows


# ----------------------------------------------------------------------------- convergence

def convergence(model, layer, size, input_size, k, steps, every, params) -> list[dict]:
    """Mean objective over k kernels (no transform) every `every` steps, with wall-clock time
    (compile excluded), per (param, lr). Drives stage 1's compiled programs directly so the
    objective can be measured between segments."""
    f = model.features(layer, input_size=input_size)
    arrays, static = stage1.partition((f, kvjax.objectives.channel()))
    kernels = jnp.arange(k)
    rows = []
    for name, lr, decay in params:
        cfg = stage1._program_config(stage1.Stage1Config.preset(
            "paper", size=size, param=name, lr=lr, spectral_decay=decay))
        t0 = time.perf_counter()
        states, start = stage1._start(arrays, static, jax.random.key(0), kernels, cfg)
        _, act = stage1._finish(arrays, static, states, kernels, cfg)  # compile it too
        # n_active=0 runs no step (the state is unchanged) but compiles the segment program.
        jax.block_until_ready(stage1._segment(arrays, static, states, kernels, jnp.int32(0),
                                              cfg, every))
        row = {"layer": layer, "param": name, "lr": lr, "spectral_decay": decay, "K": k,
               "size": size,
               "model_input": input_size, "compile_and_start_s": time.perf_counter() - t0,
               "steps": [0], "seconds": [0.0], "activation": [float(jnp.mean(start))]}
        elapsed = 0.0
        for n in range(every, steps + 1, every):
            t = time.perf_counter()
            states, values = stage1._segment(arrays, static, states, kernels, jnp.int32(every),
                                             cfg, every)
            jax.block_until_ready(values)
            dt = time.perf_counter() - t
            elapsed += dt
            _, act = stage1._finish(arrays, static, states, kernels, cfg)
            row["steps"].append(n)
            row["seconds"].append(elapsed)
            row["activation"].append(float(jnp.mean(act)))
            print(name, lr, decay, n, round(elapsed, 1), row["activation"][-1], flush=True)
        row["loadavg"] = os.getloadavg()
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- main

def _param_spec(s):
    name, lr, *decay = s.split(":")
    return name, float(lr), float(decay[0]) if decay else 1.0


def _ints(s):
    return tuple(int(x) for x in s.split(","))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=["steps", "converge", "all", "flops"])
    p.add_argument("--layers", default="Conv3d_1a_7x7,Mixed_3b,Mixed_4b")
    p.add_argument("--kernels", type=_ints, default=(1, 4, 16))
    p.add_argument("--size", type=_ints, default=(16, 128, 128), help="optimised video T,H,W")
    p.add_argument("--input-size", type=_ints, default=None,
                   help="T,H,W the model sees (default: its own, 32,224,224 for I3D)")
    p.add_argument("--steps", type=int, default=4, help="steps timed per configuration")
    p.add_argument("--layer", default="Mixed_3b", help="layer for `converge`")
    p.add_argument("--converge-steps", type=int, default=200)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--params", default="pixel:0.05,spectral:0.05:1.0",
                   help="for `converge`: param:lr[:spectral_decay],...")
    args = p.parse_args(argv)

    info = machine()
    print(json.dumps(info), flush=True)
    model = kvjax.load_model("i3d")
    input_size = args.input_size or model.input_size
    out = {"machine": info, "args": vars(args)}
    if args.mode == "flops":
        out["flops"] = [{"layer": l, "size": args.size, "model_input": input_size,
                         "forward_gflop_per_kernel": forward_gflops(
                             model.features(l, input_size=input_size), args.size),
                         "xla_forward_gflop_per_kernel": xla_forward_gflops(
                             model.features(l, input_size=input_size), args.size)}
                        for l in args.layers.split(",")]
        print(json.dumps(out["flops"]), flush=True)
    if args.mode in ("steps", "all"):
        out["step_times"] = step_times(model, args.layers.split(","), args.kernels, args.size,
                                       input_size, args.steps, info["matmul_gflops_f32"])
    if args.mode in ("converge", "all"):
        out["convergence"] = convergence(model, args.layer, args.size, input_size, 8,
                                         args.converge_steps, args.every,
                                         [_param_spec(x) for x in args.params.split(",")])
    out["machine"]["loadavg_end"] = os.getloadavg()
    os.makedirs(RESULTS, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = os.path.join(RESULTS, f"stage1_{args.mode}_{stamp}.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", path)


if __name__ == "__main__":
    main()
