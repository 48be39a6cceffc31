"""`kvjax visualize`: both stages for chosen kernels of a layer, written into --out.

Reads top to bottom: check every input (nothing is written before that; with --resume the
saved run's settings are checked instead of the ones given), start or resume the run, then
per chunk of kernels: optimise, save the chunk, write its pictures, and rewrite the
layer's report (results.json, contact sheet, index.html).

Devices and processes (kvjax.devices): each chunk's kernels are split over this process's
devices; the chunk size comes from --chunk or from the free device memory. With several
processes (--num-processes / --process-id, with --coordinator for JAX's distributed runtime)
process i runs the contiguous share `process_share(kernels, i, n)` and saves its own chunks
into the shared --out; process 0 waits until every kernel is saved and drawn, then writes the
layer's report.
"""
from __future__ import annotations

import math
import os
import re
import tempfile
import time

import numpy as np

from kvjax.config import Config
from kvjax.errors import KvjaxError
from kvjax.io import figures, pictures, report
from kvjax.io.progress import Progress
from kvjax.io.run_state import RunStore, weights_identity
from kvjax.kernels import parse_kernels

DEFAULT_KERNELS = "0-7"
FILES = {"stage1": "stage1.gif", "texture": "texture.png", "motion": "motion.gif",
         "reconstruction": "reconstruction.gif"}


# -- checks --------------------------------------------------------------------------------
def _overrides(args) -> dict:
    return {"steps1": args.steps1, "steps2": args.steps2,
            "size": list(args.size) if args.size else None, "param": args.param,
            "chunk": args.chunk, "coarse_steps": args.coarse_steps}


def _config(preset: str, overrides: dict) -> Config:
    over = {k: (tuple(v) if isinstance(v, list) else v) for k, v in overrides.items()}
    return Config(preset, **over)


# What a run writes into --out (and its temporaries): any other file there is not kvjax's.
_OURS = re.compile(r"(index\.html|results\.json|run\.json|state|contact_sheet_.+\.png"
                   r"|k\d{4,}_(stage1|texture|motion|reconstruction)\.(gif|png)"
                   r"|\..+\.tmp|\.kvjax-probe-.+)")
_STARTING = re.compile(r"(state|\..+\.tmp|\.kvjax-probe-.+)")  # another process starting


def _check_out(path: str) -> None:
    """Refuse a `path` that is a file or a folder holding files kvjax did not write (a run's
    rewrites would replace someone's index.html). Touches nothing: checked before the model
    loads, so a mistyped --out is told at once."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise KvjaxError(f"--out {path!r} is a file, not a folder; choose a folder")
    if os.path.isdir(path):
        names = os.listdir(path)
        ours = _OURS if "run.json" in names else _STARTING  # run.json comes before the rest
        foreign = sorted(n for n in names if not ours.fullmatch(n))
        if foreign:
            raise KvjaxError(f"--out {path!r} holds files that kvjax did not write "
                             f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''});"
                             f" choose a new or empty folder")


def _make_out(path: str) -> str:
    """Create the checked `path` and make sure it is writable; leaves nothing if not."""
    _check_out(path)  # again: it may have changed while the model loaded
    created = not os.path.exists(path)
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".kvjax-probe-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        if created and os.path.isdir(path) and not os.listdir(path):
            os.rmdir(path)
        raise KvjaxError(f"cannot write to --out {path!r}: {e.strerror or e}; choose a "
                         "writable folder") from None
    return path


def _settings(args, model, layer: str, kernels: list[int], config: Config) -> dict:
    """The run's settings as run.json keeps them; "checkpoint" is the weights' identity
    (absolute path and sha256 of the contents, `weights_identity`), None for built-in ones."""
    return {"model": model.name, "checkpoint": weights_identity(args.checkpoint),
            "layer": layer, "kernels": kernels, "seed": args.seed, "preset": args.preset,
            "overrides": _overrides(args), "config": config.to_dict()}


def _checked_model(name: str, checkpoint: str | None, layer: str | None, kernels,
                   config: Config):
    """(model, layer, kernels) once the layer, the coarse phase's input and the kernels
    (a spec or a list) are checked against the model at the config's input size."""
    from kvjax.models import load_model
    from kvjax.models.base import coarse_size
    model = load_model(name, checkpoint)
    layer = layer or model.default_layer
    info = model.check_layer(layer, config.input_size)
    if config.stage1.coarse_steps:
        small = coarse_size(config.input_size or model.input_size, config.stage1.coarse_factor)
        try:
            model.check_layer(layer, small)
        except KvjaxError as e:
            raise KvjaxError(f"--coarse-steps: the coarse phase's model input is too small: {e}"
                             ) from None
    return model, layer, parse_kernels(kernels, info.channels, layer=layer)


