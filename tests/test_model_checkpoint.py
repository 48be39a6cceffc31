"""Converted checkpoints on disk: round trip, manifest, atomic writes, refusals."""
import json
import os

import numpy as np
import pytest

import kvjax
from kvjax.errors import KvjaxError
from kvjax.io import model_checkpoint

STATE = {"conv1": {"kernel": np.arange(6, dtype=np.float32).reshape(1, 1, 1, 2, 3),
                   "bias": np.zeros(3, np.float32)}}


def test_round_trip_and_manifest(tmp_path):
    man = model_checkpoint.save(tmp_path / "ck", "c3d", STATE,
                                {"config": {"num_classes": 3}, "source": {"path": "x"}})
    arch, state, read = model_checkpoint.load(tmp_path / "ck")
    assert arch == "c3d" and read == json.loads(json.dumps(man))
    np.testing.assert_array_equal(state["conv1"]["kernel"], STATE["conv1"]["kernel"])
    assert read["tensors"] == 2 and read["weights"] == 9 and read["config"] == {"num_classes": 3}
    assert read["kvjax_version"] == kvjax.__version__ and read["parity"] is None
    assert sorted(os.listdir(tmp_path)) == ["ck"]  # no temporary directories left behind


def test_replaces_a_converted_checkpoint_but_nothing_else(tmp_path):
    model_checkpoint.save(tmp_path / "ck", "c3d", STATE)
    model_checkpoint.save(tmp_path / "ck", "r3d_18", STATE)
    assert model_checkpoint.load(tmp_path / "ck")[0] == "r3d_18"
    assert sorted(os.listdir(tmp_path)) == ["ck"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(KvjaxError, match="refusing to overwrite"):
        model_checkpoint.save(tmp_path / "mine", "c3d", STATE)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(Exception):
        model_checkpoint.save(tmp_path / "ck", "c3d", {"a": {"b": object()}})
    assert os.listdir(tmp_path) == []


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "w.pth").write_bytes(b"x")
    with pytest.raises(KvjaxError, match=r"kvjax convert .*w\.pth DST --arch"):
        kvjax.load_model("c3d", checkpoint=str(tmp_path / "w.pth"))
    with pytest.raises(KvjaxError, match="not found"):
        kvjax.load_model("c3d", checkpoint=str(tmp_path / "nope"))


def test_checkpoint_of_another_arch_names_both(tmp_path):
    model_checkpoint.save(tmp_path / "ck", "r3d_18", STATE)
    with pytest.raises(KvjaxError, match=r"'r3d_18'.*'c3d'"):
        kvjax.load_model("c3d", checkpoint=str(tmp_path / "ck"))
