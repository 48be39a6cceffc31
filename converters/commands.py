"""`kvjax convert SRC DST --arch ARCH` and `kvjax inspect SRC` as plain functions returning text.

The CLI prints what they return; every problem is a KvjaxError saying what was wrong, and a
failed conversion writes nothing.
"""
from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import os
import shlex
from typing import Any, Mapping

import numpy as np

from converters import parity, tables
from converters.load import load_checkpoint
from kvjax.errors import KvjaxError, WeightsMismatchError
from kvjax.io import model_checkpoint


def convert(src: str, dst: str, arch: str, hparams: Mapping[str, Any] | None = None) -> str:
    """Convert the PyTorch/Caffe2/safetensors checkpoint `src` for `arch` into directory `dst`.

    Steps: refuse a `dst` that cannot be written or holds something else -> load `src`
    safely -> read the config off the tensors -> rename and re-layout through the
    architecture's table (strict: missing, unexpected, mis-shaped tensors are named) -> write
    an orbax checkpoint + manifest into a temporary folder beside `dst` -> check it there
    (converters.parity: every tensor reads back bit-identical, a forward pass is finite at
    every layer) -> rename it to `dst`. Any failure is a KvjaxError and leaves nothing written.

    `dst` must not exist, be an empty folder, or be a converted checkpoint of the same file
    for the same arch (which is then replaced). `hparams` add to (or replace) the training
    hyper-parameters the file records, for a file that lacks them (VideoGPT's downsample);
    only the names the arch's table declares (`Table.hparams`), with values it accepts.
    Returns a summary.
    """
    from flax import nnx

    from kvjax.models import weights

    table = tables.get(arch)  # an unknown arch or --hparam fails before any file is read
    hparams = table.check_hparams(hparams or {})
    existing = _check_destination(dst)
    tensors, meta = load_checkpoint(src)
    if hparams:
        meta = {**meta, "hyper_parameters": {**meta.get("hyper_parameters", {}), **hparams}}
    digest = sha256(src)
    if existing is not None:
        _check_replaceable(dst, existing, arch, digest)
    tensors = table.prepare(tensors)
    table.require(tensors, meta)
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
    del net  # the check loads the written checkpoint afresh, as a user would
    manifest = model_checkpoint.save(
        dst, arch, state,
        {"config": config, "source": {"path": os.path.abspath(src), "sha256": digest,
                                      "layout": table.source}},
        verify=lambda tmp: parity.check(tmp, arch, tensors, table, config))
    return "\n".join([
        f"converted {src} ({len(tensors)} tensors, {len(ignored)} declared irrelevant"
        f"{': ' + _short(ignored, 3) if ignored else ''}) -> {dst}",
        f"  arch {arch}, config {config or 'default'}, {manifest['tensors']} arrays, "
        f"{manifest['weights']:,} weights",
        *(f"  {line}" for line in parity.describe(manifest["parity"])),
        f"  use it: kvjax layers --model {arch} --checkpoint {shlex.quote(dst)}   or   "
        f"kvjax.load_model({arch!r}, checkpoint={dst!r})"])


def inspect(src: str) -> str:
    """A report on a PyTorch checkpoint file or a converted checkpoint directory.

    PyTorch file: its tensors and convolution layers with kernel counts (file order), and a
    guessed arch. Converted checkpoint: arch, source, the checks recorded at conversion, the
    layers `kvjax visualize --layer` takes, its convolution kernels and tensors, all in
    network order (the order the forward pass uses them).
    """
    if os.path.isdir(src) and model_checkpoint.is_checkpoint(src):
        return _inspect_converted(src)
    tensors, meta = load_checkpoint(src)
    convs = {(k[:-len(".weight")] if k.endswith(".weight") else k): v.shape[0]
             for k, v in tensors.items() if k.endswith("weight") and v.ndim in (4, 5)}
    guess = guess_arch(tensors, meta)
    head = [f"{src}: PyTorch-style checkpoint",
            "  guessed architecture: " + (f"{guess[0]} ({guess[1]}); convert with "
                                           f"`kvjax convert {shlex.quote(src)} DST --arch "
                                           f"{guess[0]}`"
                                           if guess else f"none of {', '.join(tables.archs())}")]
    return _report(head, tensors, convs, "weights (Cout, Cin, kt, kh, kw)")


