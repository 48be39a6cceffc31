"""Where the kernels of a run go: devices, chunk sizes that fit in memory, processes.

Kernels are independent (nothing mixes across them), so spreading them is data parallelism
with no communication at all:

- Devices of one process. The compiled programs of stage 1 and stage 2 take the kernel axis
  split over a 1-D mesh named "kernels" of the process's devices (`jax.shard_map`, kernel-axis
  arguments and outputs `P("kernels")`, weights and keys replicated `P()`): each device runs
  the vmapped program on its block of the chunk, in the same compiled program, and no data
  crosses devices. A chunk is a multiple of the number of devices (`chunking`); outputs come
  back to host memory in kernel order. With one device nothing is sharded: the programs are
  exactly the unsharded ones.
- Memory. Without an explicit chunk size, `auto_chunk` compiles the program for the whole
  request (at most `max_per_device(devices)` kernels per device: 4 on CPU, 32 elsewhere) and
  reads XLA's memory analysis of it; if that exceeds `SAFETY` of the device's free memory
  (`free_memory`), it derives the memory per kernel from it (`MemoryEstimate`), compiles the
  largest chunk that fits, and checks again. So a request for all kernels of a layer runs in as
  many chunks as it needs instead of running out of memory, and a request that fits costs no
  extra compilation (the run reuses the program compiled for the check).
- Processes (hosts). Process i of n takes the contiguous share `process_share(kernels, i, n)`
  and runs it on its own devices; `start_processes` reads who is who (flags, or JAX's
  distributed runtime). The CLI writes each process's chunks into the shared --out folder.
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

from kvjax.errors import KvjaxError

AXIS = "kernels"
KERNEL_AXIS = PartitionSpec(AXIS)   # split along the leading (kernel) axis
REPLICATED = PartitionSpec()        # the same on every device

SAFETY = 0.5            # fraction of the free memory a chunk's programs may plan to use
FALLBACK_CHUNK = 8      # kernels per device when no memory figure is available
MAX_PER_DEVICE = 32     # automatic chunks stay below this, so long runs save work regularly
CPU_MAX_PER_DEVICE = 4  # on CPU devices, where more kernels per program cost more per kernel


# ----------------------------------------------------------------------------- devices

def local_devices(devices: Sequence[jax.Device] | None = None) -> tuple[jax.Device, ...]:
    """`devices`, or all devices of this process on the default backend (jax.local_devices())."""
    devices = tuple(jax.local_devices() if devices is None else devices)
    if not devices:
        raise KvjaxError("devices must name at least one device; got an empty list")
    foreign = [d for d in devices if d.process_index != jax.process_index()]
    if foreign:
        raise KvjaxError(f"devices {foreign} belong to other processes; a process can only "
                         f"use its own: {jax.local_devices()}")
    return devices


def kernel_mesh(devices: Sequence[jax.Device]) -> Mesh | None:
    """A 1-D mesh with axis "kernels" over `devices`, or None for a single device (nothing to
    shard: the programs are then the plain unsharded ones)."""
    if len(devices) == 1:
        return None
    return jax.make_mesh((len(devices),), (AXIS,), axis_types=(AxisType.Auto,),
                         devices=list(devices))


def over_kernels(fn: Callable, mesh: Mesh | None, in_specs: tuple) -> Callable:
    """`fn` (a vmapped program over the leading kernel axis) run blockwise over `mesh`.

    in_specs: one PartitionSpec per argument, KERNEL_AXIS or REPLICATED. Every output is
    split along the kernel axis, so the gathered result is in the input's kernel order.
    With mesh None, `fn` itself.
    """
    if mesh is None:
        return fn
    # check_vma=False: the programs use no collectives, so tracking which values vary across
    # devices buys nothing, and it would reject e.g. a lax.cond whose branches differ in it.
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=KERNEL_AXIS,
                         check_vma=False)


def sharding(devices: Sequence[jax.Device], spec: PartitionSpec):
    """Where an argument of the programs lives: `spec` over the kernel mesh of `devices`, or
    the one device itself."""
    mesh = kernel_mesh(devices)
    return SingleDeviceSharding(devices[0]) if mesh is None else NamedSharding(mesh, spec)


def place(tree: Any, devices: Sequence[jax.Device], spec: PartitionSpec) -> Any:
    """Put every array of `tree` on `devices` with `spec` (once, before a loop of chunks)."""
    return jax.device_put(tree, sharding(devices, spec))


def abstract(tree: Any, devices: Sequence[jax.Device], spec: PartitionSpec) -> Any:
    """ShapeDtypeStructs of `tree`'s arrays as `place` would put them (to compile ahead)."""
    where = sharding(devices, spec)
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=where), tree)


