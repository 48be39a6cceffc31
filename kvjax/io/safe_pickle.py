"""Loading legacy pickles of numpy arrays without ever running code from the file.

`pickle.load` on a user's file can import and call anything. `load` here admits only the
globals that numpy needs to rebuild plain numeric arrays, plus plain containers, and checks
the result: every leaf must be a numeric `np.ndarray` or numpy scalar (or a
str/bytes/int/float/bool/None); structured, void and object dtypes are refused. Anything
else is refused with `UnsafeFileError`; a truncated or malformed stream gives `CorruptFileError`.
"""
from __future__ import annotations

import io
import os
import pickle
from typing import Any

import numpy as np

from kvjax.errors import CorruptFileError, KvjaxError, UnsafeFileError

# (module, name) pairs numpy's pickles use to rebuild arrays and dtypes, across numpy 1 and 2.
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # protocol 5
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # how protocol 2 pickles store bytes (numpy arrays from Python 2)
}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafeFileError(
            f"refusing to load {module}.{name} from a pickle: only numpy arrays and plain "
            "containers (dict, list, tuple, str, numbers) are admitted")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeFileError("refusing a pickle with persistent ids (a torch file? use "
                              "`kvjax inspect`/`kvjax convert`, which read those safely)")


def loads(data: bytes, *, encoding: str = "ASCII", source: str = "<bytes>") -> Any:
    """Unpickle `data`, admitting only numpy arrays and plain containers.

    `encoding="latin1"` reads Python 2 pickles (Caffe2 .pkl files) with their byte strings.
    """
    try:
        obj = _ArraysOnly(io.BytesIO(data), encoding=encoding).load()
    except (UnsafeFileError, CorruptFileError):
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, UnicodeDecodeError, MemoryError) as e:
        raise CorruptFileError(f"{source} is not a readable pickle of arrays (truncated or "
                               f"corrupt): {type(e).__name__}: {e}") from None
    _check_leaves(obj, source)
    return obj


def load(path: str | os.PathLike, *, encoding: str = "ASCII") -> Any:
    """Read and safely unpickle the file at `path` (see `loads`); KvjaxError if it cannot be
    read (missing, a folder, no permission)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise KvjaxError(f"cannot read {os.fspath(path)}: {e.strerror or e}") from None
    return loads(data, encoding=encoding, source=str(path))


def _check_leaves(obj: Any, source: str, path: str = "") -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int, bytes)):
                raise UnsafeFileError(f"{source}: key of type {type(k).__name__} at {path!r}")
            _check_leaves(v, source, f"{path}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_leaves(v, source, f"{path}/{i}")
    elif isinstance(obj, (np.ndarray, np.generic)):
        if not _plain(obj.dtype):
            raise UnsafeFileError(f"{source}: array of dtype {obj.dtype!r} at {path!r}; only "
                                  "numeric arrays (and plain strings) are admitted")
    elif not (obj is None or isinstance(obj, (str, bytes, int, float, bool))):
        raise UnsafeFileError(f"{source}: unexpected {type(obj).__name__} at {path!r}")


def _plain(dtype: np.dtype) -> bool:
    """A dtype whose items are plain bytes: bool, integer, float, complex, fixed-size string;
    no fields, no sub-arrays. `hasobject` alone is not enough: a pickled dtype sets its own
    flags, and one with an object field and the flags cleared reads raw file bytes as
    pointers (a crash, or worse, when an element is touched). Its elements are never read."""
    return (dtype.kind in "biufcSU" and dtype.fields is None and dtype.subdtype is None
            and not dtype.hasobject)
