"""`kvjax visualize`: both stages for chosen kernels of a layer, written into --out.

Reads top to bottom: check every input (nothing is written before that), start or resume the
run, then per chunk of kernels: optimise, save the chunk (orbax), write its pictures, and
rewrite the layer's report (results.json, contact sheet, index.html).
"""
from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from kvjax.config import Config
from kvjax.errors import KvjaxError
from kvjax.io import figures, pictures, report
from kvjax.io.progress import Progress
from kvjax.io.run_state import RunStore
from kvjax.kernels import parse_kernels

DEFAULT_KERNELS = "0-7"
FILES = {"stage1": "stage1.gif", "texture": "texture.png", "motion": "motion.gif",
         "reconstruction": "reconstruction.gif"}


# -- checks --------------------------------------------------------------------------------
def _overrides(args) -> dict:
    return {"steps1": args.steps1, "steps2": args.steps2,
            "size": list(args.size) if args.size else None, "param": args.param,
            "chunk": args.chunk}


def _config(preset: str, overrides: dict) -> Config:
    over = {k: (tuple(v) if isinstance(v, list) else v) for k, v in overrides.items()}
    return Config(preset, **over)


def _check_out(path: str) -> str:
    """Make sure `path` is (or can become) a writable folder; leaves nothing if it cannot."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise KvjaxError(f"--out {path!r} is a file, not a folder; choose a folder")
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
    return {"model": model.name, "checkpoint": args.checkpoint, "layer": layer,
            "kernels": kernels, "seed": args.seed, "preset": args.preset,
            "overrides": _overrides(args), "config": config.to_dict()}


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
    speed = np.linalg.norm(r["motion"], axis=-1)
    scale = max(float(np.percentile(speed, 99)), 1e-3)  # automatic, per kernel; legend says it
    title = (f"kernel {kernel}: {float(s['direction_deg']):.0f} deg, "
             f"{float(s['speed_px_per_frame']):.2f} px/frame")
    pictures.save_gif(os.path.join(out, names["motion"]),
                      figures.motion_frames(r["motion"], scale, title=title))


def _entries(done: dict) -> list[dict]:
    return [report.kernel_entry(k, {n: r["summary"][n] for n in report.SUMMARY_KEYS},
                                _file_names(k), bool(r["finite"])) for k, r in done.items()]


def _write_report(out: str, settings: dict, done: dict) -> str:
    ks = sorted(done)
    velocities = np.stack([done[k]["motion"] for k in ks])
    scale = max(float(np.percentile(np.linalg.norm(velocities, axis=-1), 99)), 1e-3)
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
def run(args) -> int:
    import jax
    from kvjax.models import load_model
    from kvjax.pipeline import visualize

    # Check everything first: nothing is written for bad input.
    config = _config(args.preset, _overrides(args))
    model = load_model(args.model, args.checkpoint)
    layer = args.layer or model.default_layer
    info = model.check_layer(layer)
    kernels = parse_kernels(args.kernels or DEFAULT_KERNELS, info.channels, layer=layer)
    out = _check_out(args.out)

    store = RunStore(out)
    settings = store.start(_settings(args, model, layer, kernels, config), resume=args.resume)
    if settings["layer"] != layer or settings["kernels"] != kernels:
        print(f"resuming the run in {out}: {settings['model']} / {settings['layer']}, "
              f"{len(settings['kernels'])} kernels")
        if settings["model"] != model.name or settings["checkpoint"] != args.checkpoint:
            model = load_model(settings["model"], settings["checkpoint"])
        layer, kernels = settings["layer"], settings["kernels"]
        config = _config(settings["preset"], settings["overrides"])

    done = store.finished()
    todo = [k for k in kernels if k not in done]
    upscale = max(1, 224 // config.stage1.size[2])
    for k in sorted(done):  # a run killed between saving a chunk and drawing it
        if not all(os.path.exists(os.path.join(out, f)) for f in _file_names(k).values()):
            _write_kernel(out, k, done[k], upscale)
    chunk = min(config.stage1.chunk_size, len(kernels))  # same shapes when resumed
    n_chunks = -(-len(todo) // chunk)
    print(f"kvjax visualize: {model.name} / {layer}, {len(kernels)} kernels "
          f"({len(done)} already done), preset {settings['preset']}, video "
          f"{'x'.join(map(str, config.stage1.size))}, model input "
          f"{'x'.join(map(str, config.input_size or model.input_size))}, "
          f"{n_chunks} chunk(s) of {chunk}, backend {jax.default_backend()}", flush=True)
    features = model.features(layer, input_size=config.input_size)
    key = jax.random.key(settings["seed"])
    progress = Progress()
    t0 = time.time()
    for c in range(n_chunks):
        ks = todo[c * chunk:(c + 1) * chunk]
        padded = ks + [ks[0]] * (chunk - len(ks))  # full chunks: one compiled program
        progress.start(f"chunk {c + 1}/{n_chunks} (kernels {ks[0]}-{ks[-1]})")
        res = visualize(features, padded, config, key, progress=progress)
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
                print(f"kernel {k}: NaN/inf during stage 1; its last finite video is kept",
                      flush=True)
        index = _write_report(out, settings, {k: done[k] for k in kernels if k in done})
    if not todo:
        index = _write_report(out, settings, {k: done[k] for k in kernels})
    print(f"done in {time.time() - t0:.0f} s: {index}")
    print(f"  results.json, contact sheet and per-kernel GIF/PNG files in {os.path.abspath(out)}")
    for k in kernels:
        s = done[k]["summary"]
        print(f"  kernel {k:4d}: activation {float(s['activation']):9.3g}  direction "
              f"{float(s['direction_deg']):5.0f} deg  speed {float(s['speed_px_per_frame']):5.2f}"
              f" px/frame  motion fraction {float(s['motion_fraction']):.2f}")
    return 0
