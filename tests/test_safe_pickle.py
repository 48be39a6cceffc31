"""The restricted unpickler admits numpy arrays and containers, and nothing that runs code."""
import os
import pickle

import numpy as np
import pytest

from kvjax.errors import CorruptFileError, UnsafeFileError
from kvjax.io import safe_pickle


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_round_trip_of_nested_arrays(tmp_path):
    tree = {"a": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, "b": [np.float64(1.5), 3, "x"]}
    for protocol in (2, 4, 5):
        p = tmp_path / f"t{protocol}.pkl"
        p.write_bytes(pickle.dumps(tree, protocol=protocol))
        out = safe_pickle.load(p)
        np.testing.assert_array_equal(out["a"]["w"], tree["a"]["w"])
        assert out["b"][1:] == [3, "x"] and float(out["b"][0]) == 1.5


def test_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps({"w": np.zeros(3), "x": _RunsCode(marker)}))
    with pytest.raises(UnsafeFileError, match="posix.system|os.system|nt.system"):
        safe_pickle.load(p)
    assert not marker.exists()


def test_other_importable_classes_are_refused(tmp_path):
    p = tmp_path / "cls.pkl"
    p.write_bytes(pickle.dumps({"f": np.random.default_rng(0)}))
    with pytest.raises(UnsafeFileError, match="only numpy arrays"):
        safe_pickle.load(p)


def test_object_arrays_are_refused(tmp_path):
    p = tmp_path / "obj.pkl"
    p.write_bytes(pickle.dumps({"o": np.array([1, "a"], dtype=object)}))
    with pytest.raises(UnsafeFileError):
        safe_pickle.load(p)


def _object_field_with_its_flags_cleared() -> np.dtype:
    """A dtype with an object field whose pickled flags say it holds no objects."""
    d = np.dtype("V8")
    d.__setstate__((3, "|", None, ("w",), {"w": (np.dtype("O"), 0)}, 8, 1, 0))
    return d


def test_dtypes_that_hide_pointers_are_refused_before_any_element_is_read(tmp_path):
    # hasobject is False for this dtype, yet numpy would read each item's 8 file bytes as a
    # PyObject*: admitted, touching an element crashed the process (a report's PoC).
    d = _object_field_with_its_flags_cleared()
    assert d.fields is not None and not d.hasobject
    data = pickle.dumps({"w": np.zeros(2, d)}, protocol=2).replace(b"\x00" * 16, b"A" * 16)
    p = tmp_path / "pointers.pkl"
    p.write_bytes(data)
    with pytest.raises(UnsafeFileError, match="dtype"):
        safe_pickle.load(p)
    for harmless_but_not_numeric in (np.zeros(2, [("a", "f4"), ("b", "f4")]),
                                     np.zeros(2, "V4"), np.zeros(2, [("a", "f4", (2,))])):
        p.write_bytes(pickle.dumps({"w": harmless_but_not_numeric}))
        with pytest.raises(UnsafeFileError, match="dtype"):
            safe_pickle.load(p)
    p.write_bytes(pickle.dumps({"s": np.array(["ab", "c"]), "b": np.array([b"x"]),
                                "i": np.int64(3), "c": np.complex64(1j)}))
    assert safe_pickle.load(p)["s"].tolist() == ["ab", "c"]


