"""`kvjax convert SRC DST --arch ARCH` and `kvjax inspect SRC` as plain functions returning text.

The CLI prints what they return; every problem is a KvjaxError saying what was wrong.
"""
from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import os
from typing import Mapping

import numpy as np

from converters import tables
from converters.load import load_checkpoint
from kvjax.errors import WeightsMismatchError
from kvjax.io import model_checkpoint


def convert(src: str, dst: str, arch: str) -> str:
    """Convert the PyTorch/Caffe2/safetensors checkpoint `src` for `arch` into directory `dst`.

    Steps: load safely -> read the config off the tensors -> rename and re-layout through the
    architecture's table (strict: missing, unexpected, mis-shaped tensors are named) -> write
    an orbax checkpoint + manifest atomically. Returns a summary.
    """
    from flax import nnx

    from kvjax.models import weights

    table = tables.get(arch)  # an unknown arch fails before any file is read
    tensors, meta = load_checkpoint(src)
    tensors = table.prepare(tensors)
    config = table.config(tensors, meta)
    net = nnx.eval_shape(lambda: table.make_net(**config))
    try:
        weights.assign(net, tensors, table.mapping(**config), ignore=table.ignore,
                       source=src, arch=arch)
    except WeightsMismatchError as e:
        guess = guess_arch(tensors, meta)
        if guess and guess[0] != arch:
            raise WeightsMismatchError(f"{e}. The file looks like a {guess[0]!r} checkpoint "
                                       f"({guess[1]}): try --arch {guess[0]}") from None
        raise
    ignored = sorted(k for k in tensors if any(fnmatch.fnmatchcase(k, p) for p in table.ignore))
    state = nnx.to_pure_dict(nnx.state(net))
    manifest = model_checkpoint.save(dst, arch, state, {
        "config": config, "source": {"path": os.path.abspath(src), "sha256": sha256(src),
                                     "layout": table.source}})
    return (f"converted {src} ({len(tensors)} tensors, {len(ignored)} declared irrelevant"
            f"{': ' + _short(ignored, 3) if ignored else ''}) -> {dst}\n"
            f"  arch {arch}, config {config or 'default'}, {manifest['tensors']} arrays, "
            f"{manifest['weights']:,} weights\n"
            f"  use it: kvjax layers --model {arch} --checkpoint {dst}   or   "
            f"kvjax.load_model({arch!r}, checkpoint={dst!r})")


def inspect(src: str) -> str:
    """A report on a PyTorch checkpoint file or a converted checkpoint directory: its tensors,
    its convolution layers with their kernel counts, and (for PyTorch files) a guessed arch."""
    if os.path.isdir(src) and model_checkpoint.is_checkpoint(src):
        arch, state, man = model_checkpoint.load(src)
        from kvjax.models.weights import flatten
        flat = flatten(state)
        head = [f"{src}: kvjax converted checkpoint, arch {arch}, config {man.get('config')}",
                f"  source: {(man.get('source') or {}).get('path')} "
                f"(sha256 {str((man.get('source') or {}).get('sha256'))[:16]}...)",
                f"  kvjax {man.get('kvjax_version')}, parity: {man.get('parity') or 'not checked'}"]
        convs = {k[:-len("/kernel")]: v.shape[-1] for k, v in flat.items()
                 if k.endswith("kernel") and v.ndim in (4, 5)}
        return _report(head, flat, convs, "channels-last kernels (kt, kh, kw, Cin, Cout)")
    tensors, meta = load_checkpoint(src)
    convs = {k[:-len(".weight")]: v.shape[0] for k, v in tensors.items()
             if k.endswith("weight") and v.ndim in (4, 5)}
    guess = guess_arch(tensors, meta)
    head = [f"{src}: PyTorch-style checkpoint",
            f"  guessed architecture: " + (f"{guess[0]} ({guess[1]}); convert with "
                                           f"`kvjax convert {src} DST --arch {guess[0]}`"
                                           if guess else f"none of {', '.join(tables.archs())}")]
    return _report(head, tensors, convs, "weights (Cout, Cin, kt, kh, kw)")


def guess_arch(tensors: Mapping[str, np.ndarray], meta: Mapping | None = None
               ) -> tuple[str, str] | None:
    """(arch, reason) of the table whose names and shapes fit `tensors` best, or None."""
    best = None
    for arch in tables.archs():
        table = tables.get(arch)
        try:
            prepared = table.prepare(tensors)
            config = table.config(prepared, meta)
            mapping = table.mapping(**config)
            shapes = _expected_shapes(arch, json.dumps(config, sort_keys=True))
        except Exception:  # a table that cannot even read this file's config does not fit
            continue
        relevant = [k for k in prepared
                    if not any(fnmatch.fnmatchcase(k, p) for p in table.ignore)]
        fit = sum(1 for k, (path, fn) in mapping.items()
                  if k in prepared and np.shape(fn(np.asarray(prepared[k]))) == shapes.get(path))
        score = fit / max(len(set(mapping) | set(relevant)), 1)
        if best is None or score > best[1]:
            best = (arch, score, fit, len(mapping))
    if best is None or best[1] < 0.5:
        return None
    arch, score, fit, n = best
    return arch, ("all tensors match" if score == 1 else
                  f"{fit} of {n} expected tensors match by name and shape")


@functools.lru_cache(maxsize=64)
def _expected_shapes(arch: str, config_json: str) -> dict[tuple, tuple]:
    """{state path: shape} of `arch` built with the (JSON-encoded) config; no memory spent."""
    from flax import nnx

    table = tables.get(arch)
    net = nnx.eval_shape(lambda: table.make_net(**json.loads(config_json)))
    return {tuple(p): tuple(v.get_value().shape) for p, v in nnx.to_flat_state(nnx.state(net))}


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _report(head: list[str], arrays: Mapping[str, np.ndarray], convs: Mapping[str, int],
            layout: str) -> str:
    n = sum(int(np.size(a)) for a in arrays.values())
    lines = head + [f"  {len(arrays)} tensors, {n:,} weights", "",
                    f"convolution layers ({len(convs)}, {sum(convs.values())} kernels; {layout}):"]
    lines += [f"  {name:<48} {k:>5} kernels  {tuple(arrays[_weight_key(name, arrays)].shape)}"
              for name, k in convs.items()]
    lines += ["", "tensors:"]
    lines += [f"  {k:<56} {str(tuple(np.shape(v))):<24} {np.asarray(v).dtype}"
              for k, v in arrays.items()]
    return "\n".join(lines)


def _weight_key(name: str, arrays: Mapping) -> str:
    return next(k for k in (f"{name}.weight", f"{name}/kernel") if k in arrays)


def _short(names, n) -> str:
    return ", ".join(names[:n]) + (f" ... ({len(names)} in all)" if len(names) > n else "")