# ----------------------------------------------------------------------------- chunks

def chunk_limit(chunk_size: int, n_devices: int) -> int:
    """`chunk_size` rounded down to a multiple of the device count (at least one per device)."""
    return max(n_devices, int(chunk_size) // n_devices * n_devices)


def chunking(n: int, chunk_size: int, n_devices: int = 1) -> tuple[int, int]:
    """(number of chunks, kernels per chunk) for n kernels: the fewest chunks of at most
    `chunk_limit(chunk_size, n_devices)` kernels, all of the same size (a multiple of
    n_devices, so one compiled program serves them all); the last is padded by the caller
    with repeated kernels. With one device: equal chunks of at most chunk_size."""
    limit = chunk_limit(chunk_size, n_devices)
    n_chunks = math.ceil(n / limit)
    per_chunk = math.ceil(math.ceil(n / n_chunks) / n_devices) * n_devices
    return n_chunks, per_chunk


# ----------------------------------------------------------------------------- memory

class MemoryEstimate(NamedTuple):
    """Device memory of a program, in bytes: `fixed` whatever the chunk (the weights, which
    every device holds) plus `per_kernel` for each kernel the device runs."""
    per_kernel: int
    fixed: int


def program_bytes(compiled) -> int | None:
    """Bytes a compiled program needs on each of its devices: arguments + outputs +
    temporaries - aliased buffers, from XLA's memory analysis; None when the backend gives
    none. (For a program split over several devices the analysis is per device.)"""
    try:
        m = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError, AttributeError):
        return None
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)


def host_available_memory(meminfo: str = "/proc/meminfo") -> int | None:
    """Bytes of RAM available to new allocations (Linux MemAvailable), or None if unknown."""
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the file counts kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def free_memory(device: jax.Device) -> int | None:
    """Bytes a new program may still use on `device`, or None if unknown.

    Accelerators: bytes_limit - bytes_in_use of device.memory_stats() (the allocator's pool,
    i.e. what JAX preallocated). CPU: the host's available RAM divided by this process's CPU
    devices, which all share it (other processes on the same host are not counted).
    """
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001  (backends without memory stats raise various errors)
        stats = None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    available = host_available_memory()
    if available is None:
        return None
    sharing = len(jax.local_devices(backend=device.platform)) if device.platform == "cpu" else 1
    return available // max(sharing, 1)


