"""What `kvjax convert` checks about a checkpoint it has just written, before keeping it.

The checks need torch only to read the source file, never the PyTorch model code, so they
say exactly what they can and no more. `check(tmp, ...)` runs them on the complete
checkpoint in its temporary directory, loaded the way users load it
(`kvjax.load_model(arch, checkpoint=...)`), and returns the manifest's "parity":

    {"weights_round_trip": {"checked": N, "ignored": M, "max_abs_error": 0.0},
         every one of the N source tensors the architecture's table maps, read back from
         the written checkpoint through the loaded model and put back into PyTorch's layout
         (`Layout.inverse`), is bit-identical to the tensor in the source file; M tensors
         are declared irrelevant by the table (e.g. num_batches_tracked) and not stored
     "forward": {"finite": true, "layers": L, "input_size": [T, H, W], "seed": 0},
         one forward pass of the loaded model on a random video (uniform in [0, 1], mapped
         to the model's value range) of its default input size gives finite values at all
         L layers that `kvjax layers` lists
     "pytorch_parity": {"checked_at_convert": false, "test": "tests/test_convert_c3d.py",
                        "tolerance": 1e-4},
         numerical agreement with the PyTorch model is not re-checked here (that needs the
         upstream model code); the named test checks it layer by layer for random weights,
         to `tolerance` of each layer's largest |activation|
    }

A failed check raises ParityError (a KvjaxError), so nothing is written.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from converters import tables
from kvjax.errors import KvjaxError

# Max abs error / scale that the per-architecture parity tests allow (tests/torch_refs.py TOL).
PYTORCH_TOLERANCE = 1e-4
SEED = 0


class ParityError(KvjaxError):
    """A converted checkpoint does not read back as its source, or does not run."""


def check(checkpoint: str, arch: str, tensors: Mapping[str, np.ndarray],
          table: tables.Table, config: Mapping[str, Any], model=None) -> dict:
    """The "parity" record of the converted `checkpoint` of `tensors` (see module docstring).

    `model`: `kvjax.load_model(arch, checkpoint)` where the caller has loaded it already."""
    from kvjax.models import load_model

    if model is None:
        model = load_model(arch, checkpoint)
    return {"weights_round_trip": weights_round_trip(model, tensors, table, config),
            "forward": forward_finite(model),
            "pytorch_parity": {"checked_at_convert": False, "test": tables.parity_test(arch),
                               "tolerance": PYTORCH_TOLERANCE}}


def weights_round_trip(model, tensors: Mapping[str, np.ndarray], table: tables.Table,
                       config: Mapping[str, Any]) -> dict:
    """Every mapped source tensor equals its stored array put back into PyTorch's layout."""
    from flax import nnx

    stored = {tuple(p): np.asarray(v.get_value())
              for p, v in nnx.to_flat_state(nnx.state(model.net))}
    mapping = table.mapping(**config)
    worst, bad = 0.0, []
    for key, (path, layout) in mapping.items():
        if not isinstance(layout, tables.Layout):
            raise TypeError(f"{table.arch} table maps {key} through {layout!r}, which has no "
                            "inverse; use a converters.tables.Layout")
        back, source = layout.inverse(stored[tuple(path)]), np.asarray(tensors[key])
        where = f"{key} -> {'/'.join(map(str, path))}"
        if back.shape != source.shape:
            bad.append(f"{where}: reads back with shape {back.shape}, source {source.shape}")
            continue
        err = _max_abs_diff(back, source)
        if not err == 0.0:  # NaN (a NaN against a number) fails too
            bad.append(f"{where}: " + ("NaN against a number" if np.isnan(err)
                                       else f"max abs error {err:.3g}"))
        worst = max(worst, err)
    if bad:
        raise ParityError(f"the written checkpoint does not read back as the source: "
                          f"{len(bad)} of {len(mapping)} tensors differ ({'; '.join(bad[:5])}"
                          f"{' ...' if len(bad) > 5 else ''}); nothing was written")
    ignored = [k for k in tensors if k not in mapping
               and table.irrelevant(k)]
    return {"checked": len(mapping), "ignored": len(ignored), "max_abs_error": worst}


def forward_finite(model, seed: int = SEED) -> dict:
    """One forward pass on a random video of the model's input size is finite at every layer."""
    import jax.numpy as jnp
    from flax import nnx

    import kvjax
    from kvjax.models.base import Taps

    graphdef, state = nnx.split(model.net)
    lo, hi = model.value_range
    video = np.random.default_rng(seed).uniform(0, 1, (1, *model.input_size, 3))
    x = jnp.asarray(lo + (hi - lo) * video, jnp.float32)

    @kvjax.jit
    def finite(state, x):  # per layer: all finite? (reduced here, so activations are freed)
        taps = Taps()
        nnx.merge(graphdef, state)(x, taps)
        return {name: jnp.all(jnp.isfinite(v)) for name, v in taps.values.items()}

    ok = {k: bool(v) for k, v in finite(state, x).items()}
    names = model.layer_names()
    bad = [n for n in names if not ok.get(n, False)]
    if bad:
        weights = _non_finite_weights(state)
        raise ParityError(
            f"the converted model gives non-finite values (NaN or inf) on a random "
            f"{'x'.join(map(str, model.input_size))} video at {len(bad)} of {len(names)} "
            f"layers, first at {bad[0]!r}"
            + (f"; non-finite weights: {', '.join(weights[:5])}" if weights else "")
            + "; the source checkpoint is damaged or not this architecture; nothing was written")
    return {"finite": True, "layers": len(names), "input_size": list(model.input_size),
            "seed": seed}


def describe(parity: Mapping[str, Any] | None) -> list[str]:
    """Human-readable lines for a manifest's "parity" (as `check` returns it, or null)."""
    if not parity:
        return ["checks: none recorded (converted by a kvjax that did not record them)"]
    lines = []
    rt = parity.get("weights_round_trip")
    if rt:
        lines.append(f"checked: {rt['checked']} tensors read back bit-identical to the source "
                     f"(max abs error {rt['max_abs_error']:g}); "
                     f"{rt.get('ignored', 0)} declared irrelevant, not stored")
    fw = parity.get("forward")
    if fw:
        lines.append(f"checked: forward pass on a random {'x'.join(map(str, fw['input_size']))} "
                     f"video (seed {fw.get('seed', SEED)}) finite at all {fw['layers']} layers")
    pt = parity.get("pytorch_parity")
    if pt and not pt.get("checked_at_convert"):
        lines.append(f"not checked here: agreement with the PyTorch model's outputs (tested "
                     f"layer by layer with random weights, to {pt['tolerance']:.0e} of each "
                     f"layer's largest |activation|, in {pt['test']})")
    return lines


# --------------------------------------------------------------------------------- helpers

def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| over arrays of one shape, NaN equal to NaN (NaN for a NaN against a number)."""
    if np.array_equal(a, b):  # the usual case, without float64 copies (2 s for 33M weights)
        return 0.0
    a, b = a.astype(np.float64), b.astype(np.float64)
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    return float(np.where(same, 0.0, np.abs(a - b)).max(initial=0.0))


def _non_finite_weights(state) -> list[str]:
    from flax import nnx

    out = []
    for p, v in nnx.to_flat_state(state):
        a = np.asarray(v.get_value())
        n = int(a.size - np.isfinite(a).sum()) if a.dtype.kind == "f" else 0
        if n:
            out.append(f"{'/'.join(map(str, p))} ({n} of {a.size})")
    return out
