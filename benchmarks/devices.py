"""Kernels per hour against the number of devices: stage 1 + stage 2, kernel axis sharded.

    PYTHONPATH=. python benchmarks/devices.py [--layer Conv3d_1a_7x7] [--kernels 8]
        [--size 8,32,32] [--steps1 30] [--steps2 30] [--devices 1,2,4] [--repeats 2]

The `fast` preset (spectral parameterisation, centred transform, Adam; stage 2 from the first
frame and the global motion) on kernels 0..K-1 of a small I3D layer, at a reduced video size
and step count so that the whole sweep takes a few minutes on a 2-core CPU. For each device
count n, one chunk of K kernels is split over the first n devices (K/n per device, one
compiled program per stage); the first run compiles, the best of `--repeats` further runs is
timed. kernels/hour = K / (stage-1 + stage-2 seconds), compilation excluded (it is recorded).

Devices: the default backend's devices of this process. On CPU the script starts JAX with
XLA_FLAGS=--xla_force_host_platform_device_count=<max of --devices>: such devices share the
host's cores, so on a machine with few cores expect little gain (XLA already spreads one
device's work over all cores). On a multi-GPU machine the same command measures real devices.

Results: benchmarks/results/devices_<backend>_<timestamp>.json (rows and the machine
description) and benchmarks/results/devices-<backend>.md (the table), as benchmarks/stage1.py.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import sys
import time


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layer", default="Conv3d_1a_7x7")
    p.add_argument("--kernels", type=int, default=8, help="K, kernels 0..K-1")
    p.add_argument("--size", default="8,32,32", help="T,H,W of the optimised video")
    p.add_argument("--steps1", type=int, default=30)
    p.add_argument("--steps2", type=int, default=30)
    p.add_argument("--devices", default="1,2,4", help="device counts to compare")
    p.add_argument("--repeats", type=int, default=2, help="timed runs after the compiling one")
    return p.parse_args(argv)


ARGS = _args()
COUNTS = [int(n) for n in ARGS.devices.split(",")]
# Before JAX starts: enough CPU devices (harmless where the default backend is an accelerator).
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={max(COUNTS)}").strip()

import jax  # noqa: E402

import kvjax  # noqa: E402
from kvjax import stage1, stage2  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")


def machine() -> dict:
    """benchmarks/stage1.py's machine description (CPU, cores, JAX, devices, load, matmul)."""
    spec = importlib.util.spec_from_file_location("bench_stage1", os.path.join(HERE, "stage1.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.machine()


def one_count(features, config, k: int, devs) -> dict:
    """Compile once, then the best of ARGS.repeats timed runs of both stages on `devs`."""
    kernels = list(range(k))
    t0 = time.perf_counter()
    s1 = stage1.optimize(features, kernels, config.stage1, jax.random.key(0), devices=devs)
    stage2.decompose(s1.videos, config.stage2, jax.random.key(1), kernels=kernels, devices=devs)
    first = time.perf_counter() - t0
    best1 = best2 = float("inf")
    for _ in range(ARGS.repeats):
        t0 = time.perf_counter()
        s1 = stage1.optimize(features, kernels, config.stage1, jax.random.key(0), devices=devs)
        t1 = time.perf_counter()
        stage2.decompose(s1.videos, config.stage2, jax.random.key(1), kernels=kernels,
                         devices=devs)
        t2 = time.perf_counter()
        best1, best2 = min(best1, t1 - t0), min(best2, t2 - t1)
    total = best1 + best2
    return {"devices": len(devs), "kernels": k, "kernels_per_device": k // len(devs),
            "stage1_s": best1, "stage2_s": best2, "total_s": total,
            "kernels_per_hour": k * 3600.0 / total, "first_run_s": first,
            "compile_s_approx": first - total, "loadavg": os.getloadavg()}


def table(rows: list[dict]) -> str:
    lines = ["| devices | kernels per device | stage 1 s | stage 2 s | kernels/hour | speed-up "
             "| first run (compile) s | load avg |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    base = rows[0]["kernels_per_hour"]
    for r in rows:
        lines.append(f"| {r['devices']} | {r['kernels_per_device']} | {r['stage1_s']:.2f} | "
                     f"{r['stage2_s']:.2f} | {r['kernels_per_hour']:.0f} | "
                     f"{r['kernels_per_hour'] / base:.2f}x | {r['first_run_s']:.1f} | "
                     f"{r['loadavg'][0]:.1f} |")
    return "\n".join(lines)


def main() -> int:
    size = tuple(int(v) for v in ARGS.size.split(","))
    local = jax.local_devices()
    counts = [n for n in COUNTS if n <= len(local)]
    if not counts:
        print(f"none of --devices {ARGS.devices} fits the {len(local)} local devices",
              file=sys.stderr)
        return 2
    k = ARGS.kernels
    if any(k % n for n in counts):
        print(f"--kernels {k} must be a multiple of every device count {counts}", file=sys.stderr)
        return 2
    info = machine()
    config = kvjax.Config("fast", size=size, steps1=ARGS.steps1, steps2=ARGS.steps2, chunk=k,
                          stage2_chunk_size=k)
    model = kvjax.load_model("i3d")
    features = model.features(ARGS.layer, input_size=config.input_size)
    print(f"{ARGS.layer}, {k} kernels, video {ARGS.size}, steps {ARGS.steps1} + {ARGS.steps2}, "
          f"backend {jax.default_backend()} with {len(local)} devices", flush=True)
    rows = []
    for n in counts:
        rows.append(one_count(features, config, k, local[:n]))
        print(json.dumps(rows[-1]), flush=True)

    backend = jax.default_backend()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    os.makedirs(RESULTS, exist_ok=True)
    doc = {"benchmark": "devices", "args": vars(ARGS), "machine": info,
           "loadavg_end": os.getloadavg(), "rows": rows}
    json_name = f"devices_{backend}_{stamp}.json"
    with open(os.path.join(RESULTS, json_name), "w") as f:
        json.dump(doc, f, indent=1)
    shared = backend == "cpu"
    notes = [
        f"- Work: I3D `{ARGS.layer}`, kernels 0-{k - 1}, `fast` preset at video {ARGS.size} "
        f"(model input the same), {ARGS.steps1} stage-1 + {ARGS.steps2} stage-2 steps; one "
        f"chunk of {k} kernels split over the devices. Best of {ARGS.repeats} runs after a "
        "compiling one; kernels/hour excludes compilation.",
        f"- Machine: {info['cpu']}, {info['cores']} cores, {info['platform']}, jax "
        f"{info['jax']}, backend {backend}, f32 matmul {info['matmul_gflops_f32']:.0f} GFLOP/s, "
        f"load average {info['loadavg_start'][0]:.1f} at the start. Raw rows: `{json_name}`.",
    ]
    notes.append("- Other jobs share this machine (load average column): compare rows of one run "
                 "only, and read differences of 10-20% as noise.")
    if shared:
        notes.append(
            f"- These are forced host CPU devices (`--xla_force_host_platform_device_count`) "
            f"sharing the same {info['cores']} cores: one device already uses all cores, so "
            "more devices cannot add compute and little or no gain is expected here; the table "
            "checks that sharding costs little. On a machine with several GPUs the same "
            "command measures real devices.")
    md = (f"# Kernels per hour against devices ({backend}), {stamp}\n\n"
          f"`PYTHONPATH=. python benchmarks/devices.py {' '.join(sys.argv[1:])}`".rstrip()
          + "\n\n" + table(rows) + "\n\n" + "\n".join(notes) + "\n")
    with open(os.path.join(RESULTS, f"devices-{backend}.md"), "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
