"""Converted model checkpoints on disk: an orbax checkpoint of the NNX state + manifest.json.

Layout of a checkpoint directory DST (written by `kvjax convert SRC DST --arch ARCH`):

    DST/manifest.json   {"format": "kvjax-model", "format_version": 1, "arch": "c3d",
                         "config": {...} (constructor arguments, e.g. num_classes),
                         "source": {"path": ..., "sha256": ..., "layout": upstream code},
                         "kvjax_version": ..., "parity": null or what the writer's `verify`
                         returned (for `kvjax convert`, see converters/parity.py),
                         "tensors": number of arrays, "weights": number of values,
                         "created": ISO time}
    DST/state/          orbax checkpoint of the state as nested dicts of f32 arrays,
                        keyed by the model's attribute path (channels-last layouts)

Writes are atomic: everything goes into a temporary directory beside DST, is checked there
(`verify`), and is then renamed; an older converted checkpoint at DST is replaced only once
the new one is complete and checked. A failed write leaves nothing behind, not even the
parent directories it created.
orbax is imported here only.
"""
from __future__ import annotations

import datetime
import json
import os
import shlex
import shutil
import tempfile
from typing import Any, Callable, Mapping

import numpy as np

from kvjax.errors import CorruptFileError, KvjaxError
from kvjax.io.quiet_restore import closed_loop_noise_dropped
from kvjax.io import atomic

FORMAT = "kvjax-model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STATE = "state"


def is_checkpoint(path: str | os.PathLike) -> bool:
    """True when `path` is a directory holding a kvjax manifest."""
    return os.path.isfile(os.path.join(os.fspath(path), MANIFEST))


def save(path: str | os.PathLike, arch: str, state: Mapping[str, Any],
         manifest: Mapping[str, Any] | None = None, *,
         verify: Callable[[str], Mapping[str, Any]] | None = None) -> dict:
    """Write `state` (nested dicts of arrays) and its manifest to the directory `path`.

    `manifest` adds or overrides fields (source, config). `verify(tmp)` is called with the
    complete checkpoint in its temporary directory (loadable like any other) before it
    replaces anything; what it returns becomes the manifest's "parity", and if it raises,
    nothing is written. Returns the manifest written.
    Refuses to overwrite anything that is not itself a converted checkpoint.
    """
    import orbax.checkpoint as ocp

    from kvjax import __version__

    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not (is_checkpoint(path) or _is_empty_dir(path)):
        raise KvjaxError(f"refusing to overwrite {path}: it exists and is not a kvjax converted "
                         "checkpoint; choose a new destination or remove it")
    leaves = _leaves(state)
    man = {"format": FORMAT, "format_version": FORMAT_VERSION, "arch": arch, "config": {},
           "source": None, "kvjax_version": __version__, "parity": None,
           "tensors": len(leaves), "weights": int(sum(a.size for a in leaves)),
           "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    man.update(manifest or {})
    created = _make_parents(os.path.dirname(path))
    tmp = None
    try:
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=os.path.dirname(path))
        os.chmod(tmp, 0o777 & ~atomic.umask())  # mkdtemp's 0700 would hide DST from other users
        state = _to_numpy(state)
        with atomic.signals_deferred(), ocp.StandardCheckpointer() as ckptr:
            ckptr.save(os.path.join(tmp, STATE), state)
        _write_manifest(tmp, man)
        if verify is not None:
            man["parity"] = dict(verify(tmp))
            _write_manifest(tmp, man)
        _replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for d in reversed(created):
            _rmdir_quietly(d)
        if isinstance(e, OSError):  # disk full, permissions: the user's to fix, say so
            raise KvjaxError(f"cannot write {path}: {e.strerror or e}") from None
        raise
    return man


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest of the converted checkpoint at `path` (KvjaxError if it is not one)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise KvjaxError(f"checkpoint not found: {path}")
    if not os.path.isdir(path) or not is_checkpoint(path):
        raise KvjaxError(f"{path} is not a kvjax converted checkpoint (a directory with "
                         f"{MANIFEST}); convert a PyTorch file first: "
                         f"`kvjax convert {shlex.quote(path)} DST --arch ARCH`")
    try:
        with open(os.path.join(path, MANIFEST)) as f:
            man = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CorruptFileError(f"{path}/{MANIFEST} is unreadable: {e}") from None
    if not isinstance(man, dict):
        raise CorruptFileError(f"{path}/{MANIFEST} is not a kvjax model manifest (a JSON "
                               f"{type(man).__name__}, not an object)")
    if man.get("format") != FORMAT or not isinstance(man.get("arch"), str):
        raise CorruptFileError(f"{path}/{MANIFEST} is not a kvjax model manifest "
                               f"(format {man.get('format')!r}, expected {FORMAT!r}; arch "
                               f"{man.get('arch')!r})")
    version = man.get("format_version", 0)
    if type(version) is not int:
        raise CorruptFileError(f"{path}/{MANIFEST}: format_version {version!r} is not a "
                               "whole number")
    if version > FORMAT_VERSION:
        raise KvjaxError(f"{path} was written by a newer kvjax (format version "
                         f"{man['format_version']} > {FORMAT_VERSION}); upgrade kvjax")
    return man


def load(path: str | os.PathLike) -> tuple[str, dict, dict]:
    """(arch, state as nested dicts of numpy arrays, manifest) of the checkpoint at `path`."""
    import orbax.checkpoint as ocp

    man = read_manifest(path)
    try:
        with closed_loop_noise_dropped(), ocp.StandardCheckpointer() as ckptr:
            state = ckptr.restore(os.path.join(os.path.abspath(os.fspath(path)), STATE))
    except Exception as e:  # orbax/tensorstore raise many types for damaged files
        raise CorruptFileError(f"{path}: the orbax state cannot be read "
                               f"({type(e).__name__}: {str(e)[:200]})") from None
    return man["arch"], _to_numpy(state), man


# --------------------------------------------------------------------------------- helpers

def _write_manifest(folder: str, man: Mapping[str, Any]) -> None:
    with open(os.path.join(folder, MANIFEST), "w") as f:
        json.dump(man, f, indent=2, sort_keys=True)


def _make_parents(folder: str) -> list[str]:
    """Create `folder` and its missing ancestors; return those created, outermost first."""
    missing = []
    while not os.path.exists(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    created: list[str] = []
    for d in reversed(missing):
        try:
            os.mkdir(d)
        except OSError as e:
            for c in reversed(created):
                _rmdir_quietly(c)
            raise KvjaxError(f"cannot create folder {d}: {e.strerror or e}") from None
        created.append(d)
    return created


def _rmdir_quietly(folder: str) -> None:
    try:
        os.rmdir(folder)
    except OSError:
        pass


def _is_empty_dir(path: str) -> bool:
    return os.path.isdir(path) and not os.listdir(path)


def _replace(tmp: str, path: str) -> None:
    """Rename `tmp` to `path`, replacing an older checkpoint there only after the rename."""
    if not os.path.exists(path):
        os.rename(tmp, path)
        return
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=os.path.dirname(path))
    os.rmdir(old)
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _leaves(tree: Any) -> list[np.ndarray]:
    if isinstance(tree, Mapping):
        return [a for v in tree.values() for a in _leaves(v)]
    return [np.asarray(tree)]


def _to_numpy(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {str(k): _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)
