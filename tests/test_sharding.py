"""Many kernels on many devices (kvjax.devices): sharded runs equal single-device runs, chunk
sizes that fit the memory, and each process's share of the kernels.

The multi-device checks run in a subprocess with 4 CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=4 must be set before JAX starts); the tiny
one-layer model keeps them to seconds.
"""
import json
import os
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from kvjax import devices, stage1, stage2
from kvjax.errors import KvjaxError
from kvjax.io import run_state

import tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = "import sys\nsys.path.insert(0, " + repr(os.path.join(ROOT, "tests")) + ")\n" + """
import jax, numpy as np
from kvjax import stage1, stage2
from tiny_model import SIZE, C, tiny_features, config as config1

CONFIG2 = stage2.Stage2Config.preset("fast", steps=5)

def small_videos(k):
    rng = np.random.default_rng(0)
    base = rng.random((k, 1, 16, 16, 3), dtype=np.float32)
    return np.concatenate([np.roll(base, (t, -t), axis=(2, 3)) for t in range(4)], axis=1)
"""

SHARDED = TINY + """
import dataclasses, sys
import kvjax

out = {}
compiles = [0]  # XLA compilations of anything, from JAX's monitoring events
jax.monitoring.register_event_duration_secs_listener(
    lambda event, secs, **kw: compiles.__setitem__(0, compiles[0] + (
        event == "/jax/core/compile/backend_compile_duration")))
devs = jax.local_devices()
assert len(devs) == 4, devs
f = tiny_features()
kernels = [3, 0, 2, 1, 0, 1, 2]          # any order, repeats; 7 is not a multiple of 4
key = jax.random.key(7)

# Stage 1: single device, chunks of 2 / four devices, chunks of 8 (2 per device).
one = stage1.optimize(f, kernels, config1(chunk_size=2), key, devices=devs[:1])
chunks = []
four = stage1.optimize(f, kernels, config1(chunk_size=6), key,
                       progress=lambda d, t, c, n: chunks.append((c, n, compiles[0])))
out["s1_after"] = compiles[0]
out["s1_chunks"] = sorted(set(chunks))
for name in one._fields:
    out[f"s1_one_{name}"], out[f"s1_four_{name}"] = getattr(one, name), getattr(four, name)
out["s1_type"] = type(four.videos).__name__
# The one-channel readout (kvjax.ops.conv3d_channel's batching rule) inside shard_map.
readout = stage1.optimize(tiny_features(readout=True), kernels, config1(chunk_size=6), key)
out["s1_readout_videos"], out["s1_readout_trace"] = readout.videos, readout.trace
# Coarse to fine (its tiling program inside shard_map too), four devices against one.
coarse = lambda n: config1(chunk_size=n, steps=5, coarse_steps=2)
for tag, r in (("four", stage1.optimize(f, kernels[:4], coarse(4), key)),
               ("one", stage1.optimize(f, kernels[:4], coarse(4), key, devices=devs[:1]))):
    out[f"s1_coarse_{tag}_videos"], out[f"s1_coarse_{tag}_trace"] = r.videos, r.trace

# Stage 2: the same per-device batch (2) on one device and on four.
videos = small_videos(7)
cfg2 = lambda n: dataclasses.replace(CONFIG2, chunk_size=n)
s2_one = stage2.decompose(videos, cfg2(2), key, kernels=kernels, devices=devs[:1])
s2_four = stage2.decompose(videos, cfg2(8), key, kernels=kernels)
for tag, d in (("one", s2_one), ("four", s2_four)):
    for i, leaf in enumerate(jax.tree.leaves(d)):
        out[f"s2_{tag}_{i}"] = leaf

# 16 videos in two chunks of 8 on four devices: the program above serves both chunks.
progress = []
out["s2_before"] = compiles[0]
stage2.decompose(np.concatenate([videos, videos, videos[:2]]), cfg2(8), jax.random.key(9),
                 progress=lambda d, n: progress.append((d, n, compiles[0])))
out["s2_chunk_progress"] = progress

# Both stages through kvjax.visualize, four devices (one kernel each, the fourth padding)
# against one device running the kernels one by one. (The paper preset: with the fast one's
# spectral parameterisation and lr 0.1, the last-bit differences of the sharded program -
# summation order - grew to 8e-6 in 6 steps on one of these kernels.)
cfg = lambda n: kvjax.Config("paper", steps1=6, steps2=5, size=SIZE, chunk=n,
                             stage2_chunk_size=n)
r4 = kvjax.visualize(f, [2, 0, 3], cfg(4), jax.random.key(5))
r1 = kvjax.visualize(f, [2, 0, 3], cfg(1), jax.random.key(5), devices=devs[:1])
for name in ("kernels", "videos", "texture", "motion"):
    out[f"pipe4_{name}"], out[f"pipe1_{name}"] = getattr(r4, name), getattr(r1, name)

np.savez(sys.argv[1], **{k: np.asarray(v) for k, v in out.items()})
"""


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    path = tmp_path_factory.mktemp("sharded") / "out.npz"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-c", SHARDED, str(path)], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def test_sharded_stage1_equals_single_device_in_kernel_order(sharded):
    assert str(sharded["s1_type"]) == "ndarray"  # gathered to host memory
    for name in ("videos", "trace", "activation", "activation_start"):
        a, b = sharded[f"s1_one_{name}"], sharded[f"s1_four_{name}"]
        assert a.shape == b.shape and a.shape[0] == 7, name
        np.testing.assert_allclose(b, a, atol=1e-6, rtol=0, err_msg=name)
    np.testing.assert_array_equal(sharded["s1_one_finite"], sharded["s1_four_finite"])
    for name in ("videos", "trace"):
        np.testing.assert_allclose(sharded[f"s1_readout_{name}"], sharded[f"s1_one_{name}"],
                                   atol=1e-5, rtol=1e-5, err_msg=f"one-channel readout {name}")
    for name in ("videos", "trace"):
        np.testing.assert_allclose(sharded[f"s1_coarse_four_{name}"],
                                   sharded[f"s1_coarse_one_{name}"], atol=1e-5, rtol=1e-5,
                                   err_msg=f"coarse to fine {name}")
    # Kernel order: the repeated kernels 0 (positions 1, 4) and 1 (3, 5) came back in place.
    v = sharded["s1_four_videos"]
    np.testing.assert_allclose(v[1], v[4], atol=1e-6)
    np.testing.assert_allclose(v[3], v[5], atol=1e-6)
    assert not np.allclose(v[0], v[1])


