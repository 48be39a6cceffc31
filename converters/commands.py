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
from typing import Any, Mapping, Sequence

import numpy as np

from converters import parity, tables
from converters.load import WRAPPER_PREFIXES, key_prefixes, load_checkpoint, under_prefix
from kvjax.errors import KvjaxError, WeightsMismatchError
from kvjax.io import model_checkpoint


def convert(src: str, dst: str, arch: str, hparams: Mapping[str, Any] | None = None,
            prefix: str | None = None, ignore: Sequence[str] = ()) -> str:
    """Convert the PyTorch/Caffe2/safetensors checkpoint `src` for `arch` into directory `dst`.

    Steps: refuse a `dst` that cannot be written or holds something else -> load `src`
    safely -> keep the tensors under the key prefix that holds the network (`prefix`, see
    below) -> read the config off the tensors -> rename and re-layout through the
    architecture's table (strict: missing, unexpected, mis-shaped tensors are named) -> write
    an orbax checkpoint + manifest into a temporary folder beside `dst` -> check it there
    (converters.parity: every tensor reads back bit-identical, a forward pass is finite at
    every layer) -> rename it to `dst`. Any failure is a KvjaxError and leaves nothing written.

    `dst` must not exist, be an empty folder, or be a converted checkpoint of the same file
    for the same arch (which is then replaced). `hparams` add to (or replace) the training
    hyper-parameters the file records, for a file that lacks them (VideoGPT's downsample);
    only the names the arch's table declares (`Table.hparams`), with values it accepts.

    `prefix` (e.g. "encoder_q."; the final dot may be left out): convert only the tensors
    whose keys start with it, the prefix removed; a prefix that matches nothing is a
    KvjaxError listing those the file has. "" converts the keys as they are. None (the
    default): the keys as they are if their names fit the arch's table, else the one- or
    two-level key prefix under which the tensors fit it best (`fitting_prefixes`), refused
    when several fit equally well (MoCo's "encoder_q." and "encoder_k."). A prefix used is
    recorded in the manifest's "source" and named in the summary.

    A file that lacks the arch's classifier head entirely (`Table.head`: a backbone saved
    for its features) converts to the model without it (config num_classes 0), which the
    summary says with the last layer left; a head only partly there is an error naming what
    is missing.

    `ignore`: glob patterns (fnmatch, on the keys after the prefix is removed) of tensors to
    leave out, e.g. "fc.*" for a self-supervised projection head (MoCo v2's fc.0, fc.2) in
    the classifier's place: the model is then converted without a head. A pattern that
    matches no tensor is a KvjaxError (a typo would otherwise convert something else). The
    patterns are recorded in the manifest's "source"; where the only unexpected tensors sit
    under the head's module, the mismatch error suggests the pattern.

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
    tensors, used, prefix_line = _select_prefix(tensors, meta, arch, prefix, src, dst)
    tensors, left_out = _leave_out(tensors, ignore, src)
    tensors = table.prepare(tensors)
    table.require(tensors, meta)
    config = table.config(tensors, meta)
    net = nnx.eval_shape(lambda: table.make_net(**config))
    try:
        weights.assign(net, tensors, table.mapping(**config), ignore=table.ignore,
                       source=src, arch=arch)
    except WeightsMismatchError as e:
        if table.head_in(tensors) == "part":
            raise WeightsMismatchError(
                f"{e}. The classifier head ({', '.join(table.head)}) is only partly in the "
                f"file: a checkpoint without its head must lack all of it") from None
        if (hint := _head_module_hint(table, tensors, config)) is not None:
            raise WeightsMismatchError(f"{e}. {hint}") from None
        guess = guess_arch(tensors, meta)
        if guess and guess[0] != arch:
            raise WeightsMismatchError(f"{e}. The file looks like a {guess[0]!r} checkpoint "
                                       f"({guess[1]}): try --arch {guess[0]}") from None
        raise
    ignored = sorted(k for k in tensors if table.irrelevant(k))
    state = nnx.to_pure_dict(nnx.state(net))
    del net  # the check loads the written checkpoint afresh, as a user would
    layers: list[str] = []

    def verify(tmp: str) -> dict:
        from kvjax.models import load_model
        model = load_model(arch, tmp)
        layers.extend(model.layer_names())
        return parity.check(tmp, arch, tensors, table, config, model=model)

    source = {"path": os.path.abspath(src), "sha256": digest, "layout": table.source}
    if used:
        source["prefix"] = used
    if ignore:
        source["ignored"] = list(ignore)
    manifest = model_checkpoint.save(dst, arch, state, {"config": config, "source": source},
                                     verify=verify)
    headless = table.head_in(tensors) == "none"
    return "\n".join([
        f"converted {src} ({len(tensors)} tensors, {len(ignored)} declared irrelevant"
        f"{': ' + _short(ignored, 3) if ignored else ''}) -> {dst}",
        *([f"  {prefix_line}"] if prefix_line else []),
        *([f"  left out by --ignore {' '.join(map(shlex.quote, ignore))}: {len(left_out)} "
           f"tensors ({_short(left_out, 4)})"] if ignore else []),
        f"  arch {arch}, config {config or 'default'}, {manifest['tensors']} arrays, "
        f"{manifest['weights']:,} weights",
        *([f"  no classifier head in the file ({', '.join(table.head)}): converted without "
           f"it; layers up to {layers[-1]}"] if headless and layers else []),
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
    best = _best_arch(tensors, meta)
    under = None if best and best[1][0] == 1 else \
        guess_prefix(tensors, meta, best[1][0] if best else 0.0)
    command = f"kvjax convert {shlex.quote(src)} DST --arch"
    if under:
        arch, prefixes, reason = under
        if len(prefixes) == 1:
            guess = (f"{arch} under the key prefix {prefixes[0]!r} ({reason}); convert with "
                     f"`{command} {arch}`, which finds the prefix")
        else:
            guess = (f"{arch} under each of the key prefixes {', '.join(prefixes)} ({reason}), "
                     f"equally: choose one, e.g. `{command} {arch} --prefix {prefixes[0]}`")
    elif best and best[1][0] >= 0.5:
        guess = (f"{best[0]} ({_reason(best[0], best[1])}); convert with "
                 f"`{command} {best[0]}`")
    else:
        guess = f"none of {', '.join(tables.archs())}"
    head = [f"{src}: PyTorch-style checkpoint", f"  guessed architecture: {guess}"]
    return _report(head, tensors, convs, "weights (Cout, Cin, kt, kh, kw)")


def _inspect_converted(src: str) -> str:
    from kvjax.models import load_model
    from kvjax.models.weights import flatten

    arch, state, man = model_checkpoint.load(src)
    flat = flatten(state)
    source = man.get("source") or {}
    config = man.get("config") or {}
    head = [f"{src}: kvjax converted checkpoint, arch {arch}, "
            f"config {config or 'default'}",
            f"  source: {source.get('path')} (sha256 {str(source.get('sha256'))[:16]}...)"
            + (f", layout of {source['layout']}" if source.get("layout") else "")
            + (f", tensors under the key prefix {source['prefix']!r}"
               if source.get("prefix") else ""),
            f"  converted by kvjax {man.get('kvjax_version')} at {man.get('created')}"]
    if isinstance(config, Mapping) and config.get("num_classes") == 0:
        head.append("  no classifier head (the source had none): the network ends before it")
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
    best = _best_arch(tensors, meta)
    if best is None or best[1][0] < 0.5:
        return None
    return best[0], _reason(*best)


def _best_arch(tensors: Mapping[str, np.ndarray], meta: Mapping | None
               ) -> tuple[str, tuple] | None:
    """(arch, its `_fit`) of the table that fits `tensors` best (the first of equals), or None
    when no table can read a config off them."""
    best = None
    for arch in tables.archs():
        fit = _fit(arch, tensors, meta)
        if fit is not None and (best is None or fit[0] > best[1][0]):
            best = (arch, fit)
    return best


def _fit(arch: str, tensors: Mapping[str, np.ndarray], meta: Mapping | None
         ) -> tuple[float, int, int, dict] | None:
    """(score, fit, expected, config): how `tensors` (a file's keys, before the table's
    `prepare`) fit `arch`'s table with the config it reads off them. fit: the tensors the
    table maps that have its names and, after the layout change, the model's shapes;
    expected: how many it maps; score: fit / (the mapped names together with the file's
    names not declared irrelevant), 1 exactly when every tensor is where it belongs.
    None when the table cannot even read a config off them."""
    table = tables.get(arch)
    try:
        prepared = table.prepare(tensors)
        config = table.config(prepared, meta)
        mapping = table.mapping(**config)
        named = [k for k in mapping if k in prepared]
        # no names in common: no need to build the model for its shapes
        shapes = _expected_shapes(arch, json.dumps(config, sort_keys=True)) if named else {}
    except Exception:  # a table that cannot even read this file's config does not fit
        return None
    relevant = {k for k in prepared if not table.irrelevant(k)}
    fit = sum(1 for k in named
              if _layout_shape(mapping[k][1], np.shape(prepared[k])) == shapes.get(mapping[k][0]))
    return fit / max(len(set(mapping) | relevant), 1), fit, len(mapping), config


@functools.lru_cache(maxsize=1024)
def _layout_shape(layout, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape `layout` (a table's layout change) gives an array of `shape`: found on a
    byte array of that shape, once per shape (guessing compares every tensor's, for every
    table and key prefix, and the tensors' own values do not matter)."""
    return np.shape(layout(np.empty(shape, np.int8)))


