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


def test_the_shipped_i3d_checkpoint_loads():
    from kvjax.models import i3d
    arrays = i3d.load_arrays(i3d.pretrained_path())
    assert arrays["params/Conv3d_1a_7x7/Conv_0/kernel"].shape == (7, 7, 7, 3, 64)
    assert len(arrays) == len(i3d.checkpoint_mapping())