def _saved_run(saved: dict, out: str):
    """(model, layer, kernels, config) of the run saved in `out`, checked as given ones are,
    its weights checked to be those it started with."""
    try:
        name, checkpoint, layer, kernels, preset, overrides = (saved[k] for k in (
            "model", "checkpoint", "layer", "kernels", "preset", "overrides"))
    except (KeyError, TypeError) as e:
        raise KvjaxError(f"{os.path.join(out, 'run.json')} is not a kvjax run's settings "
                         f"({type(e).__name__}: {e}); choose another --out") from None
    config = _config(preset, overrides)
    if checkpoint is not None:
        _check_same_weights(checkpoint, out)
        checkpoint = checkpoint["path"]
    return (*_checked_model(name, checkpoint, layer, kernels, config), config)


def _check_same_weights(saved: dict | str, out: str) -> None:
    """Refuse to continue the run in `out` unless the checkpoint it records (`saved`, from
    run.json) still holds the same weights: its finished kernels came from those."""
    if not (isinstance(saved, dict) and {"path", "sha256"} <= saved.keys()):  # a path alone
        raise KvjaxError(f"the run in {out} records its checkpoint {saved!r} by path alone "
                         f"(an older kvjax), so kvjax cannot tell whether it still holds the "
                         f"same weights; choose another --out")
    path = saved["path"]
    if not os.path.exists(path):
        raise KvjaxError(f"the run in {out} was started with the weights in {path}, which are "
                         f"gone; put them back there to continue it, or choose another --out")
    now = weights_identity(path)["sha256"]
    if now != saved["sha256"]:
        raise KvjaxError(_changed_weights(path, out, saved["sha256"], now))


def _changed_weights(path: str, out: str, then: str, now: str) -> str:
    return (f"the weights in {path} changed since the run in {out} started (sha256 "
            f"{then[:12]}... then, {now[:12]}... now): its finished kernels come from the "
            f"old weights, so the run cannot go on with these; put the old weights back to "
            f"continue it, or choose another --out for the new ones")


def _refuse_changed_weights(saved: dict | None, given: dict, out: str) -> None:
    """A clear refusal when `out` holds a run whose checkpoint is at the same path as the
    given one but with other contents (other differences: RunStore.start's message)."""
    old, new = (saved or {}).get("checkpoint"), given["checkpoint"]
    if isinstance(old, dict) and new is not None and old.get("path") == new["path"] \
            and old.get("sha256") != new["sha256"]:
        raise KvjaxError(_changed_weights(new["path"], out, str(old.get("sha256")),
                                          new["sha256"]))


def _ignored(args, saved: dict) -> list[str]:
    """The settings given with --resume that differ from the saved run's (which win)."""
    given = {"model": args.model, "preset": args.preset, "seed": args.seed, "layer": args.layer}
    ignored = [k for k, v in given.items() if v is not None and v != saved.get(k)]
    ck = saved.get("checkpoint")
    if args.checkpoint is not None and os.path.abspath(args.checkpoint) != (
            ck.get("path") if isinstance(ck, dict) else ck):
        ignored.append("checkpoint")
    if args.kernels is not None and not _same_kernels(args.kernels, saved.get("kernels")):
        ignored.append("kernels")
    if any(v is not None and v != saved.get("overrides", {}).get(k)
           for k, v in _overrides(args).items()):
        ignored.append("overrides")
    return sorted(ignored)


def _same_kernels(spec: str, kernels: list[int]) -> bool:
    try:
        return parse_kernels(spec, max(kernels) + 1) == kernels
    except (KvjaxError, TypeError, ValueError):
        return False


# -- outputs -------------------------------------------------------------------------------
def _file_names(kernel: int) -> dict[str, str]:
    return {k: f"k{kernel:04d}_{name}" for k, name in FILES.items()}


def _write_kernel(out: str, kernel: int, r: dict, upscale: int) -> None:
    names = _file_names(kernel)
    pictures.save_gif(os.path.join(out, names["stage1"]), r["videos"], scale=upscale)
    pictures.save_png(os.path.join(out, names["texture"]), r["texture"], scale=upscale)
    pictures.save_gif(os.path.join(out, names["reconstruction"]),
                      np.clip(r["reconstruction"], 0, 1), scale=upscale)
    s = r["summary"]
    scale = _speed_scale(r["motion"])  # automatic, per kernel; the legend says it
    title = (f"kernel {kernel}: {float(s['direction_deg']):.0f} deg, "
             f"{float(s['speed_px_per_frame']):.2f} px/frame")
    pictures.save_gif(os.path.join(out, names["motion"]),
                      figures.motion_frames(r["motion"], scale, title=title))


