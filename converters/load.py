"""Read a checkpoint file into a flat {name: numpy array} dict without running its code.

Formats, chosen by content (and by extension where content is ambiguous):

    .pt .pth .pth.tar .pickle .ckpt .pyth   torch.save files, zip or legacy, always read with
                                            torch.load(weights_only=True, map_location="cpu")
    .pkl                                    Caffe2 / Detectron pickles ({"blobs": {...}}),
                                            read with kvjax's restricted unpickler (latin1)
    .safetensors                            safetensors

Containers are unwrapped: Lightning's {"state_dict": ...} with every key under "model.",
PySlowFast's {"model_state": ...}, {"model": ...}, DataParallel's "module." prefixes, and
Caffe2's {"blobs": ...} (optimizer blobs such as "*_momentum" dropped). Float weights of any
width (float16, bfloat16, float64, float8) come out as float32.

Other prefixes (a self-supervised model's "encoder_q." and "encoder_k.", "backbone.") are
kept: which subtree holds the network depends on the architecture, so `kvjax convert` picks
it (`--prefix`, or inferred from the architecture's table: converters.commands), with
`key_prefixes` and `under_prefix` from here.

What training scripts save beside the weights is read without running anything: argparse
Namespaces, Lightning's classes, numpy scalars and arrays, pathlib paths and slices become
inert stand-ins (`_stand_ins`). A file that would import or call anything else is refused
with UnsafeFileError; a truncated or malformed one gives CorruptFileError naming the file (a
TorchScript archive or a saved web page is named as such).
"""
from __future__ import annotations

import argparse
import os
import zipfile
from typing import Any, Mapping

import numpy as np

from kvjax.errors import CorruptFileError, KvjaxError, UnsafeFileError
from kvjax.io import safe_pickle

TORCH_EXTS = (".pt", ".pth", ".pth.tar", ".pickle", ".ckpt", ".pyth", ".bin", ".tar")
CAFFE2_EXTS = (".pkl",)
SAFETENSORS_EXTS = (".safetensors",)
# Where trainers keep the weights inside a saved dict, tried in this order.
_CONTAINER_KEYS = ("state_dict", "model_state", "model_state_dict", "model", "net", "blobs",
                   "module")
# Prefixes added by wrappers (DataParallel, Lightning, torch.compile), stripped when all keys share them.
WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")
# Caffe2 blobs that are bookkeeping, not weights (optimizer blobs end in "_momentum").
_CAFFE2_SKIP = ("lr", "model_iter", "iter")
# Plain data containers that training scripts put beside the weights (Lightning stores a
# script's argparse Namespace as "hyper_parameters"); rebuilding one runs no user code.
_DATA_ONLY_GLOBALS = [argparse.Namespace]


