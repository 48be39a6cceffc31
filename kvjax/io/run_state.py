"""Resumable runs: every finished chunk of kernels is saved as it completes.

Layout inside the output folder:

    run.json                      the run's settings (model, layer, config, seed, kernels)
    state/chunk-<k0>-<k1>-<n>/    one finished chunk of n kernels (first k0, last k1):
                                  per-kernel arrays, K first, and `run_fingerprint`
                                  (u8[32], the sha256 of the settings it was made with)

A chunk folder is an orbax checkpoint. Under JAX's distributed runtime (several processes,
jax.process_count() > 1) it is instead `arrays.npz` (numpy's zip of arrays): orbax then saves
only checkpoints that all processes write together (it refuses a process-local array, and
writes numpy arrays from process 0 only), while here every process saves its own chunks when
it finishes them. Either kind is written to a temporary folder (`tmp` in its name) and renamed
when complete, so a run killed at any moment leaves finished chunks intact and at most a
temporary folder, which the next start removes. Several processes share one folder: each
removes only its own kernels' temporary folders. A chunk's results depend only on (seed,
kernel), so resuming gives the same numbers as an uninterrupted run.

Only chunks of the run in force are taken: a chunk whose fingerprint is not that of the
run's settings (left by another run, or saved by a kvjax that did not record it) is refused,
as is a damaged one, with an error naming its folder, before run.json is written.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from typing import Any, Collection

import numpy as np

from kvjax.errors import CorruptFileError, KvjaxError
from kvjax.io.atomic import signals_deferred, write_text
from kvjax.io.quiet_restore import closed_loop_noise_dropped

_STATE = "state"
_NPZ = "arrays.npz"
_FINGERPRINT = "run_fingerprint"  # saved with every chunk


class RunStore:
    """The resumable state of one `visualize` run in `out_dir`."""

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = os.fspath(out_dir)
        self.state_dir = os.path.join(self.out_dir, _STATE)
        self._loaded: dict[str, dict[int, dict]] = {}  # chunk folder -> its kernels, read once
        self._fingerprint: np.ndarray | None = None  # of the settings in force, set by start

    # -- settings --------------------------------------------------------------------------
    def settings(self) -> dict | None:
        """The saved run settings, or None when the folder holds no run."""
        path = os.path.join(self.out_dir, "run.json")
        if not os.path.exists(path):
            return None
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise KvjaxError(f"{path} is unreadable ({e}); choose another --out") from None

    def start(self, settings: dict, *, resume: bool,
              owned: Collection[int] | None = None) -> dict:
        """Begin or continue a run; returns the settings in force.

        A folder holding a run with other settings is refused (nothing is overwritten) unless
        `resume`, which continues the saved run with its own settings. owned: the kernels
        whose unfinished chunk folders are removed (default: all; a process sharing the
        folder with others names its own share, or none and calls `remove_unfinished` later).
        Every saved chunk is read and checked (`finished`) before run.json is written.
        """
        saved = self.settings()
        if saved is not None and saved != settings:
            if not resume:
                diff = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
                raise KvjaxError(
                    f"{self.out_dir} holds a run with other settings ({', '.join(diff)} differ); "
                    "pass --resume to continue that run, or choose another --out")
            settings = saved
        self._fingerprint = fingerprint(settings)
        os.makedirs(self.state_dir, exist_ok=True)
        self.remove_unfinished(owned)
        self.finished()  # a foreign or damaged chunk is refused before anything is written
        write_text(os.path.join(self.out_dir, "run.json"), json.dumps(settings, indent=2))
        return settings

    # -- chunks ----------------------------------------------------------------------------
    def save_chunk(self, arrays: dict[str, Any]) -> None:
        """Save one finished chunk: a dict of arrays with the kernel axis first, incl. `kernels`."""
        kernels = np.asarray(arrays["kernels"])
        name = f"chunk-{int(kernels[0]):05d}-{int(kernels[-1]):05d}-{len(kernels)}"
        tree = {k: np.asarray(v) for k, v in _flatten(arrays).items()}
        tree[_FINGERPRINT] = self._settings_fingerprint()
        path = os.path.join(os.path.abspath(self.state_dir), name)
        if _processes() > 1:
            _save_npz(path, tree)
            return
        import orbax.checkpoint as ocp
        with signals_deferred():  # orbax writes in threads: never stopped halfway
            ck = ocp.StandardCheckpointer()
            ck.save(path, tree, force=True)
            ck.wait_until_finished()

    def finished(self) -> dict[int, dict[str, np.ndarray]]:
        """{kernel: {name: array without the kernel axis}} for every saved chunk (whichever
        process saved it; chunks already read by this store are not read again).

        Raises CorruptFileError for a chunk that cannot be read and KvjaxError for one made
        with other settings, naming its folder: deleting it has its kernels computed again.
        """
        out: dict[int, dict[str, np.ndarray]] = {}
        if not os.path.isdir(self.state_dir):
            return out
        for name in sorted(os.listdir(self.state_dir)):
            if not name.startswith("chunk-") or "tmp" in name:
                continue
            if name not in self._loaded:
                self._loaded[name] = self._read_chunk(name)
            out.update(self._loaded[name])
        return out

    def _read_chunk(self, name: str) -> dict[int, dict[str, np.ndarray]]:
        """{kernel: arrays} of the chunk folder `name`, checked to be this run's."""
        path = os.path.join(os.path.abspath(self.state_dir), name)
        again = "delete that folder and run again to compute its kernels again"
        try:
            flat = _load(path)
            made_by = flat.pop(_FINGERPRINT, None)
            tree = _unflatten(flat)
            kernels = np.asarray(tree["kernels"]).tolist()
            chunk = {int(k): _index(tree, i) for i, k in enumerate(kernels)}
        except Exception as e:  # orbax/tensorstore/numpy raise many types for damaged files
            raise CorruptFileError(f"the saved chunk {path} is damaged and cannot be read: "
                                   f"{again} ({type(e).__name__}: {str(e)[:200]})") from None
        if made_by is None or not np.array_equal(made_by, self._settings_fingerprint()):
            raise KvjaxError(f"the saved chunk {path} was not made with the settings of this "
                             f"run ({os.path.join(self.out_dir, 'run.json')}): it comes from "
                             f"another run or an older kvjax; {again}, or choose another --out")
        return chunk

    def _settings_fingerprint(self) -> np.ndarray:
        if self._fingerprint is None:  # not started: the run saved in the folder
            self._fingerprint = fingerprint(self.settings() or {})
        return self._fingerprint

    def remove_unfinished(self, owned: Collection[int] | None = None) -> None:
        """Remove the temporary folders of unfinished chunks whose first kernel is in `owned`
        (default: all of them)."""
        owned = None if owned is None else set(int(k) for k in owned)
        for name in os.listdir(self.state_dir):
            if "tmp" not in name:  # orbax's and _save_npz's unfinished folders say tmp
                continue
            if owned is not None and _first_kernel(name) not in owned:
                continue  # another process's chunk, maybe being written now
            shutil.rmtree(os.path.join(self.state_dir, name), ignore_errors=True)


