"""The machine a benchmark ran on, recorded with every result (the machines here are shared,
so the load average is part of the record)."""
from __future__ import annotations

import os
import platform
import sys


def describe(**extra) -> dict:
    """CPU model, cores, OS, Python, the versions of jax/torch if imported, load average."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    out = {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
           "python": platform.python_version(), "loadavg_start": os.getloadavg()}
    if "jax" in sys.modules:
        jax = sys.modules["jax"]
        out.update(jax=jax.__version__, backend=jax.default_backend(),
                   devices=[str(d) for d in jax.devices()])
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        out.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    out.update(extra)
    return out