def chunk_for_memory(est: MemoryEstimate, free_bytes: int, n_devices: int,
                     safety: float = SAFETY) -> int:
    """Kernels per chunk (a multiple of n_devices) such that on every device
    fixed + (chunk / n_devices) * per_kernel <= safety * free_bytes.

    At least one kernel per device; raises KvjaxError when even that exceeds the whole free
    memory (a smaller video or model input is then the only way).
    """
    per_device = int((safety * free_bytes - est.fixed) // est.per_kernel)
    if per_device < 1:
        if est.fixed + est.per_kernel > free_bytes:
            raise _too_big(est.fixed + est.per_kernel, est.fixed, free_bytes)
        per_device = 1
    return per_device * n_devices


def max_per_device(devices: Sequence[jax.Device]) -> int:
    """The most kernels per device of an automatic chunk: MAX_PER_DEVICE (32, so that long runs
    save their work regularly), CPU_MAX_PER_DEVICE (4) on CPU devices.

    On a CPU, vmapping more kernels into one program does not make a kernel cheaper: each step is
    already compute-bound, a larger program only moves more memory, and the one-channel readout
    (kvjax.ops.conv3d_channel) computes min(K, C) channels of the layer's last convolutions for
    K kernels. Stage-1 wall time for the same request, chunk sizes alternating in one process
    (benchmarks/chunk_size.py, 2-core AMD EPYC; benchmarks/results/stage1.md, fifteenth
    session), 16 kernels x 4 steps at the paper preset as one program / in chunks of 4 / of 1:
    I3D Mixed_3b 103.5 / 92.3 / 92.3 s, Mixed_4b 124.6 / 114.0 / 108.0 s; the default run's
    stage 1 (Conv3d_1a_7x7, fast preset, 8 kernels x 100 steps): 10.0 / 8.4 / 6.4 s (one
    convolution, where the readout's extra channels dominate). 4 keeps several kernels in each
    vmapped program; `chunk_size=1` (--chunk 1) is faster still on small layers.
    """
    return CPU_MAX_PER_DEVICE if devices[0].platform == "cpu" else MAX_PER_DEVICE


def auto_chunk(program_memory: Callable[[int], int | None], fixed: int, n_kernels: int,
               devices: Sequence[jax.Device], free_bytes: int | None = None,
               safety: float = SAFETY, max_per_device: int = MAX_PER_DEVICE) -> int:
    """The chunk size for n_kernels on `devices` (a multiple of the device count).

    program_memory(chunk): bytes per device of the program compiled for `chunk` kernels on
    `devices` (the run then reuses that compilation). fixed: the part of it that does not
    grow with the chunk (weights). Starts from the whole request, at most max_per_device
    kernels per device; while the program needs more than safety * free_bytes, derives the
    bytes per kernel from the last figure (fixed part apart) and tries the largest chunk that
    would fit (`chunk_for_memory`), always smaller. free_bytes: free memory per device
    (default: the smallest `free_memory` of `devices`). Without a memory figure or analysis:
    FALLBACK_CHUNK kernels per device.
    """
    n_dev = len(devices)
    chunk = min(math.ceil(n_kernels / n_dev), max_per_device) * n_dev
    if free_bytes is None:
        known = [f for f in (free_memory(d) for d in devices) if f is not None]
        free_bytes = min(known) if known else None
    if free_bytes is None:
        return min(chunk, FALLBACK_CHUNK * n_dev)
    while True:
        need = program_memory(chunk)
        if need is None:
            return min(chunk, FALLBACK_CHUNK * n_dev)
        if need <= safety * free_bytes:
            return chunk
        if chunk == n_dev:  # one kernel per device: fits in the whole free memory, or nothing
            if need > free_bytes:
                raise _too_big(need, fixed, free_bytes)
            return chunk
        per_kernel = math.ceil(max(need - fixed, 1) / (chunk // n_dev))
        smaller = chunk_for_memory(MemoryEstimate(per_kernel, fixed), free_bytes, n_dev, safety)
        chunk = min(smaller, chunk - n_dev)


def _too_big(need: int, fixed: int, free_bytes: int) -> KvjaxError:
    return KvjaxError(
        f"one kernel needs about {_gib(need)} of device memory ({_gib(fixed)} of it weights) "
        f"but only {_gib(free_bytes)} is free; choose a smaller --size (or model input size)")


def _gib(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GiB"


# ----------------------------------------------------------------------------- processes

def process_share(kernels: Sequence[int], index: int, count: int) -> list[int]:
    """Process `index` of `count`'s share of `kernels`: a contiguous block, in order.

    Blocks follow numpy.array_split: sizes differ by at most one, the first len % count
    processes take one more. Over all processes the blocks are disjoint and cover `kernels`.
    The share depends only on (kernels, index, count), so a resumed process takes the same one.
    """
    if not 0 <= index < count:
        raise KvjaxError(f"process index must be in 0-{count - 1} for {count} processes; "
                         f"got {index}")
    n, extra = divmod(len(kernels), count)
    start = index * n + min(index, extra)
    return list(kernels[start:start + n + (index < extra)])


def start_processes(coordinator: str | None = None, num_processes: int | None = None,
                    process_id: int | None = None) -> tuple[int, int]:
    """(this process's index, number of processes) of a run, starting JAX's distributed
    runtime when asked. Call before any JAX computation.

    coordinator "HOST:PORT" (process 0's address; with num_processes and process_id, or
    neither when a cluster environment gives them): jax.distributed.initialize with them;
    "auto": JAX's own detection (JAX_COORDINATOR_ADDRESS, Slurm, Open MPI, Kubernetes, Cloud
    TPU). Without
    coordinator: num_processes / process_id alone name independent processes (no JAX runtime
    joins them); neither: one process, or what JAX already runs (e.g. a multi-host TPU slice).
    Every flag is checked before the runtime starts; what JAX still refuses is a KvjaxError.
    """
    if coordinator is not None:
        address = _coordinator_address(coordinator)
        if (num_processes is None) != (process_id is None):
            raise KvjaxError("give both --num-processes and --process-id, or neither (to "
                             "let JAX read them from the cluster environment)")
        if num_processes is not None:
            _check_process_flags(num_processes, process_id)
        _initialize(address, num_processes, process_id)
        return jax.process_index(), jax.process_count()
    if num_processes is None and process_id is None:
        return jax.process_index(), jax.process_count()
    if num_processes is None or process_id is None:
        raise KvjaxError("give both --num-processes and --process-id (process ids are "
                         "0 to N-1)")
    _check_process_flags(num_processes, process_id)
    return process_id, num_processes


# HOST:PORT with HOST a name, an IPv4 address or a bracketed IPv6 address ([::1]:1234).
_ADDRESS = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})")


def _coordinator_address(coordinator: str) -> str | None:
    """--coordinator as jax.distributed.initialize takes it: None for "auto", else the
    checked "HOST:PORT" (port 1-65535)."""
    if coordinator == "auto":
        return None
    m = _ADDRESS.fullmatch(coordinator)
    if m is None or not 1 <= int(m[2]) <= 65535:
        raise KvjaxError(f"--coordinator must be HOST:PORT (process 0's address and a free "
                         f"port 1-65535, e.g. 10.0.0.1:12345) or 'auto'; got {coordinator!r}")
    return coordinator


def _check_process_flags(num_processes: int, process_id: int) -> None:
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise KvjaxError(f"--process-id must be in 0-{max(num_processes, 1) - 1} and "
                         f"--num-processes at least 1; got {process_id} of {num_processes}")


def _initialize(address: str | None, num_processes: int | None,
                process_id: int | None) -> None:
    """jax.distributed.initialize, its refusals (ValueError: what it could not find) as a
    KvjaxError saying what `--coordinator auto` needs."""
    try:
        jax.distributed.initialize(address, num_processes=num_processes,
                                   process_id=process_id)
    except ValueError as e:
        what = ("--coordinator auto found no cluster to join" if address is None else
                f"cannot start JAX's distributed runtime at {address}")
        raise KvjaxError(
            f"{what} (JAX: {e}): without --num-processes and --process-id JAX reads them "
            f"from Slurm, Open MPI, Kubernetes or a Cloud TPU slice ('auto' the address too, "
            f"or from JAX_COORDINATOR_ADDRESS=HOST:PORT); elsewhere give --coordinator "
            f"HOST:PORT --num-processes N --process-id I") from None


def to_host(tree: Any) -> Any:
    """Every array of `tree` as a numpy array in host memory (gathered from its devices)."""
    return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))