def _speed_scale(velocities: np.ndarray) -> float:
    """Full colour of the motion pictures: the 99th percentile of |v| (px/frame) over the
    finite vectors of f32[..., 2], at least 1e-3; a kernel whose stage 2 gave NaN does not
    blank the others' pictures."""
    speed = np.linalg.norm(velocities, axis=-1)
    speed = speed[np.isfinite(speed)]
    return max(float(np.percentile(speed, 99)), 1e-3) if speed.size else 1e-3


def _entries(done: dict) -> list[dict]:
    return [report.kernel_entry(k, {n: r["summary"][n] for n in report.SUMMARY_KEYS},
                                _file_names(k), bool(r["finite"])) for k, r in done.items()]


def _write_report(out: str, settings: dict, done: dict) -> str:
    ks = sorted(done)
    velocities = np.stack([done[k]["motion"] for k in ks])
    scale = _speed_scale(velocities)
    labels = [f"k {k}: {float(done[k]['summary']['direction_deg']):.0f} deg, "
              f"{float(done[k]['summary']['speed_px_per_frame']):.2f} px/f, "
              f"mf {float(done[k]['summary']['motion_fraction']):.2f}" for k in ks]
    sheet = f"contact_sheet_{settings['layer'].replace('/', '_')}.png"
    figures.contact_sheet(os.path.join(out, sheet), np.stack([done[k]["texture"] for k in ks]),
                          velocities, labels, scale,
                          title=f"{settings['model']} / {settings['layer']}")
    entries = _entries(done)
    report.write_results(out, settings["model"], settings["layer"], settings["config"], entries)
    missing = len(settings["kernels"]) - len(done)
    sub = (f"{len(done)} kernels, preset {settings['preset']}, seed {settings['seed']}"
           + (f" ({missing} still to run)" if missing else ""))
    return report.write_index(out, settings["model"], settings["layer"], entries, sheet, sub)


# -- the run -------------------------------------------------------------------------------
def _chunk_size(args_chunk, features, n_kernels: int, config: Config, n_devices: int) -> int:
    """Kernels per CLI chunk: --chunk, or what fits the free memory (stage1.auto_chunk_size),
    as a multiple of the device count and at most n_kernels rounded up to one. It depends on
    the share (not on what is left of it), so a resumed run keeps the same shapes."""
    from kvjax import devices, stage1
    if args_chunk is None:
        args_chunk = stage1.auto_chunk_size(features, n_kernels, config.stage1)
    return min(devices.chunk_limit(args_chunk, n_devices),
               math.ceil(n_kernels / n_devices) * n_devices)


def _wait_for_others(store: RunStore, out: str, kernels: list[int], done: dict,
                     poll_s: float = 2.0, say_every_s: float = 60.0) -> None:
    """Block until every kernel of the run is saved (by any process) and drawn; fill `done`."""
    said = 0.0
    while True:
        done.update(store.finished())
        missing = [k for k in kernels if k not in done or not all(
            os.path.exists(os.path.join(out, f)) for f in _file_names(k).values())]
        if not missing:
            return
        if time.time() - said >= say_every_s:
            said = time.time()
            print(f"waiting for {len(missing)} kernel(s) from other processes "
                  f"({missing[0]}...{missing[-1]})", flush=True)
        time.sleep(poll_s)