def test_sharded_chunks_are_a_multiple_of_the_devices_and_compile_once(sharded):
    # chunk_size 6 on 4 devices -> chunks of 4 -> 7 kernels in 2 chunks (the last padded).
    # Compilations counted by JAX's monitoring events: none from chunk 0's end onwards
    # (chunk 1's progress reports are after its first segment; _finish of chunk 0 compiled
    # before them, so chunk 1 must see the final count).
    chunks = [tuple(c) for c in sharded["s1_chunks"]]
    assert {(c, n) for c, n, _ in chunks} == {(0, 2), (1, 2)}
    assert all(p == int(sharded["s1_after"]) for c, n, p in chunks if c == 1)
    progress = [tuple(p) for p in sharded["s2_chunk_progress"]]
    assert [(d, n) for d, n, _ in progress] == [(1, 2), (2, 2)]
    assert {c for _, _, c in progress} == {int(sharded["s2_before"])}


def test_sharded_stage2_equals_single_device(sharded):
    n = len([k for k in sharded if k.startswith("s2_one_")])
    assert n == 9  # texture, displacement, velocity, reconstruction, loss_trace, 4 summaries
    for i in range(n):
        one, four = sharded[f"s2_one_{i}"], sharded[f"s2_four_{i}"]
        assert one.shape[0] == 7
        # Same per-device batch, but XLA may order a reduction differently inside the
        # sharded program (last-bit differences growing over the steps: at most 6.3e-7 seen).
        np.testing.assert_allclose(four, one, rtol=1e-5, atol=1e-6)