def test_truncated_and_garbage_files_give_clear_errors(tmp_path):
    good = pickle.dumps({"w": np.ones((4, 4), np.float32)}, protocol=4)
    p = tmp_path / "trunc.pkl"
    p.write_bytes(good[: len(good) // 2])
    with pytest.raises(CorruptFileError, match="trunc.pkl"):
        safe_pickle.load(p)
    p.write_bytes(np.random.default_rng(0).bytes(256))  # seeded: never a valid pickle by chance
    with pytest.raises((CorruptFileError, UnsafeFileError)):
        safe_pickle.load(p)
    cycle = []
    cycle.append(cycle)
    p.write_bytes(pickle.dumps({"w": cycle}))
    with pytest.raises(CorruptFileError, match="RecursionError"):
        safe_pickle.load(p)


def test_the_shipped_i3d_checkpoint_loads():
    from kvjax.models import i3d
    arrays = i3d.load_arrays(i3d.pretrained_path())
    assert arrays["params/Conv3d_1a_7x7/Conv_0/kernel"].shape == (7, 7, 7, 3, 64)
    assert len(arrays) == len(i3d.checkpoint_mapping())


def _flags_set(spec: str, flags: int) -> np.dtype:
    """A copy of dtype `spec` whose pickled state says `flags` (numpy trusts them)."""
    d = np.dtype(spec, False, True)
    state = list(d.__reduce__()[2])
    state[-1] = flags
    d.__setstate__(tuple(state))
    return d


class _Reduces:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def test_numpy_never_builds_from_a_dtype_the_file_shaped():
    """A report's PoC: numpy.dtype("O8") with its flags cleared by BUILD, then numpy's
    `scalar(dtype, 8 bytes)`, read the bytes as a PyObject* while still unpickling
    (segmentation fault before any check of the result). Now no dtype from the file reaches
    numpy's constructors: each is rebuilt from its description string, and refused unless
    plain."""
    from numpy._core.multiarray import scalar
    hidden_object = _flags_set("O8", 0)
    assert not hidden_object.hasobject and hidden_object.kind == "O"
    for protocol in (2, 4, 5):
        data = pickle.dumps({"x": _Reduces(scalar, hidden_object, b"AAAAAAAA")}, protocol)
        with pytest.raises(UnsafeFileError, match="dtype"):
            safe_pickle.loads(data)
    # a float dtype that claims to hold objects (numpy would decref its items as pointers)
    fake = _flags_set("<f8", 0x01 | 0x02)
    assert fake.hasobject
    arr = np.full(2, 1e-300)
    for protocol in (2, 5):
        data = pickle.dumps({"a": arr}, protocol)
        assert safe_pickle.loads(data)["a"].dtype == np.float64
        bad = pickle.dumps({"x": _Reduces(scalar, fake, b"AAAAAAAA")}, protocol)
        with pytest.raises(UnsafeFileError, match="dtype"):
            safe_pickle.loads(bad)
    # numpy.ndarray(shape, dtype, buffer) called directly would build from the file's dtype
    data = pickle.dumps({"x": _Reduces(np.ndarray, (1,), np.dtype("f8"), b"A" * 8)}, 2)
    with pytest.raises(CorruptFileError):
        safe_pickle.loads(data)


def test_arrays_are_rebuilt_exactly():
    """Byte order, Fortran order, empty and 0-d arrays, strings, shared references, Python 2
    array data read as latin1 str: what numpy's own unpickling gives."""
    a = np.arange(12, dtype=">i4").reshape(3, 4)
    tree = {"be": a, "f": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
            "empty": np.zeros((0, 3), np.float32), "zero_d": np.array(2.5),
            "s": np.array([b"ab", b"c"]), "u": np.array(["x", "yz"]), "same": [a, a]}
    for protocol in (2, 4, 5):
        out = safe_pickle.loads(pickle.dumps(tree, protocol))
        ref = pickle.loads(pickle.dumps(tree, protocol))
        for k in ("be", "f", "empty", "zero_d", "s", "u"):
            # (numpy's own unpickling turns a big-endian array native at protocols 2 and 4)
            assert out[k].dtype.newbyteorder("=") == ref[k].dtype.newbyteorder("="), k
            assert out[k].shape == ref[k].shape, k
            assert out[k].flags.f_contiguous == ref[k].flags.f_contiguous, k
            np.testing.assert_array_equal(out[k], ref[k])
        assert out["same"][0] is out["same"][1]
    from numpy._core.multiarray import _reconstruct
    raw = np.arange(3.0).tobytes()
    py2 = _Reduces(_reconstruct, np.ndarray, (0,), b"b")
    py2.__reduce__ = lambda: (_reconstruct, (np.ndarray, (0,), b"b"),
                              (1, (3,), np.dtype("<f8"), False, raw.decode("latin1")))
    data = pickle.dumps({"w": py2}, 2)
    np.testing.assert_array_equal(pickle.loads(data, encoding="latin1")["w"], np.arange(3.0))
    np.testing.assert_array_equal(safe_pickle.loads(data, encoding="latin1")["w"],
                                  np.arange(3.0))