def load_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """{name: array} of the weights in the checkpoint file at `path` (float arrays as float32)."""
    return load_checkpoint(path)[0]


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """(tensors as `load_tensors` gives them, metadata): the metadata holds the training
    hyper-parameters where the file records them (Lightning's "hyper_parameters", with an
    argparse Namespace turned into a dict), else {}."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise KvjaxError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        raise KvjaxError(f"{path} is a directory; expected a checkpoint file "
                         f"({', '.join(TORCH_EXTS + CAFFE2_EXTS + SAFETENSORS_EXTS)})")
    if os.path.getsize(path) == 0:
        raise CorruptFileError(f"{path} is empty")
    lower = path.lower()
    if lower.endswith(SAFETENSORS_EXTS):
        obj = _load_safetensors(path)
    elif lower.endswith(CAFFE2_EXTS) and not zipfile.is_zipfile(path):
        obj = _load_plain_pickle(path, encoding="latin1")
        if _is_legacy_torch(obj):  # a torch.save file (pre-1.6 format) named .pkl
            obj = _load_torch(path)
    else:
        obj = _load_torch(path)
    return _to_numpy(unwrap(obj, path), path), _metadata(obj)


# ----------------------------------------------------------------------------------- readers

def _load_torch(path: str) -> Any:
    """torch.load(weights_only=True); plain (non-torch) pickles of numpy arrays fall back to
    kvjax's restricted unpickler, which also decides whether a refused file is unsafe or corrupt."""
    import pickle
    import warnings

    torch = _torch()

    with open(path, "rb") as f:
        head = f.read(512)
    is_zip = head[:4] == b"PK\x03\x04" or zipfile.is_zipfile(path)  # truncated zips lack a directory
    if head.lstrip()[:1] == b"<" and b"html" in head.lower():
        raise CorruptFileError(f"{path} is an HTML page, not a checkpoint (a download that "
                               "returned a web page, such as a sign-in or virus-scan warning?)")
    if is_zip:
        _check_zip_crcs(path)
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(
                _DATA_ONLY_GLOBALS + (_stand_ins(path) if is_zip else [])):
            warnings.simplefilter("ignore")
            return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        msg = str(e)
        if ("GLOBAL" in msg or "Unsupported global" in msg) and (
                is_zip or not _numpy_global(msg)):
            raise UnsafeFileError(f"refusing {path}: loading it would import code "
                                  f"({_torch_reason(msg)}); only tensors and plain containers "
                                  "are admitted") from None
        if is_zip:
            raise CorruptFileError(f"{path} is a torch zip file whose contents cannot be read "
                                   f"safely: {_torch_reason(msg)}") from None
        err = e
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError,
            zipfile.BadZipFile, AttributeError, TypeError) as e:
        if "TorchScript" in str(e):
            raise KvjaxError(f"{path} is a TorchScript archive, not a state dict: where you "
                             "trust the file, save its weights with torch.save(torch.jit.load("
                             "SRC).state_dict(), 'weights.pth') and convert that") from None
        if is_zip:
            raise CorruptFileError(f"{path} is a truncated or corrupt torch zip file: "
                                   f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
        err = e
    # Not a torch file we could read: a plain pickle of numpy arrays, or garbage.
    reason = f"{type(err).__name__}: {_torch_reason(str(err))[:200]}"
    try:
        obj = _load_plain_pickle(path, encoding="latin1")
    except CorruptFileError:
        raise CorruptFileError(f"{path} is neither a torch checkpoint nor a pickle of arrays "
                               f"(truncated or corrupt?): {reason}") from None
    if _is_legacy_torch(obj):  # torch's own format, which torch could not read
        raise CorruptFileError(f"{path} is a torch file (the pre-1.6 format) that cannot be "
                               f"read (truncated or corrupt?): {reason}")
    return obj


# The first of the pickles in a torch file of the pre-1.6 (non-zip) format.
_TORCH_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c


def _is_legacy_torch(obj: Any) -> bool:
    return type(obj) is int and obj == _TORCH_LEGACY_MAGIC


def _check_zip_crcs(path: str) -> None:
    """CorruptFileError naming the first member of the zip file at `path` whose bytes do not
    match their recorded CRC-32: torch.load does not check them, so a damaged download would
    load as other weights. A zip without its directory (truncated) is left to torch.load."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError):
        return
    except Exception as e:  # noqa: BLE001 - zlib/struct errors of a damaged member
        raise CorruptFileError(f"{path} is a damaged zip file: {type(e).__name__}: "
                               f"{str(e)[:160]}") from None
    if bad is not None:
        raise CorruptFileError(f"{path} is damaged: the bytes of {bad} do not match their "
                               "checksum (an incomplete or altered download?)")


def _torch():
    """The torch module, or a KvjaxError saying how to install it (an optional extra)."""
    try:
        import torch
    except ImportError:
        raise KvjaxError('reading PyTorch checkpoints needs PyTorch, an optional extra of '
                         'kvjax: pip install "kvjax[torch]" (or pip install ".[torch]" in a '
                         'clone)') from None
    return torch


# Lightning keeps the state of a trainer's callbacks keyed by the callback's class
# (pytorch_lightning 1.x: {ModelCheckpoint: {...}}, VideoGPT's pinned 1.3.3) and its
# hyper-parameters in an AttributeDict (a dict subclass): references to classes kvjax must
# not import, but that carry no code of the file's. Each is admitted as an inert stand-in
# (an AttributeDict as a plain dict).
_LIGHTNING = ("pytorch_lightning.", "lightning.pytorch.", "lightning_fabric.")
# Plain values that training scripts save beside the weights and torch's weights-only loader
# refuses: numpy scalars and arrays (a best accuracy as np.float64, np.random.get_state()),
# pathlib paths (argparse arguments), slices. Admitted as inert stand-ins that only record
# what the file gives them: the weights never come from these, and nothing is imported or
# called. Any other global (os.system, a user's class...) is still refused.
_INERT = ("numpy.", "pathlib.Path", "pathlib.PosixPath", "pathlib.WindowsPath",
          "pathlib.PurePath", "pathlib.PurePosixPath", "pathlib.PureWindowsPath",
          "pathlib._local.", "builtins.slice")


def _stand_ins(path: str) -> list:
    """(stand-in, name) for every Lightning or plain-data global (_LIGHTNING, _INERT) that
    the torch zip file at `path` refers to; [] if none (or they cannot be listed: torch
    decides)."""
    torch = _torch()
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - unreadable: torch.load reports it properly
        return []
    out = []
    for name in names:
        if name.startswith(_LIGHTNING) and name.endswith(".AttributeDict"):
            out.append((dict, name))  # torch fills only a real dict
        elif name.startswith(_LIGHTNING + _INERT):
            module, _, cls = name.rpartition(".")
            out.append((type(cls, (_StandIn,), {"__module__": module}), name))
    return out


class _StandIn:
    """An inert stand-in for a class or function a checkpoint names beside its weights (a
    Lightning callback's class used as a dict key, a numpy scalar, a path): calling it, or
    building it from pickled state, only records the arguments."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state


def _numpy_global(msg: str) -> bool:
    """Whether the global torch refused (its message names it) is one numpy needs to rebuild
    arrays: a plain pickle of numpy arrays, left to kvjax's restricted unpickler."""
    import re
    found = re.search(r"GLOBAL ([\w.]+)\.(\w+)", msg)
    return bool(found) and (found.group(1), found.group(2)) in safe_pickle.ALLOWED_GLOBALS


def _torch_reason(msg: str) -> str:
    """The informative line of torch's weights-only error (e.g. 'unsupported GLOBAL posix.system')."""
    for line in msg.splitlines():
        if "GLOBAL" in line or "Unsupported" in line or "unsupported" in line:
            return line.strip()
    return msg.splitlines()[-1].strip() if msg else "unknown"


def _load_plain_pickle(path: str, encoding: str) -> Any:
    with open(path, "rb") as f:
        data = f.read()
    return safe_pickle.loads(data, encoding=encoding, source=path)  # errors name the file


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise KvjaxError("reading .safetensors needs the `safetensors` package: "
                         "pip install safetensors") from None
    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own SafetensorError and others
        raise CorruptFileError(f"{path} is not a readable safetensors file: "
                               f"{type(e).__name__}: {e}") from None


# ------------------------------------------------------------------------------ unwrapping

def _is_array(v: Any) -> bool:
    return isinstance(v, np.ndarray) or type(v).__name__ in ("Tensor", "Parameter")


def unwrap(obj: Any, path: str = "<checkpoint>") -> dict[str, Any]:
    """The flat name -> tensor dict inside a saved object (see the module docstring)."""
    if not isinstance(obj, Mapping):
        raise KvjaxError(f"{path} holds a {type(obj).__name__}, not a dict of tensors; "
                         "save `model.state_dict()` rather than the model object")
    seen, caffe2 = set(), False
    while id(obj) not in seen:
        seen.add(id(obj))
        # A container key holding tensors is where the weights are, even beside a stray
        # tensor (a best accuracy saved as a tensor); a state dict has no dict values.
        containers = [obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)]
        holding = [c for c in containers if any(_is_array(v) for v in c.values())]
        if not holding and any(_is_array(v) for v in obj.values()):
            break
        inner = (holding or containers or [None])[0]
        if inner is None:
            raise KvjaxError(f"{path} holds no tensors at the top level nor under any of "
                             f"{', '.join(_CONTAINER_KEYS)}; its keys: "
                             f"{', '.join(map(str, list(obj)[:12]))}")
        caffe2 = caffe2 or inner is obj.get("blobs")
        obj = inner
    else:
        raise CorruptFileError(f"{path} holds a dict that contains itself and no tensors")
    tensors = {str(k): v for k, v in obj.items() if _is_array(v)}
    if caffe2 or any(k.endswith("_momentum") for k in tensors):  # Caffe2 bookkeeping
        tensors = {k: v for k, v in tensors.items()
                   if not (k.endswith("_momentum") or k in _CAFFE2_SKIP)}
    changed = True
    while changed and tensors:
        changed = False
        for p in WRAPPER_PREFIXES:
            if all(k.startswith(p) for k in tensors):
                tensors = {k[len(p):]: v for k, v in tensors.items()}
                changed = True
    return tensors


def key_prefixes(keys) -> dict[str, int]:
    """{prefix: number of keys under it} for the one- and two-level dot-separated prefixes
    of `keys` ("encoder_q." and "encoder_q.layer1." of "encoder_q.layer1.0.conv1.0.weight"),
    in the order first seen; a key's last component never counts as a prefix."""
    out: dict[str, int] = {}
    for k in keys:
        parts = k.split(".")
        for n in (1, 2):
            if len(parts) > n:
                p = ".".join(parts[:n]) + "."
                out[p] = out.get(p, 0) + 1
    return out


def under_prefix(tensors: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The tensors whose keys start with `prefix`, the prefix removed ({} if none)."""
    return {k[len(prefix):]: v for k, v in tensors.items()
            if k.startswith(prefix) and len(k) > len(prefix)}


def _to_numpy(tensors: Mapping[str, Any], path: str) -> dict[str, np.ndarray]:
    out = {}
    for k, v in tensors.items():
        if not isinstance(v, np.ndarray):
            try:
                v = v.detach()
                if v.is_floating_point():
                    v = v.float()
                v = v.to_dense().numpy() if v.layout != _torch().strided else v.numpy()
            except (RuntimeError, TypeError, NotImplementedError) as e:
                raise KvjaxError(f"{path}: tensor {k!r} ({v.dtype}, {v.layout}, on "
                                 f"{v.device}) has no plain numeric value: "
                                 f"{str(e).splitlines()[0][:160]}") from None
        if v.dtype != np.float32 and (v.dtype.kind == "f" or _ml_float(v.dtype)):
            v = v.astype(np.float32)
        out[k] = v
    if not out:
        raise KvjaxError(f"{path} contains no tensors")
    return out


def _ml_float(dtype: np.dtype) -> bool:
    """bfloat16 and the float8/6/4 types (ml_dtypes, kind "V"), as safetensors.numpy gives."""
    return dtype.kind == "V" and dtype.name.startswith(("bfloat16", "float8", "float6",
                                                         "float4"))


def _metadata(obj: Any) -> dict:
    """Plain hyper-parameters recorded beside the weights (see `load_checkpoint`)."""
    if not isinstance(obj, Mapping):
        return {}
    hp = obj.get("hyper_parameters")
    if isinstance(hp, Mapping) and isinstance(hp.get("args"), argparse.Namespace):
        hp = {**hp, **vars(hp["args"])}
    if not isinstance(hp, Mapping):
        return {}
    plain = (int, float, str, bool, type(None))
    return {"hyper_parameters": {
        str(k): (list(v) if isinstance(v, (list, tuple)) else v) for k, v in hp.items()
        if isinstance(v, plain) or (isinstance(v, (list, tuple))
                                    and all(isinstance(e, plain) for e in v))}}