def test_visualize_on_four_devices_equals_one(sharded):
    np.testing.assert_array_equal(sharded["pipe4_kernels"], [2, 0, 3])
    np.testing.assert_allclose(sharded["pipe4_videos"], sharded["pipe1_videos"], atol=1e-6)
    np.testing.assert_allclose(sharded["pipe4_texture"], sharded["pipe1_texture"], atol=1e-5)
    np.testing.assert_allclose(sharded["pipe4_motion"], sharded["pipe1_motion"], atol=1e-5)


# ------------------------------------------------------------------------- chunk sizes

def test_chunking_rounds_to_the_devices_and_keeps_one_device_as_before():
    assert devices.chunking(10, 8, 1) == (2, 5)      # equal chunks, as stage 1 always did
    assert devices.chunking(5, 2, 1) == (3, 2)
    assert devices.chunking(7, 6, 4) == (2, 4)       # 6 -> 4 per chunk on 4 devices
    assert devices.chunking(3, 1, 4) == (1, 4)       # at least one kernel per device
    assert devices.chunking(9, 8, 2) == (2, 6)       # 5 rounded up to 6
    for n in range(1, 30):
        for size in (1, 3, 8):
            for d in (1, 2, 4):
                chunks, per = devices.chunking(n, size, d)
                assert per % d == 0 and per <= devices.chunk_limit(size, d)
                assert chunks * per >= n > (chunks - 1) * per


def test_chunk_for_memory_with_fake_figures():
    est = devices.MemoryEstimate(per_kernel=10, fixed=100)
    # per device: 0.5 * 1000 - 100 = 400 bytes -> 40 kernels; on 4 devices 160
    assert devices.chunk_for_memory(est, 1000, 1) == 40
    assert devices.chunk_for_memory(est, 1000, 4) == 160
    assert devices.chunk_for_memory(est, 1000, 1, safety=0.25) == 15
    assert devices.chunk_for_memory(est, 150, 2) == 2   # tight: still one per device
    with pytest.raises(KvjaxError, match="free; choose a smaller --size"):
        devices.chunk_for_memory(est, 105, 1)           # one kernel does not fit at all


