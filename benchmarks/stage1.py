"""Stage 1 benchmark: step time against the FLOP floor and the reference, pixel vs spectral
per second, and time to the reference's quality.

    PYTHONPATH=.:tests python benchmarks/stage1.py steps    [--layers ...] [--kernels 1,4,16]
    PYTHONPATH=.:tests python benchmarks/stage1.py converge [--layer Mixed_3b]
    PYTHONPATH=.:tests python benchmarks/stage1.py quality  --reference results/reference_quality_*.json

`steps`: seconds per optimisation step at the `paper` preset (16x128x128 pixels resized to
I3D's 32x224x224, reference transform, Adam) for each layer and number of kernels K vmapped
in one program, next to the floor: the truncated network's forward plus input-gradient FLOPs
(2x the forward's, from XLA's cost analysis of the forward) times K, divided by this machine's
measured float32 matmul rate (measured just before and after each row's steps, and between
every two programs of a row: the shared VM's speed drifts), and next to the reference
algorithm's step time per kernel in PyTorch (benchmarks/reference_torch.py: whole network
every step, weight gradients kept, one kernel at a time; skipped with --no-reference).
`converge`: the objective (no transform) reached against wall-clock time for the pixel
and the spectral parameterisation on 8 kernels of one layer. `quality`: given a
reference_torch.py `quality` result (the reference's 1500 steps on 4 kernels of Mixed_3b at
model input 16x112x112), the wall time kvjax's settings take to reach the reference's final
mean objective on the same kernels and model input.

Results (JSON, with the machine description and its load average, since the machines here
are shared) go to benchmarks/results/stage1_<mode>_<timestamp>.json. Options shrink the work
(--size, --input-size, --steps) when a full paper-size run does not fit the time at hand.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import kvjax
from kvjax import ops, stage1, transforms
from machine import describe, save_results

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


# ----------------------------------------------------------------------------- machine

def machine() -> dict:
    out = describe(matmul_gflops_f32=matmul_gflops(), matmul_n=matmul_size())
    if jax.default_backend() != "cpu":
        # The floor uses the default-precision rate, the precision the convolutions run at
        # (on NVIDIA GPUs XLA may use TF32 for float32 at default precision); the full-float32
        # rate beside it says whether it did.
        out["matmul_gflops_f32_highest"] = matmul_gflops(precision="highest")
    return out


def matmul_size() -> int:
    """The matmul size that measures the default device's rate: 2048 on CPU (~0.1 s here),
    8192 elsewhere (2048 would time a GPU's launch overhead)."""
    return 2048 if jax.default_backend() == "cpu" else 8192


@functools.cache
def _matmul_program(n: int, precision: str | None):
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    mm = jax.jit(lambda x: jnp.matmul(x, x, precision=precision))
    mm(a).block_until_ready()
    return a, mm


def matmul_gflops(n: int | None = None, repeats: int = 5, precision: str | None = None) -> float:
    """Best-of-`repeats` float32 n x n matmul rate of the default device, GFLOP/s, at the
    default precision or `precision` ("highest": full float32). n: matmul_size()."""
    n = n or matmul_size()
    a, mm = _matmul_program(n, precision)
    best = min(_timed(lambda: mm(a).block_until_ready()) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def conv_flops(features, size) -> list[tuple[tuple[int, ...], tuple[int, ...], int]]:
    """(strides, window (kt, kh, kw), FLOPs) of every convolution in one forward pass of
    `features` on a video of `size` (T, H, W), 2 FLOPs per multiply-add, as the network's
    intrinsic work whatever formulation kvjax.ops picks. Traced with jax.eval_shape, which
    caches by function: pass a features function not traced before."""
    convs = []
    conv = ops.conv3d

    def counting(x, w, strides=(1, 1, 1), *args, **kw):
        y = conv(x, w, strides, *args, **kw)
        convs.append((tuple(strides), tuple(w.shape[:3]),
                      int(2 * np.prod(y.shape, dtype=np.int64) *
                          np.prod(w.shape[:4], dtype=np.int64))))
        return y

    ops.conv3d = counting
    try:
        jax.eval_shape(features, jax.ShapeDtypeStruct((*size, 3), jnp.float32))
    finally:
        ops.conv3d = conv
    return convs


def forward_gflops(features, size) -> float:
    """The convolutions' FLOPs (2 per multiply-add) in one forward pass of `features` on a
    video of `size` (T, H, W): the network's intrinsic work, whatever formulation kvjax.ops
    picks (XLA's own count includes the formulations' overheads). Pooling, BatchNorm, ReLU and
    the input resize are left out (well under 1% here)."""
    return float(sum(f for _, _, f in conv_flops(features, size))) / 1e9


def xla_forward_gflops(features, size, one_channel_k: int | None = None) -> float:
    """XLA's FLOP count of the compiled formulation's forward pass (for comparison). With
    `one_channel_k`: per kernel, the forward stage 1 runs for K kernels vmapped with its
    one-channel readout (`features(video, channel=k)`: the layer's last convolutions give
    min(K, C) channels, not C)."""
    video = jax.ShapeDtypeStruct((*size, 3), jnp.float32)
    if one_channel_k is None:
        lowered = jax.jit(features).lower(video)
    else:
        ks = jax.ShapeDtypeStruct((one_channel_k,), jnp.int32)
        video = jax.ShapeDtypeStruct((one_channel_k, *video.shape), jnp.float32)
        lowered = jax.jit(jax.vmap(lambda v, k: features(v, channel=k))).lower(video, ks)
    cost = lowered.cost_analysis()  # None on GPU: the compiled program's count there
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    if not cost:
        cost = lowered.compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get("flops", float("nan"))) / 1e9 / (one_channel_k or 1)


# ----------------------------------------------------------------------------- step time

def time_optimize(features, k: int, config: stage1.Stage1Config, gauge=None,
                  programs: list | None = None) -> tuple[float, int, float]:
    """stage1.optimize of kernels 0..k-1 timed by its progress reports: (seconds of
    compilation + first program, steps in that program, median seconds per step after it).
    A report may cover several steps (on CPU a program runs up to four, stage1._plan).

    gauge: called at every report, between programs (the next one is dispatched only after
    the report returns), e.g. to measure the matmul rate right before and after each program;
    its own time is not counted. programs: if given, gets one dict per timed program: steps,
    seconds, kernels (the chunk's), and the gauge's values just before and just after it.

    With several chunks (config.chunk_size below k), a program is timed only after another
    of its own chunk (a chunk's first program carries its start), and the seconds per step
    returned are a program's, for one chunk's kernels."""
    reports = []  # (steps done, time of the report, gauge value, time resumed, chunk, chunks)

    def report(done, _total, chunk, n_chunks):
        t = time.perf_counter()
        value = gauge() if gauge is not None else None
        reports.append((done, t, value, time.perf_counter(), chunk, n_chunks))

    t0 = time.perf_counter()
    stage1.optimize(features, range(k), config, jax.random.key(0), progress=report)
    timed = [{"steps": d - d0, "s": t - resumed, "kernels": -(-k // n), "chunk": c,
              "gauge_before": g0, "gauge_after": g}
             for (d0, _, g0, resumed, c0, _), (d, t, g, _, c, n) in zip(reports, reports[1:])
             if c == c0]
    if programs is not None:
        programs.extend(timed)
    per_step = (float(np.median([p["s"] / p["steps"] for p in timed])) if timed
                else float("nan"))
    return reports[0][1] - t0, reports[0][0], per_step


def step_times(model, layers, ks, size, input_size, steps, rate, auto_chunks=False,
               rows: list | None = None) -> list[dict]:
    """Rows of seconds per step and kernel against the floor, per layer and K. Each K runs as
    one program of K kernels, or with `auto_chunks` as stage1.optimize chunks it by default
    (on CPU, at most 4 kernels per program: kvjax.devices.max_per_device); then a step is a
    program's, for its chunk's kernels, and its floor is that chunk's. rows: a list to append
    the rows to as they are measured (kept if the run is stopped)."""
    rows = [] if rows is None else rows
    for layer in layers:
        # the paper preset's gradient, as the reference's (kvjax.Config("paper").relu_grad)
        f = model.features(layer, input_size=input_size, relu_grad="exact")
        fwd = forward_gflops(f, size)
        fwd_xla = xla_forward_gflops(f, size)
        for k in ks:
            cfg = stage1.Stage1Config.preset("paper", size=size, steps=steps, progress_every=1,
                                             chunk_size=None if auto_chunks else k)
            rate_before = matmul_gflops()
            programs = []
            try:
                first_s, first_steps, per_step = time_optimize(
                    f, k, cfg, gauge=lambda: matmul_gflops(repeats=3), programs=programs)
            except Exception as e:  # e.g. out of memory: record it and go on
                rows.append({"layer": layer, "K": k, "error": f"{type(e).__name__}: {e}"[:300]})
                print(rows[-1], flush=True)
                continue
            # This shared VM's speed drifts by ~10% within minutes: the floor of each row takes
            # the matmul rate measured just before and just after its steps (their mean).
            rate_after = matmul_gflops()
            row_rate = (rate_before + rate_after) / 2
            n = programs[0]["kernels"] if programs else k  # kernels per program
            floor = 2 * fwd * n / row_rate
            # Finer still: each timed program against the matmul rate measured right before
            # and right after it (best of 3 each, between programs), the median of those ratios.
            for q in programs:
                q["step_s"] = q["s"] / q["steps"]
                q["floor_s"] = 2 * fwd * n / ((q["gauge_before"] + q["gauge_after"]) / 2)
                q["step_over_floor"] = q["step_s"] / q["floor_s"]
            ratios = [q["step_over_floor"] for q in programs]
            rows.append({"layer": layer, "K": k, "kernels_per_program": n,
                         "auto_chunks": auto_chunks, "size": size, "model_input": input_size,
                         "forward_gflop_per_kernel": fwd,
                         "xla_one_channel_forward_gflop_per_kernel":
                             xla_forward_gflops(f, size, n),
                         "xla_forward_gflop_per_kernel": fwd_xla, "compile_and_first_step_s":
                         first_s, "first_program_steps": first_steps, "step_s": per_step,
                         "step_s_per_kernel": per_step / n,
                         "matmul_gflops_before_after": [rate_before, rate_after],
                         "floor_s": floor, "step_over_floor": per_step / floor,
                         "step_over_run_rate_floor": per_step / (2 * fwd * n / rate),
                         "programs": programs,
                         "step_over_interleaved_floor": float(np.median(ratios)) if ratios
                         else float("nan"),
                         "step_over_interleaved_floor_range": [min(ratios), max(ratios)]
                         if ratios else None,
                         "loadavg": os.getloadavg()})
            print(json.dumps(rows[-1]), flush=True)
    return rows


# ----------------------------------------------------------------------------- convergence

def vmapped_programs(config: stage1.Stage1Config):
    """(step, measure) for kernels vmapped, compiled with kvjax.jit: step(features, states,
    kernels) -> (states, values), one optimiser step as stage1.optimize runs them on CPU;
    measure(features, params, kernels) -> f32[K], the objective without transform."""
    step = kvjax.jit(lambda f, s, ks: jax.vmap(lambda s, k: stage1.step(s, f, k, config))(s, ks))
    measure = kvjax.jit(lambda f, p, ks: jax.vmap(
        lambda p, k: stage1.measure(p, f, k, config))(p, ks))
    return step, measure


def curves(model, layer, k, input_size, configs, every, max_steps, target=None,
           key=jax.random.key(0), kernel_targets=None, relu_grad="redirect") -> list[dict]:
    """Objective (no transform) of kernels 0..k-1 every `every` steps for each (label, config)
    of `configs`, with the wall time of the steps (compile and measurement excluded, compile
    time recorded apart). With `target`, a run stops once the kernels' mean objective reaches
    it and records `time_to_target_s` (compile + steps); with `kernel_targets` (one value per
    kernel) it also records when each kernel first reaches its own value
    (`kernel_time_to_target_s`, `kernel_steps_to_target`, None if never) and runs on until
    every kernel has (`time_to_all_targets_s`) or `max_steps`. Uses only stage 1's public pure
    functions (init, step, measure), vmapped over kernels and compiled here with kvjax.jit,
    one step per call, so a measurement can follow any step (stage1.optimize runs up to four
    unrolled steps per program on CPU, stage1._plan: ~10% less per step at the paper preset).
    relu_grad: the network's ReLU gradient (model.features; "exact" is the paper preset's)."""
    f = model.features(layer, input_size=input_size, relu_grad=relu_grad)
    ks = jnp.arange(k)
    rows = []
    for label, cfg in configs:
        step, measure = vmapped_programs(cfg)
        t0 = time.perf_counter()
        states = jax.jit(jax.vmap(lambda kk, cfg=cfg: stage1.init(key, kk, cfg)))(ks)
        step = step.lower(f, states, ks).compile()
        measure = measure.lower(f, states.params, ks).compile()
        compile_s = time.perf_counter() - t0
        act = np.asarray(measure(f, states.params, ks))
        row = {"label": label, "layer": layer, "param": cfg.param, "lr": cfg.lr,
               "spectral_decay": cfg.spectral_decay, "size": cfg.size, "transform":
               repr(cfg.transform), "K": k, "model_input": input_size, "relu_grad": relu_grad,
               "compile_s": compile_s,
               "steps": [0], "seconds": [0.0], "activation": [float(act.mean())],
               "per_kernel": [act.tolist()], "target": target}
        elapsed = 0.0
        for n in range(every, max_steps + 1, every):
            t = time.perf_counter()
            for _ in range(every):
                states, _ = step(f, states, ks)
            jax.block_until_ready(states)
            elapsed += time.perf_counter() - t
            act = np.asarray(measure(f, states.params, ks))
            row["steps"].append(n)
            row["seconds"].append(elapsed)
            row["activation"].append(float(act.mean()))
            row["per_kernel"].append(act.tolist())
            print(label, n, round(elapsed, 1), round(float(act.mean()), 3), flush=True)
            if target is not None and act.mean() >= target and "time_to_target_s" not in row:
                row["time_to_target_s"] = compile_s + elapsed
                row["steps_to_target"] = n
            if kernel_targets is not None:
                hit = row.setdefault("kernel_steps_to_target", [None] * k)
                hit_s = row.setdefault("kernel_time_to_target_s", [None] * k)
                for i in np.flatnonzero((act >= np.asarray(kernel_targets))):
                    if hit[i] is None:
                        hit[i], hit_s[i] = n, compile_s + elapsed
                if all(h is not None for h in hit):
                    row["time_to_all_targets_s"] = compile_s + elapsed
            if target is None and kernel_targets is None:
                continue  # no target: run all max_steps
            done_mean = target is None or "time_to_target_s" in row
            if done_mean and (kernel_targets is None or "time_to_all_targets_s" in row):
                break
        row["loadavg"] = os.getloadavg()
        rows.append(row)
    return rows


def _preset_config(item: str, size, steps: int) -> stage1.Stage1Config:
    """"fast:lr=0.2:spectral_decay=1.25:cosine=0.1" -> that preset at `size` with the given
    fields overridden; cosine=A: Adam whose lr decays from `lr` to A*lr over `steps` (optax
    cosine_decay_schedule); transform=none: no transform."""
    name, *pairs = item.split(":")
    fields, cosine = {}, None
    for pair in pairs:
        k, v = pair.split("=")
        if k == "cosine":
            cosine = float(v)
        elif k == "transform":
            fields[k] = None if v == "none" else getattr(transforms, v)()
        else:
            fields[k] = type(getattr(stage1.Stage1Config, k, 0.0))(v) if k != "param" else v
    cfg = stage1.Stage1Config.preset(name, size=size, **fields)
    if cosine is not None:
        cfg = dataclasses.replace(cfg, optimizer=optax.adam(
            optax.cosine_decay_schedule(cfg.lr, steps, alpha=cosine)))
    return cfg


def _param_configs(spec: str, size, steps: int = 0) -> list[tuple[str, stage1.Stage1Config]]:
    """"pixel:0.05,spectral:0.1:1.5" -> paper-preset configs with that param, lr, decay;
    "fast" or "fast:lr=0.2:..." / "paper:..." -> that preset with overrides
    (`_preset_config`)."""
    out = []
    for item in spec.split(","):
        if item.split(":")[0] in ("fast", "paper"):
            out.append((item, _preset_config(item, size, steps)))
            continue
        name, lr, *decay = item.split(":")
        out.append((item, stage1.Stage1Config.preset(
            "paper", size=size, param=name, lr=float(lr),
            spectral_decay=float(decay[0]) if decay else 1.0)))
    return out


def reference_step_times(model, layers, size, input_size, steps) -> dict:
    """Seconds per step (one kernel) of the reference algorithm in PyTorch, per layer, on
    the GPU where JAX runs on one and PyTorch sees one, else on the CPU."""
    import reference_torch
    device = "cuda" if jax.default_backend() == "gpu" else "cpu"
    net = reference_torch.torch_i3d(model, device)
    out = {}
    for layer in layers:
        stamps = []
        reference_torch.optimise(net, layer, 0, input_size, steps + 2, size=size,
                                 on_step=lambda n, e: stamps.append(e))
        out[layer] = float(np.median(np.diff(stamps)[1:]))  # first two steps: warm-up
        print("reference", layer, out[layer], flush=True)
    return out


# ----------------------------------------------------------------------------- main

def _ints(s):
    return tuple(int(x) for x in s.split(","))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=["steps", "converge", "quality", "all", "flops"])
    p.add_argument("--layers", default="Conv3d_1a_7x7,Mixed_3b,Mixed_4b")
    p.add_argument("--kernels", type=_ints, default=(1, 4, 16))
    p.add_argument("--size", type=_ints, default=(16, 128, 128), help="optimised video T,H,W")
    p.add_argument("--input-size", type=_ints, default=None,
                   help="T,H,W the model sees (default: its own, 32,224,224 for I3D)")
    p.add_argument("--steps", type=int, default=12,
                   help="steps per configuration (the first program's are not timed)")
    p.add_argument("--layer", default="Mixed_3b", help="layer for `converge`")
    p.add_argument("--converge-steps", type=int, default=200)
    p.add_argument("--relu-grad", choices=["redirect", "exact"], default="redirect",
                   help="`converge`: the network's ReLU gradient (exact: the paper preset's)")
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--params", default="pixel:0.05,spectral:0.05:1.0",
                   help="for `converge`/`quality`: param:lr[:spectral_decay] or fast, ...")
    p.add_argument("--auto-chunks", action="store_true",
                   help="`steps`: run each K as stage1.optimize chunks it by default (on CPU "
                        "at most 4 kernels per program) instead of one program of K")
    p.add_argument("--no-reference", action="store_true",
                   help="`steps`: skip the PyTorch reference's step times")
    p.add_argument("--formed-time", action="store_true",
                   help="I3D's stem convolves the video resized along time formed, not the "
                        "video itself with kernels composed with the resize (ops.TimeResized; "
                        "for A/B against kvjax before the composition)")
    p.add_argument("--reference", help="`quality`: a reference_torch.py quality JSON")
    p.add_argument("--max-steps", type=int, default=400, help="`quality`: cap per setting")
    args = p.parse_args(argv)
    if args.mode == "quality" and not args.reference:
        p.error("quality needs --reference results/reference_quality_<stamp>.json")

    info = machine()
    print(json.dumps(info), flush=True)
    if args.formed_time:
        from kvjax.models.i3d import InceptionI3d
        InceptionI3d.takes_time_resized = False
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
        layers = args.layers.split(",")
        if not args.no_reference:
            out["reference_step_s"] = reference_step_times(model, layers, args.size, input_size,
                                                           args.steps)
        out["step_times"] = []
        try:
            step_times(model, layers, args.kernels, args.size, input_size, args.steps,
                       info["matmul_gflops_f32"], args.auto_chunks, rows=out["step_times"])
        except KeyboardInterrupt:  # stopped (e.g. `timeout -s INT`): save the rows measured
            out["interrupted"] = True
            print("interrupted: saving the rows measured so far", flush=True)
        for row in out["step_times"]:
            ref = out.get("reference_step_s", {}).get(row["layer"])
            if ref and "step_s" in row:
                row["reference_step_s_per_kernel"] = ref
                row["speedup_vs_reference"] = ref / row["step_s_per_kernel"]
    if args.mode in ("converge", "all"):
        out["convergence"] = curves(model, args.layer, 8, input_size,
                                    _param_configs(args.params, args.size), args.every,
                                    args.converge_steps, relu_grad=args.relu_grad)
    if args.mode == "quality":
        with open(args.reference) as f:
            ref = json.load(f)
        rows = ref["rows"]
        q_input = tuple(rows[0]["model_input"])
        target = float(np.mean([r["activation"][-1] for r in rows]))
        out["reference"] = {"file": os.path.basename(args.reference), "layer": rows[0]["layer"],
                            "kernels": [r["kernel"] for r in rows], "model_input": q_input,
                            "steps": rows[0]["steps"][-1], "mean_activation": target,
                            "seconds_per_kernel": [r["seconds"][-1] for r in rows]}
        out["quality"] = curves(model, rows[0]["layer"], len(rows), q_input,
                                _param_configs(args.params, args.size, args.max_steps),
                                args.every, args.max_steps, target=target,
                                kernel_targets=[r["activation"][-1] for r in rows])
    out["machine"]["loadavg_end"] = os.getloadavg()
    path = save_results(out, f"stage1_{args.mode}", RESULTS)
    if "convergence" in out:
        plot_curves(out["convergence"], path[:-len(".json")] + ".png")


def plot_curves(rows: list[dict], path: str) -> None:
    """The rows' mean objective (no transform) against the seconds of steps (compilation
    excluded, as in the JSON), one line per setting, written to `path` (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for row in rows:
        label = row["label"] if "=" in row["label"] else (  # a preset with overrides: as given
            f"{row['param']}, lr {row['lr']:g}"
            + (f", decay {row['spectral_decay']:g}" if row["param"] == "spectral" else ""))
        ax.plot(row["seconds"], row["activation"], marker=".", label=label)
    r = rows[0]
    ax.set_xlabel("seconds of optimisation steps (compilation excluded)")
    ax.set_ylabel(f"mean objective of {r['K']} kernels, no transform")
    ax.set_title(f"{r['layer']}, video {'x'.join(map(str, r['size']))}, model input "
                 f"{'x'.join(map(str, r['model_input']))}, {r.get('relu_grad', 'redirect')} "
                 f"ReLU gradient", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    print("wrote", path, flush=True)


if __name__ == "__main__":
    main()
