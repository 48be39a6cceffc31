"""Resumable runs: every finished chunk of kernels is saved with orbax as it completes.

Layout inside the output folder:

    run.json                  the run's settings (model, layer, config, seed, kernels)
    state/chunk-<k0>-<k1>/     orbax checkpoint of one finished chunk: per-kernel arrays, K first

Orbax writes each checkpoint to a temporary folder and renames it when complete, so a run
killed at any moment leaves finished chunks intact and at most a temporary folder, which is
removed on the next start. A chunk's results depend only on (seed, kernel), so resuming gives
the same numbers as an uninterrupted run.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any

import numpy as np

from kvjax.errors import KvjaxError
from kvjax.io.atomic import write_text

_STATE = "state"


class RunStore:
    """The resumable state of one `visualize` run in `out_dir`."""

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = os.fspath(out_dir)
        self.state_dir = os.path.join(self.out_dir, _STATE)

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

    def start(self, settings: dict, *, resume: bool) -> dict:
        """Begin or continue a run; returns the settings in force.

        A folder holding a run with other settings is refused (nothing is overwritten) unless
        `resume`, which continues the saved run with its own settings.
        """
        saved = self.settings()
        if saved is not None and saved != settings:
            if not resume:
                diff = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
                raise KvjaxError(
                    f"{self.out_dir} holds a run with other settings ({', '.join(diff)} differ); "
                    "pass --resume to continue that run, or choose another --out")
            settings = saved
        os.makedirs(self.state_dir, exist_ok=True)
        self._remove_partial()
        write_text(os.path.join(self.out_dir, "run.json"), json.dumps(settings, indent=2))
        return settings

    # -- chunks ----------------------------------------------------------------------------
    def save_chunk(self, arrays: dict[str, Any]) -> None:
        """Save one finished chunk: a dict of arrays with the kernel axis first, incl. `kernels`."""
        import orbax.checkpoint as ocp
        kernels = np.asarray(arrays["kernels"])
        name = f"chunk-{int(kernels[0]):05d}-{int(kernels[-1]):05d}-{len(kernels)}"
        tree = {k: np.asarray(v) for k, v in _flatten(arrays).items()}
        ck = ocp.StandardCheckpointer()
        ck.save(os.path.join(os.path.abspath(self.state_dir), name), tree, force=True)
        ck.wait_until_finished()

    def finished(self) -> dict[int, dict[str, np.ndarray]]:
        """{kernel: {name: array without the kernel axis}} for every saved chunk."""
        import orbax.checkpoint as ocp
        out: dict[int, dict[str, np.ndarray]] = {}
        if not os.path.isdir(self.state_dir):
            return out
        ck = ocp.StandardCheckpointer()
        for name in sorted(os.listdir(self.state_dir)):
            if not name.startswith("chunk-") or "tmp" in name:
                continue
            tree = _unflatten(ck.restore(os.path.join(os.path.abspath(self.state_dir), name)))
            for i, k in enumerate(np.asarray(tree["kernels"]).tolist()):
                out[int(k)] = _index(tree, i)
        return out

    def _remove_partial(self) -> None:
        for name in os.listdir(self.state_dir):
            if "tmp" in name:  # orbax's unfinished checkpoint folders
                shutil.rmtree(os.path.join(self.state_dir, name), ignore_errors=True)


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