def run(args) -> int:
    from kvjax import devices
    from kvjax.pipeline import visualize

    # Check everything first: nothing is written for bad input. --resume continues the run
    # saved in --out with its own settings: those are checked, whatever else is given.
    _check_out(args.out)
    saved = RunStore(args.out).settings() if args.resume else None
    if saved is None:
        config = _config(args.preset, _overrides(args))
    index, count = devices.start_processes(args.coordinator, args.num_processes,
                                           args.process_id)
    import jax  # after start_processes: JAX's distributed runtime must start first
    if saved is None:
        model, layer, kernels = _checked_model(args.model, args.checkpoint, args.layer,
                                               args.kernels or DEFAULT_KERNELS, config)
        given = _settings(args, model, layer, kernels, config)
    else:
        model, layer, kernels, config = _saved_run(saved, args.out)
        given = saved
    out = _make_out(args.out)

    store = RunStore(out)
    _refuse_changed_weights(store.settings(), given, out)
    settings = store.start(given, resume=args.resume, owned=())
    if settings != given:  # run.json appeared (another process) since it was read above
        raise KvjaxError(f"{os.path.join(out, 'run.json')} changed while this run started; "
                         f"run the command again")
    if saved is not None:
        ignored = _ignored(args, saved)
        print(f"resuming the run in {out} with its own settings: {settings['model']} / "
              f"{settings['layer']}, {len(settings['kernels'])} kernels"
              + (f"; ignoring the {', '.join(ignored)} given now" if ignored else ""),
              flush=True)

    share = devices.process_share(kernels, index, count)
    store.remove_unfinished(share)  # only this process's: the others may be saving theirs
    done = store.finished()
    todo = [k for k in share if k not in done]
    upscale = max(1, 224 // config.stage1.size[2])
    for k in sorted(set(done) & set(share)):  # a run killed between saving a chunk and drawing it
        if not all(os.path.exists(os.path.join(out, f)) for f in _file_names(k).values()):
            _write_kernel(out, k, done[k], upscale)
    features = model.features(layer, input_size=config.input_size,
                              relu_grad=config.relu_grad)
    n_dev = len(jax.local_devices())
    chunk = _chunk_size(settings["overrides"].get("chunk"), features, len(share), config,
                        n_dev) if todo else 0
    n_chunks = -(-len(todo) // chunk) if todo else 0
    run_config = _config(settings["preset"], {**settings["overrides"], "chunk": chunk or None})
    who = f"process {index} of {count}: kernels {share[0]}-{share[-1]}, " if count > 1 and \
        share else (f"process {index} of {count}: no kernels, " if count > 1 else "")
    print(f"kvjax visualize: {model.name} / {layer}, {len(kernels)} kernels "
          f"({len(done)} already done), {who}preset {settings['preset']}, video "
          f"{'x'.join(map(str, config.stage1.size))}, model input "
          f"{'x'.join(map(str, config.input_size or model.input_size))}, "
          f"{n_chunks} chunk(s) of {chunk}, backend {jax.default_backend()} x {n_dev}",
          flush=True)
    key = jax.random.key(settings["seed"])
    progress = Progress()
    t0 = time.time()
    index_html = None
    for c in range(n_chunks):
        ks = todo[c * chunk:(c + 1) * chunk]
        padded = ks + [ks[0]] * (chunk - len(ks))  # full chunks: one compiled program
        progress.start(f"chunk {c + 1}/{n_chunks} (kernels {ks[0]}-{ks[-1]})")
        res = visualize(features, padded, run_config, key, progress=progress)
        progress.close()
        arrays = {"kernels": np.asarray(ks), "videos": res.videos, "texture": res.texture,
                  "motion": res.motion, "reconstruction": res.reconstruction,
                  "trace1": res.trace1, "trace2": res.trace2, "finite": res.finite,
                  "summary": res.summary}
        arrays = jax.tree_util.tree_map(lambda a: np.asarray(a)[:len(ks)], arrays)
        store.save_chunk(arrays)
        for i, k in enumerate(ks):
            done[k] = jax.tree_util.tree_map(lambda a: a[i], arrays)
            _write_kernel(out, k, done[k], upscale)
            if not done[k]["finite"]:
                print(f"kernel {k}: NaN/inf during stage 1 (its last finite video is kept) "
                      f"or in stage 2's results; results.json marks it finite: false",
                      flush=True)
        if index == 0:
            if count > 1:
                done.update(store.finished())  # what the other processes saved so far
            index_html = _write_report(out, settings, {k: done[k] for k in kernels if k in done})

    return _finish(store, out, settings, kernels, share, done, index, count, index_html, t0)


def _finish(store: RunStore, out: str, settings: dict, kernels: list[int], share: list[int],
            done: dict, index: int, count: int, index_html: str | None, t0: float) -> int:
    """Process 0 writes the report of the whole run (after the others, if any) and prints it."""
    import jax
    if count > 1 and (index == 0 or jax.process_count() > 1):
        # Under JAX's distributed runtime every process waits, so that all leave together
        # (the runtime's shutdown waits for the others only a few minutes).
        _wait_for_others(store, out, kernels, done)
    if index != 0:
        print(f"done in {time.time() - t0:.0f} s: process {index} of {count} saved kernels "
              f"{share[0] if share else '-'}-{share[-1] if share else '-'} in "
              f"{os.path.abspath(out)}; process 0 writes the report")
        return 0
    if index_html is None or count > 1:
        index_html = _write_report(out, settings, {k: done[k] for k in kernels})
    print(f"done in {time.time() - t0:.0f} s: {index_html}")
    print(f"  results.json, contact sheet and per-kernel GIF/PNG files in {os.path.abspath(out)}")
    for k in kernels:
        s = done[k]["summary"]
        print(f"  kernel {k:4d}: activation {float(s['activation']):9.3g}  direction "
              f"{float(s['direction_deg']):5.0f} deg  speed {float(s['speed_px_per_frame']):5.2f}"
              f" px/frame  motion fraction {float(s['motion_fraction']):.2f}")
    return 0