def _reason(arch: str, fit: tuple[float, int, int, dict]) -> str:
    """Why `arch` was guessed, from its `_fit`: how many tensors match, and no head if so."""
    score, n_fit, expected, config = fit
    text = ("all tensors match" if score == 1 else
            f"{n_fit} of {expected} expected tensors match by name and shape")
    head = tables.get(arch).head
    if head and config.get("num_classes") == 0:
        text += f", no classifier head ({', '.join(head)})"
    return text


def fitting_prefixes(tensors: Mapping[str, np.ndarray], meta: Mapping | None, arch: str
                     ) -> list[tuple[str, tuple[float, int, int, dict]]]:
    """[(prefix, `_fit`)] of the one- and two-level key prefixes of `tensors`
    (`load.key_prefixes`) under which the tensors, the prefix removed, fit `arch`'s table as
    well as `guess_arch` asks (score >= 0.5), best first (equals in the file's order)."""
    out = []
    for p in key_prefixes(tensors):
        fit = _fit(arch, under_prefix(tensors, p), meta)
        if fit is not None and fit[0] >= 0.5:
            out.append((p, fit))
    return sorted(out, key=lambda e: -e[1][0])


def guess_prefix(tensors: Mapping[str, np.ndarray], meta: Mapping | None = None,
                 than: float = 0.0) -> tuple[str, list[str], str] | None:
    """(arch, prefixes, reason) of the architecture and key prefix under which `tensors`
    fit best (as `fitting_prefixes`, over every arch), where that fits better than `than`
    (the score of the keys as they are); `prefixes` holds every prefix that fits that arch
    equally well (MoCo's "encoder_q." and "encoder_k."). None if none does."""
    best = None  # [score, arch, prefixes, fit]
    for arch in tables.archs():
        for p, fit in fitting_prefixes(tensors, meta, arch):
            if fit[0] <= than:
                break
            if best is None or fit[0] > best[0]:
                best = [fit[0], arch, [p], fit]
            elif fit[0] == best[0] and arch == best[1]:
                best[2].append(p)
    return None if best is None else (best[1], best[2], _reason(best[1], best[3]))


