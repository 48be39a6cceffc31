"""Loading legacy pickles of numpy arrays without ever running code from the file.

`pickle.load` on a user's file can import and call anything. `load` here admits only the
names numpy's pickles use for plain numeric arrays, plus plain containers, and numpy itself
never builds an array or scalar from the file's own dtype objects: a pickle can set a dtype's
state (flags, fields, item size) to anything, and numpy trusts that state, e.g. it reads 8
file bytes of an object-kind dtype whose flags were cleared as a PyObject* (a crash or
worse, while still unpickling). So numpy's rebuilding functions are replaced by stand-ins
(`_reconstruct`, `_scalar`, `_frombuffer`) that take only the dtype's description string
(kind, byte order, item size), refuse anything but bool, integer, float, complex and
fixed-size strings, and build a fresh dtype and array from it with numpy's public API.
Every leaf of the result is a numeric `np.ndarray` or numpy scalar, or a
str/bytes/int/float/bool/None. Anything else is refused with `UnsafeFileError`; a truncated
or malformed stream gives `CorruptFileError`.
"""
from __future__ import annotations

import io
import os
import pickle
from typing import Any

import numpy as np

from kvjax.errors import CorruptFileError, KvjaxError, UnsafeFileError

class _ArrayState:
    """Stands in for an ndarray while unpickling. numpy pickles an array as
    `_reconstruct(ndarray, (0,), b"b")` followed by BUILD with its state (version, shape,
    dtype, is_fortran, raw bytes); this keeps the state for `_finish` to build from."""

    __slots__ = ("state",)

    def __init__(self):
        self.state = None

    def __setstate__(self, state):
        self.state = state


class _NdarrayName:
    """What the name numpy.ndarray unpickles to: only ever `_reconstruct`'s first argument,
    never called (numpy.ndarray(shape, dtype, buffer) would build from the file's dtype)."""


_NDARRAY = _NdarrayName()


def _clean_dtype(dtype: Any) -> np.dtype:
    """A fresh dtype from the description string of the file's `dtype` (kind, byte order, item
    size), nothing else of its state kept; UnsafeFileError unless plain (`_plain`)."""
    if not isinstance(dtype, np.dtype) or not _plain(dtype):
        raise UnsafeFileError(f"refusing an array or scalar of dtype {dtype!r} in a pickle; "
                              "only numeric arrays (and plain strings) are admitted")
    return np.dtype(dtype.str)


def _bytes(raw: Any) -> bytes:
    """Raw array bytes: bytes, a buffer, or a str from a Python 2 pickle read as latin1."""
    if isinstance(raw, str):
        return raw.encode("latin1")
    if isinstance(raw, (bytes, bytearray, memoryview, pickle.PickleBuffer)):
        return bytes(raw)
    raise UnsafeFileError(f"refusing array data of type {type(raw).__name__} in a pickle "
                          "(object arrays are not admitted)")


def _array(raw: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    dt = _clean_dtype(dtype)
    shape = tuple(int(n) for n in shape)
    if order not in ("C", "F"):
        raise ValueError(f"array order {order!r}")
    data = _bytes(raw)
    if len(data) != dt.itemsize * int(np.prod(shape)):
        raise ValueError(f"{len(data)} bytes for an array of {shape} x {dt}")
    flat = np.frombuffer(data, dt) if data else np.empty(0, dt)
    return flat.reshape(shape, order=order).copy(order="K")


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> _ArrayState:
    if subtype is not _NDARRAY:
        raise UnsafeFileError(f"refusing to rebuild an array of type {subtype!r} from a pickle")
    return _ArrayState()


def _scalar(dtype: Any, raw: Any = None) -> np.generic:
    dt = _clean_dtype(dtype)
    if raw is None:
        return np.zeros((), dt)[()]
    return _array(raw, dt, (), "C")[()]


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    return _array(buf, dtype, shape, order)


def _empty_bytes(*args: Any) -> bytes:
    """bytes() as protocol 2 pickles b"" (an empty array's data); with arguments refused."""
    if args:
        raise UnsafeFileError("refusing a call of bytes() with arguments in a pickle")
    return b""


# (module, name) pairs numpy's pickles use to rebuild arrays and dtypes, across numpy 1 and 2,
# and what each unpickles to here.
_STAND_INS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,  # protocol 5
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): _NDARRAY,
    ("__builtin__", "bytes"): _empty_bytes,  # protocol 2's b""
    ("builtins", "bytes"): _empty_bytes,
}
ALLOWED_GLOBALS = set(_STAND_INS) | {
    ("numpy", "dtype"),  # its objects are only ever read through `_clean_dtype`
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # how protocol 2 pickles store bytes (numpy arrays from Python 2)
}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _STAND_INS:
            return _STAND_INS[module, name]
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
        return _finish(obj, source, {})
    except UnsafeFileError as e:
        if source == "<bytes>" or source in str(e):
            raise
        raise UnsafeFileError(f"{source}: {e}") from None  # name the file the user gave
    except CorruptFileError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, UnicodeDecodeError, MemoryError, OverflowError, RecursionError) as e:
        raise CorruptFileError(f"{source} is not a readable pickle of arrays (truncated or "
                               f"corrupt): {type(e).__name__}: {e}") from None


def load(path: str | os.PathLike, *, encoding: str = "ASCII") -> Any:
    """Read and safely unpickle the file at `path` (see `loads`); KvjaxError if it cannot be
    read (missing, a folder, no permission)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise KvjaxError(f"cannot read {os.fspath(path)}: {e.strerror or e}") from None
    return loads(data, encoding=encoding, source=str(path))


def _finish(obj: Any, source: str, done: dict, path: str = "") -> Any:
    """The unpickled tree with every `_ArrayState` built into an array (once per object, so
    shared arrays stay shared), checked: only containers, numeric arrays and scalars, and
    plain Python values."""
    if id(obj) in done:
        return done[id(obj)]
    if isinstance(obj, dict):
        for k in obj:
            if not isinstance(k, (str, int, bytes)):
                raise UnsafeFileError(f"{source}: key of type {type(k).__name__} at {path!r}")
        out = type(obj)((k, _finish(v, source, done, f"{path}/{k}")) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        out = type(obj)(_finish(v, source, done, f"{path}/{i}") for i, v in enumerate(obj))
    elif isinstance(obj, _ArrayState):
        state = obj.state
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise CorruptFileError(f"{source}: malformed array state at {path!r}")
        shape, dtype, fortran, raw = state[-4:]
        out = _array(raw, dtype, shape, "F" if fortran else "C")
    elif isinstance(obj, (np.ndarray, np.generic)):  # from `_frombuffer`, `_scalar`: clean
        out = obj
    elif obj is None or isinstance(obj, (str, bytes, int, float, bool)):
        out = obj
    else:
        raise UnsafeFileError(f"{source}: unexpected {type(obj).__name__} at {path!r}")
    done[id(obj)] = out
    return out


def _plain(dtype: np.dtype) -> bool:
    """A dtype whose items are plain bytes: bool, integer, float, complex, fixed-size string;
    no fields, no sub-arrays. `hasobject` alone is not enough: a pickled dtype sets its own
    flags, and one with an object field and the flags cleared reads raw file bytes as
    pointers (a crash, or worse, when an element is touched). Its elements are never read."""
    return (dtype.kind in "biufcSU" and dtype.fields is None and dtype.subdtype is None
            and not dtype.hasobject)