def test_auto_chunk_with_a_fake_program_and_memory():
    """A program needing fixed + temp + per_kernel * (chunk / devices) bytes per device."""
    fake_devices = [None] * 4
    tried = []

    def bytes_for(chunk, fixed=100, temp=50, per=10):
        return fixed + temp + per * (chunk // 4)

    def need(chunk, **kw):
        tried.append(chunk)
        return bytes_for(chunk, **kw)

    # The whole request fits: one compilation, the one the run uses.
    assert devices.auto_chunk(need, 100, 6, fake_devices, free_bytes=1000) == 8
    assert tried == [8]
    # Too big: derive the bytes per kernel, try smaller chunks until one fits.
    tried.clear()
    chunk = devices.auto_chunk(lambda c: need(c, per=40), 100, 400, fake_devices,
                               free_bytes=1000)
    assert tried[0] == 4 * devices.MAX_PER_DEVICE and tried[-1] == chunk
    assert bytes_for(chunk, per=40) <= 500 < bytes_for(chunk + 4, per=40)  # 8 per device
    assert tried == [128, 36, 32]  # each try smaller; the temporaries made 36 too big
    # One kernel per device that fits the free memory but not the safety margin: allowed.
    assert devices.auto_chunk(lambda c: 700, 100, 8, fake_devices, free_bytes=1000) == 4
    with pytest.raises(KvjaxError, match="one kernel needs about"):
        devices.auto_chunk(lambda c: 1200, 100, 8, fake_devices, free_bytes=1000)
    # No memory analysis: the fallback per device.
    assert devices.auto_chunk(lambda c: None, 0, 1000, fake_devices, free_bytes=1000) == \
        4 * devices.FALLBACK_CHUNK


def test_host_available_memory_reads_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24684084 kB\nMemAvailable:    2048 kB\n")
    assert devices.host_available_memory(str(meminfo)) == 2048 * 1024
    assert devices.free_memory(jax.local_devices()[0]) > 0


@pytest.fixture(scope="module")
def tiny():
    features = tiny_model.tiny_features()
    cfg = stage1.Stage1Config.preset("fast", steps=4, size=tiny_model.SIZE, progress_every=4)
    return features, features.args[0], cfg


class _Compiles:
    """XLA compilations per function name, from JAX's monitoring events."""

    def __init__(self):
        self.names = []
        jax.monitoring.register_event_duration_secs_listener(self)

    def __call__(self, event, secs, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            self.names.append(kw.get("fun_name"))


COMPILES = _Compiles()


def test_program_memory_grows_with_the_chunk(tiny):
    features, w, cfg = tiny
    one, four = (stage1.program_memory(features, cfg, c) for c in (1, 4))
    assert w.size * 4 < one < four <= 4 * one
    two, eight = (stage2.program_memory((4, 12, 12, 3), stage2.Stage2Config.preset(
        "fast", steps=3), c) for c in (2, 8))
    # not always proportional: measured 0.26 MB for 2 videos, 0.72 MB for 4, 1.56 MB for 8
    assert 2 * 4 * 12 * 12 * 3 * 4 < two < eight <= 8 * two


def test_auto_chunk_from_a_fake_free_memory(tiny, monkeypatch):
    features, _, cfg = tiny
    free = int(stage1.program_memory(features, cfg, 3) / devices.SAFETY)   # room for 3
    chunk = stage1.auto_chunk_size(features, 100, cfg, free_bytes=free)
    assert 1 <= chunk <= 3
    assert stage1.program_memory(features, cfg, chunk) <= devices.SAFETY * free
    assert stage1.auto_chunk_size(features, 2, cfg, free_bytes=free) == 2
    monkeypatch.setattr(devices, "free_memory", lambda device: free)
    seen = set()
    r = stage1.optimize(features, range(4), cfg, jax.random.key(0),
                        progress=lambda d, t, c, n: seen.add(n))
    assert seen == {-(-4 // chunk)} and r.videos.shape[0] == 4
    with pytest.raises(KvjaxError, match="one kernel needs about"):
        stage1.auto_chunk_size(features, 4, cfg,
                               free_bytes=stage1.program_memory(features, cfg, 1) // 2)


def test_automatic_chunks_stop_at_four_kernels_per_cpu_device(tiny):
    """On CPU an automatic chunk holds at most CPU_MAX_PER_DEVICE kernels even when the memory
    would take the whole request (larger vmapped programs are slower per kernel there)."""
    features, _, cfg = tiny
    cpu = jax.local_devices(backend="cpu")  # what a CPU-only machine runs on by default
    assert devices.max_per_device(cpu) == devices.CPU_MAX_PER_DEVICE == 4
    gpu = types.SimpleNamespace(platform="gpu")
    assert devices.max_per_device([gpu, gpu]) == devices.MAX_PER_DEVICE
    free = int(4 * stage1.program_memory(features, cfg, 16, devices=cpu) / devices.SAFETY)
    assert stage1.auto_chunk_size(features, 16, cfg, devices=cpu, free_bytes=free) == 4  # 64 fit
    assert stage1.auto_chunk_size(features, 3, cfg, devices=cpu, free_bytes=free) == 3
    seen = set()
    r = stage1.optimize(features, [0, 1, 2, 3] * 2 + [0], cfg, jax.random.key(0),
                        progress=lambda d, t, c, n: seen.add(n), devices=cpu)
    assert seen == {3} and r.videos.shape[0] == 9  # 3 chunks of 4, the last padded


def test_a_run_that_fits_compiles_each_program_once(tiny):
    """The program compiled to measure the memory is the one the run then uses."""
    features = jax.tree_util.Partial(lambda w, v: tiny_model.conv_relu(w, v), tiny[1])  # new
    COMPILES.names.clear()
    stage1.optimize(features, [0, 1, 2], tiny[2], jax.random.key(0))
    stage2.decompose(np.zeros((3, 4, 12, 12, 3), np.float32) + np.arange(12.0)[:, None] / 12,
                     stage2.Stage2Config.preset("fast", steps=2), jax.random.key(0))
    ours = sorted(n for n in COMPILES.names if n in (
        "jit(_start)", "jit(_segment)", "jit(_finish)", "jit(_decompose_chunk)"))
    assert ours == ["jit(_decompose_chunk)", "jit(_finish)", "jit(_segment)", "jit(_start)"]


# ------------------------------------------------------------------------- processes

def test_process_share_is_contiguous_disjoint_and_covers_everything():
    kernels = list(range(10, 33))          # 23 kernels
    for count in (1, 2, 3, 4, 7, 23, 30):
        shares = [devices.process_share(kernels, i, count) for i in range(count)]
        assert sum(shares, []) == kernels  # union in order = all, hence no overlap
        sizes = [len(s) for s in shares]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    assert devices.process_share(kernels, 1, 3) == list(range(18, 26))
    assert devices.process_share([5, 9], 2, 3) == []
    with pytest.raises(KvjaxError, match="0-2 for 3 processes"):
        devices.process_share(kernels, 3, 3)


def test_process_flags_are_checked():
    assert devices.start_processes(None, 4, 2) == (2, 4)
    assert devices.start_processes() == (jax.process_index(), jax.process_count())
    with pytest.raises(KvjaxError, match="both --num-processes and --process-id"):
        devices.start_processes(None, 4, None)
    with pytest.raises(KvjaxError, match="--process-id must be in 0-3"):
        devices.start_processes(None, 4, 4)



@pytest.mark.parametrize("coordinator", ["bogus", "localhost", "localhost:", ":1234",
                                         "localhost:99999", "host name:12", "a:b:12"])
def test_coordinator_must_be_host_port_or_auto(coordinator, monkeypatch):
    monkeypatch.setattr(jax.distributed, "initialize", _no_runtime)
    with pytest.raises(KvjaxError, match=r"--coordinator must be HOST:PORT .* or 'auto'; got"):
        devices.start_processes(coordinator, 2, 0)


def test_coordinator_flags_are_checked_before_the_runtime_starts(monkeypatch):
    monkeypatch.setattr(jax.distributed, "initialize", _no_runtime)
    with pytest.raises(KvjaxError, match=r"--process-id must be in 0-1 .*got 5 of 2"):
        devices.start_processes("localhost:23456", 2, 5)
    with pytest.raises(KvjaxError, match="at least 1; got 0 of 0"):
        devices.start_processes("localhost:23456", 0, 0)
    with pytest.raises(KvjaxError, match="both --num-processes and --process-id"):
        devices.start_processes("auto", 2, None)
    with pytest.raises(KvjaxError, match=r"--process-id must be in 0-1"):
        devices.start_processes("auto", 2, -1)


def test_coordinator_auto_outside_a_cluster_says_what_it_needs(monkeypatch):
    """JAX's own refusal (a ValueError) becomes one KvjaxError naming what 'auto' needs."""
    def initialize(address, num_processes=None, process_id=None):
        assert (address, num_processes, process_id) == (None, None, None)
        raise ValueError("coordinator_address should be defined.")
    monkeypatch.setattr(jax.distributed, "initialize", initialize)
    with pytest.raises(KvjaxError, match=r"auto found no cluster .*coordinator_address should "
                                         r"be defined.*Slurm.*--coordinator HOST:PORT"):
        devices.start_processes("auto")


def test_coordinator_host_port_without_counts_takes_them_from_the_cluster(monkeypatch):
    """HOST:PORT alone: JAX reads the counts from Slurm & co; outside a cluster its refusal
    is one KvjaxError."""
    seen = []

    def initialize(address, num_processes=None, process_id=None):
        seen.append((address, num_processes, process_id))
        raise ValueError("Number of processes must be defined.")
    monkeypatch.setattr(jax.distributed, "initialize", initialize)
    with pytest.raises(KvjaxError, match=r"runtime at localhost:23456 \(JAX: Number of "
                                         r"processes must be defined.\).*Slurm"):
        devices.start_processes("localhost:23456")
    assert seen == [("localhost:23456", None, None)]


def test_coordinator_host_port_reaches_the_runtime(monkeypatch):
    seen = []
    monkeypatch.setattr(jax.distributed, "initialize",
                        lambda *a, **kw: seen.append((a, kw)))
    for address in ("localhost:23456", "10.0.0.1:1", "[::1]:65535", "node-3.cluster:80"):
        devices.start_processes(address, 2, 1)
    assert [a for a, _ in seen] == [("localhost:23456",), ("10.0.0.1:1",), ("[::1]:65535",),
                                    ("node-3.cluster:80",)]
    assert seen[0][1] == {"num_processes": 2, "process_id": 1}


def _no_runtime(*args, **kwargs):
    raise AssertionError("jax.distributed.initialize must not be reached")

def test_run_store_of_several_processes(tmp_path, monkeypatch):
    """Under a multi-process JAX runtime chunks are npz folders; each process removes only
    its own unfinished chunks; every process reads every chunk, orbax or npz."""
    settings = {"layer": "x", "kernels": [0, 1, 2, 3]}
    store = run_state.RunStore(tmp_path)
    store.start(settings, resume=False)
    store.save_chunk({"kernels": np.array([0, 1]), "v": np.arange(4.0).reshape(2, 2)})
    monkeypatch.setattr(run_state, "_processes", lambda: 2)
    store.save_chunk({"kernels": np.array([2, 3]), "v": np.arange(4.0, 8.0).reshape(2, 2),
                      "summary": {"s": np.array([0.5, 1.5], np.float32)}})
    assert os.listdir(tmp_path / "state" / "chunk-00002-00003-2") == ["arrays.npz"]
    for name in ("chunk-00000-00001-2.orbax-checkpoint-tmp-1", "chunk-00002-00003-2.tmp-ab"):
        os.makedirs(tmp_path / "state" / name)
    other = run_state.RunStore(tmp_path)
    other.start(settings, resume=False, owned=[2, 3])   # process 1 of 2
    left = sorted(n for n in os.listdir(tmp_path / "state") if "tmp" in n)
    assert left == ["chunk-00000-00001-2.orbax-checkpoint-tmp-1"]
    done = other.finished()
    assert sorted(done) == [0, 1, 2, 3]
    np.testing.assert_array_equal(done[3]["v"], [6.0, 7.0])
    assert float(done[2]["summary"]["s"]) == 0.5


# ------------------------------------------------------------------------- several processes

CLI = [sys.executable, "-m", "kvjax.cli", "visualize", "--layer", "Conv3d_1a_7x7",
       "--kernels", "0-4", "--size", "4,32,32", "--steps1", "6", "--steps2", "6", "--seed", "3"]


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_under_jax_distributed_write_one_run(tmp_path):
    """Two processes on this machine (CPU backend, 2 devices each) joined by
    jax.distributed: each runs its share into one --out; the union equals a one-process run."""
    out = tmp_path / "two"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    port = _free_port()
    procs = [subprocess.Popen([*CLI, "--out", str(out), "--coordinator", f"localhost:{port}",
                               "--num-processes", "2", "--process-id", str(i)], env=env,
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for i in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(logs)
    assert "process 0 of 2: kernels 0-2" in logs[0] and "x 2" in logs[0]
    assert "process 1 of 2: kernels 3-4" in logs[1] and "process 0 writes" in logs[1]
    chunks = sorted(os.listdir(out / "state"))
    assert chunks == ["chunk-00000-00002-3", "chunk-00003-00004-2"]
    assert all(os.listdir(out / "state" / c) == ["arrays.npz"] for c in chunks)
    two = {k["kernel"]: k for k in json.loads((out / "results.json").read_text())["kernels"]}
    assert sorted(two) == [0, 1, 2, 3, 4]
    for e in two.values():
        assert all((out / f).stat().st_size > 0 for f in e["files"].values())

    one_out = tmp_path / "one"
    r = subprocess.run([*CLI, "--out", str(one_out)], env=dict(env, XLA_FLAGS=""), cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    one = {k["kernel"]: k for k in json.loads((one_out / "results.json").read_text())["kernels"]}
    for k in range(5):
        for name in ("activation", "direction_deg", "speed_px_per_frame"):
            np.testing.assert_allclose(two[k][name], one[k][name], rtol=2e-4, atol=1e-5)