def _inspect_converted(src: str) -> str:
    from kvjax.models import load_model
    from kvjax.models.weights import flatten

    arch, state, man = model_checkpoint.load(src)
    flat = flatten(state)
    source = man.get("source") or {}
    head = [f"{src}: kvjax converted checkpoint, arch {arch}, "
            f"config {man.get('config') or 'default'}",
            f"  source: {source.get('path')} (sha256 {str(source.get('sha256'))[:16]}...)"
            + (f", layout of {source['layout']}" if source.get("layout") else ""),
            f"  converted by kvjax {man.get('kvjax_version')} at {man.get('created')}"]
    head += [f"  {line}" for line in parity.describe(man.get("parity"))]
    layout = "channels-last kernels (kt, kh, kw, Cin, Cout)"
    try:
        model = load_model(arch, src)
        rows, order = model.layers(), _state_order(model)
    except KvjaxError as e:  # e.g. an arch this kvjax does not know: still list the arrays
        layers = [f"layers: cannot build the model ({e}); arrays listed alphabetically"]
    else:
        flat, layout = {k: flat[k] for k in order}, f"{layout}, in network order"
        width = max(len(r.name) for r in rows)
        layers = [f"layers in network order ({len(rows)}; what `kvjax visualize --layer` takes; "
                  f"output t x h x w for input {'x'.join(map(str, model.input_size))}):"]
        layers += [f"  {r.name:<{width}} {r.channels:>5} kernels  "
                   f"{'x'.join(map(str, r.shape[:-1])):>12}  {r.read}" for r in rows]
    convs = {k[:-len("/kernel")]: v.shape[-1] for k, v in flat.items()
             if k.endswith("/kernel") and v.ndim in (4, 5)}
    return _report(head, flat, convs, layout, layers)


def _state_order(model) -> list[str]:
    """The model's state paths ("a/b/kernel") in the order its forward pass first uses them,
    read off the traced program (no computation); unused ones follow in state order."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from kvjax.models.base import Taps

    graphdef, state = nnx.split(model.net)
    flat = list(nnx.to_flat_state(state))
    specs = [jax.ShapeDtypeStruct(v.get_value().shape, v.get_value().dtype) for _, v in flat]

    def forward(leaves, x):
        st = nnx.from_flat_state([(p, v.replace(a)) for (p, v), a in zip(flat, leaves)])
        return nnx.merge(graphdef, st)(x, Taps())

    x = jax.ShapeDtypeStruct((1, *model.input_size, 3), jnp.float32)
    jaxpr = jax.make_jaxpr(forward)(specs, x).jaxpr
    index = {id(v): i for i, v in enumerate(jaxpr.invars[:len(flat)])}
    order: dict[int, None] = {}
    for eqn in jaxpr.eqns:
        for v in eqn.invars:
            if id(v) in index:
                order.setdefault(index[id(v)])
    order.update(dict.fromkeys(range(len(flat))))  # never used: keep them, last
    return ["/".join(map(str, flat[i][0])) for i in order]


def _check_destination(dst: str) -> dict | None:
    """Refuse, before any work, a `dst` that cannot become a new converted checkpoint.

    Returns the manifest of a converted checkpoint already at `dst` (replaceable only by a
    conversion of the same file, see `_check_replaceable`), else None.
    """
    path = os.path.abspath(dst)
    if os.path.isdir(path) and model_checkpoint.is_checkpoint(path):
        try:
            return model_checkpoint.read_manifest(path)
        except KvjaxError:
            return {}
    if os.path.isdir(path) and not os.listdir(path):
        return None  # an empty folder is filled
    if os.path.lexists(path):
        what = "a folder that is not empty" if os.path.isdir(path) else "a file"
        raise KvjaxError(f"{dst} exists already and is {what}; kvjax convert writes a new "
                         f"folder: choose a destination that does not exist")
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise KvjaxError(f"cannot create {dst}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise KvjaxError(f"cannot create {dst}: no permission to write in {parent}")
    return None


def _check_replaceable(dst: str, existing: Mapping, arch: str, digest: str) -> None:
    """A converted checkpoint at `dst` is replaced only by converting the same file again."""
    source = existing.get("source") or {}
    if existing.get("arch") == arch and source.get("sha256") == digest:
        if not os.access(os.path.dirname(os.path.abspath(dst)), os.W_OK | os.X_OK):
            raise KvjaxError(f"cannot replace {dst}: no permission to write beside it")
        return
    what = (f"a converted {existing.get('arch')!r} checkpoint of {source.get('path')}"
            if existing else "an unreadable converted checkpoint")
    raise KvjaxError(f"{dst} exists already: {what}, not of this file with --arch {arch}; "
                     "remove it or choose another destination (converting the same file "
                     "with the same --arch again replaces it)")


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
            layout: str, layers: list[str] = ()) -> str:
    n = sum(int(np.size(a)) for a in arrays.values())
    lines = head + [f"  {len(arrays)} tensors, {n:,} weights", ""]
    if layers:
        lines += [*layers, ""]
    lines += [f"convolution layers ({len(convs)}, {sum(convs.values())} kernels; {layout}):"]
    lines += [f"  {name:<48} {k:>5} kernels  {tuple(arrays[_weight_key(name, arrays)].shape)}"
              for name, k in convs.items()]
    lines += ["", "tensors:"]
    lines += [f"  {k:<56} {str(tuple(np.shape(v))):<24} {np.asarray(v).dtype}"
              for k, v in arrays.items()]
    return "\n".join(lines)


def _weight_key(name: str, arrays: Mapping) -> str:
    return next(k for k in (f"{name}.weight", f"{name}/kernel", name) if k in arrays)


def _short(names, n) -> str:
    return ", ".join(names[:n]) + (f" ... ({len(names)} in all)" if len(names) > n else "")