def fingerprint(settings: dict) -> np.ndarray:
    """u8[32]: the sha256 of `settings` as JSON with sorted keys (tuples read as lists)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return np.frombuffer(hashlib.sha256(text.encode()).digest(), np.uint8).copy()


def weights_identity(path: str | os.PathLike | None) -> dict | None:
    """What a run records of its --checkpoint: None for the model's built-in weights (no
    checkpoint), else {"path": absolute path, "sha256": hex digest of what the weights are}:
    for a kvjax converted checkpoint, of its arch, config and arrays (names, dtypes, shapes,
    values), so converting the same file again, which writes new time stamps, keeps the
    identity; for any other folder, of its files (each one's path relative to the folder,
    size and bytes, in sorted order); for a file, of its bytes (streamed in 1 MiB blocks)."""
    if path is None:
        return None
    path = os.path.abspath(os.fspath(path))
    h = hashlib.sha256()
    from kvjax.io import model_checkpoint
    if os.path.isdir(path) and model_checkpoint.is_checkpoint(path):
        arch, state, man = model_checkpoint.load(path)
        h.update(json.dumps({"arch": arch, "config": man.get("config")}, sort_keys=True,
                            default=str).encode())
        for name, a in sorted(_flatten(state).items()):
            a = np.ascontiguousarray(a)
            h.update(f"\0{name}\0{a.dtype.str}\0{a.shape}\0".encode())
            h.update(a.tobytes())
    elif os.path.isdir(path):
        for rel in _files_below(path):
            full = os.path.join(path, rel)
            h.update(f"{rel}\0{os.path.getsize(full)}\0".encode())
            _hash_file(h, full)
    else:
        _hash_file(h, path)
    return {"path": path, "sha256": h.hexdigest()}


def _files_below(folder: str) -> list[str]:
    """Paths of every file under `folder`, relative to it, sorted."""
    out = []
    for root, dirs, files in os.walk(folder):
        out.extend(os.path.relpath(os.path.join(root, f), folder) for f in files)
    return sorted(out)


def _hash_file(h, path: str, block: int = 1 << 20) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)


def _processes() -> int:
    import jax
    return jax.process_count()


def _first_kernel(name: str) -> int | None:
    """k0 of a chunk folder name chunk-<k0>-<k1>-<n>[...], or None."""
    try:
        return int(name.split("-")[1])
    except (IndexError, ValueError):
        return None


def _save_npz(path: str, tree: dict[str, np.ndarray]) -> None:
    """`path`/arrays.npz, written in a temporary folder renamed into place when complete."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    os.makedirs(tmp)
    try:
        with open(os.path.join(tmp, _NPZ), "wb") as f:
            np.savez(f, **tree)
            f.flush()
            os.fsync(f.fileno())
        if os.path.isdir(path):
            shutil.rmtree(path)
        os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load(path: str) -> dict[str, np.ndarray]:
    """The flat arrays of one chunk folder, either kind."""
    npz = os.path.join(path, _NPZ)
    if os.path.exists(npz):
        with np.load(npz, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    import orbax.checkpoint as ocp
    if _processes() > 1:
        # Read by this process alone: no barrier with processes that are not reading.
        import jax
        me = jax.process_index()
        options = ocp.options.MultiprocessingOptions(
            primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"kvjax-read-{me}")
        with closed_loop_noise_dropped():
            return ocp.StandardCheckpointer(multiprocessing_options=options).restore(path)
    with closed_loop_noise_dropped():
        return ocp.StandardCheckpointer().restore(path)


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _unflatten(flat: dict[str, Any]) -> dict:
    out: dict = {}
    for k, v in flat.items():
        node = out
        *parents, leaf = k.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = np.asarray(v)
    return out


def _index(tree: dict, i: int) -> dict:
    return {k: _index(v, i) if isinstance(v, dict) else v[i] for k, v in tree.items()}