def _select_prefix(tensors: dict[str, np.ndarray], meta: Mapping | None, arch: str,
                   prefix: str | None, src: str, dst: str
                   ) -> tuple[dict[str, np.ndarray], str, str | None]:
    """(the tensors to convert, the prefix removed from their keys ("" for none), a summary
    line or None): `convert`'s choice of the subtree that holds the network (see its
    `prefix`). KvjaxError for a given prefix that matches nothing (listing those there are)
    and for an inferred one that is not unique (naming those that fit equally)."""
    if prefix == "":
        return tensors, "", None
    if prefix is not None:
        given = prefix if prefix.endswith(".") else prefix + "."  # whole key components
        # load_checkpoint removed a wrapper prefix that every key shared ("module.")
        for p in (given, *(given[len(w):] for w in WRAPPER_PREFIXES
                           if given.startswith(w) and len(given) > len(w))):
            kept = under_prefix(tensors, p)
            if kept:
                return kept, p, (f"key prefix {p!r} (--prefix): {len(kept)} of {len(tensors)} "
                                 f"tensors converted, those outside it left out")
        raise KvjaxError(f"--prefix {prefix!r} matches no tensor of {src}; "
                         f"{_prefixes_there(tensors, meta, arch)}")
    if _names_fit(arch, tensors, meta):
        return tensors, "", None
    fits = fitting_prefixes(tensors, meta, arch)
    here = _fit(arch, tensors, meta) if fits else None
    fits = [(p, fit) for p, fit in fits if fit[0] > (here[0] if here else 0.0)]
    if not fits:
        return tensors, "", None  # the table's mismatch names what is wrong
    tied = [p for p, fit in fits if fit[0] == fits[0][1][0]]
    if len(tied) > 1:
        raise KvjaxError(
            f"the tensors of {src} fit {arch} equally well under {len(tied)} key prefixes: "
            f"{', '.join(tied)} (a self-supervised model keeps two encoders, MoCo's query and "
            f"key); choose one with --prefix: kvjax convert {shlex.quote(src)} "
            f"{shlex.quote(dst)} --arch {arch} --prefix {tied[0]}")
    p, fit = fits[0]
    kept = under_prefix(tensors, p)
    return kept, p, (f"key prefix {p!r} found: the only one under which the tensors fit "
                     f"{arch} ({_reason(arch, fit)}); {len(kept)} of {len(tensors)} tensors "
                     f"converted, those outside it left out (--prefix chooses another)")


