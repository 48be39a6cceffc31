"""The machine a benchmark ran on, recorded with every result (the machines here are shared,
so the load average is part of the record), the median timing of a call, and the atomic writing
of results and videos."""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time


# Environment variables that change how fast the same program runs (XLA's flags, glibc's
# malloc, thread counts): recorded with every result when set.
PERF_ENV = ("XLA_FLAGS", "JAX_PLATFORMS", "JAX_ENABLE_X64", "GLIBC_TUNABLES", "MALLOC_ARENA_MAX",
            "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS",
            "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "LD_PRELOAD")


def describe(**extra) -> dict:
    """CPU model, cores, OS, Python, the versions of jax/torch if imported, load average, and
    the PERF_ENV variables set (`env`)."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    out = {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
           "python": platform.python_version(), "loadavg_start": os.getloadavg(),
           "env": {k: os.environ[k] for k in PERF_ENV if k in os.environ}}
    if "jax" in sys.modules:
        jax = sys.modules["jax"]
        out.update(jax=jax.__version__, backend=jax.default_backend(),
                   devices=[str(d) for d in jax.devices()],
                   device_kinds=[d.device_kind for d in jax.devices()])
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        out.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
        if torch.cuda.is_available():
            out.update(torch_cuda=torch.version.cuda,
                       torch_gpu=torch.cuda.get_device_name(0),
                       torch_cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                       torch_matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    out.update(extra)
    return out


def median_time(step, repeats: int) -> float:
    """Median seconds of `step()` over `repeats` runs after one warm-up run."""
    step()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def save_results(doc: dict, name: str, results_dir: str) -> str:
    """Write `doc` as JSON to results_dir/<name>_<UTC time stamp>.json (atomically: a crash
    leaves no half file), print and return the path."""
    import datetime
    import json
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    os.makedirs(results_dir, exist_ok=True)
    path = os.path.join(results_dir, f"{name}_{stamp}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(path + ".tmp", path)
    print("wrote", path, flush=True)
    return path


def save_videos(path: str, videos, kernels, layer: str, input_size, **info) -> None:
    """Write videos f32[K, T, H, W, 3] (RGB in [0, 1]) with their kernels, layer and model
    input size (what reference_torch.py `robust` reads) to the .npz `path`, atomically."""
    import numpy as np
    tmp = path + ".tmp.npz"
    np.savez(tmp, videos=np.asarray(videos), kernels=np.asarray(kernels), layer=layer,
             input_size=np.asarray(input_size), **info)
    os.replace(tmp, path)