def _leave_out(tensors: dict[str, np.ndarray], patterns: Sequence[str], src: str
               ) -> tuple[dict[str, np.ndarray], list[str]]:
    """(the tensors none of `patterns` matches, the keys left out); a pattern that matches
    nothing is a KvjaxError listing a few keys there are."""
    left_out = []
    for p in patterns:
        hit = [k for k in tensors if fnmatch.fnmatchcase(k, p)]
        if not hit:
            raise KvjaxError(f"--ignore {p!r} matches no tensor of {src} (keys such as "
                             f"{_short(list(tensors), 4)})")
        left_out += [k for k in hit if k not in left_out]
    return {k: v for k, v in tensors.items() if k not in left_out}, left_out


def _head_module_hint(table: tables.Table, tensors: Mapping[str, np.ndarray],
                      config: Mapping[str, Any]) -> str | None:
    """When every tensor the table does not expect sits under the module of its classifier
    head (MoCo v2's projection MLP fc.0, fc.2 where torchvision's fc belongs), how to convert
    without them; else None."""
    if not table.head:
        return None
    mapping = table.mapping(**config)
    unexpected = [k for k in tensors if k not in mapping
                  and not table.irrelevant(k)]
    modules = {h.split(".")[0] + "." for h in table.head}
    under = [m for m in modules if unexpected and all(k.startswith(m) for k in unexpected)]
    if not under:
        return None
    return (f"The unexpected tensors all sit under {under[0]!r}, where the classifier head "
            f"belongs (a projection head?): --ignore '{under[0]}*' leaves them out and "
            f"converts the network without a head")


def _names_fit(arch: str, tensors: Mapping[str, np.ndarray], meta: Mapping | None) -> bool:
    """Whether the keys of `tensors` are exactly the names `arch`'s table maps (with those it
    declares irrelevant): shapes are left to `weights.assign`, which names each misfit."""
    table = tables.get(arch)
    try:
        prepared = table.prepare(tensors)
        mapping = table.mapping(**table.config(prepared, meta))
    except Exception:  # noqa: BLE001 - `convert` calls config again and reports it
        return False
    relevant = {k for k in prepared if not table.irrelevant(k)}
    return relevant == set(mapping)


def _prefixes_there(tensors: Mapping[str, np.ndarray], meta: Mapping | None, arch: str,
                    n: int = 12) -> str:
    """What a --prefix could be: the file's first-level key prefixes with their tensor
    counts, the keys without one, and those prefixes under which the tensors fit `arch`."""
    top = {p: c for p, c in key_prefixes(tensors).items() if p.count(".") == 1}
    bare = [k for k in tensors if "." not in k]
    listed = [f"{p} ({c})" for p, c in list(top.items())[:n]]
    if len(top) > n:
        listed.append(f"... ({len(top)} prefixes in all)")
    text = ("the keys there are under " + ", ".join(listed)) if listed else "no key has a prefix"
    if bare:
        text += f"; {len(bare)} without one ({_short(bare, 3)})"
    fits = [p for p, _ in fitting_prefixes(tensors, meta, arch)]
    return text + (f"; the tensors fit {arch} under {', '.join(fits)}" if fits else
                   f"; under none of them do the tensors fit {arch}")


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
