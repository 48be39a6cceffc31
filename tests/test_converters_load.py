"""Safe loading of checkpoint files: every format, wrappers unwrapped, hostile files refused."""
import os
import pickle
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from converters.load import load_tensors  # noqa: E402
from kvjax.errors import CorruptFileError, KvjaxError, UnsafeFileError  # noqa: E402

SD = {"conv.weight": torch.arange(24, dtype=torch.float32).reshape(2, 3, 1, 2, 2),
      "bn.running_mean": torch.ones(2), "bn.num_batches_tracked": torch.tensor(3)}


def _check(got):
    assert set(got) == set(SD)
    np.testing.assert_array_equal(got["conv.weight"], SD["conv.weight"].numpy())
    assert got["conv.weight"].dtype == np.float32


class _RunsCode:
    """Unpickling this calls os.system, which would create `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("name", ["w.pt", "w.pth", "w.pth.tar", "w.pickle"])
@pytest.mark.parametrize("legacy", [False, True])
def test_torch_files(tmp_path, name, legacy):
    torch.save(SD, tmp_path / name, _use_new_zipfile_serialization=not legacy)
    _check(load_tensors(tmp_path / name))


def test_lightning_ckpt_prefix_stripped(tmp_path):
    torch.save({"epoch": 3, "state_dict": {f"model.{k}": v for k, v in SD.items()},
                "optimizer_states": []}, tmp_path / "w.ckpt")
    _check(load_tensors(tmp_path / "w.ckpt"))


def test_pyslowfast_pyth_and_dataparallel(tmp_path):
    torch.save({"epoch": 1, "model_state": {f"module.{k}": v for k, v in SD.items()}},
               tmp_path / "w.pyth")
    _check(load_tensors(tmp_path / "w.pyth"))


def test_caffe2_pkl_blobs(tmp_path):
    blobs = {"conv1_w": np.ones((2, 3, 1, 1, 1), np.float32), "conv1_w_momentum": np.ones(1),
             "lr": np.array([0.1])}
    with open(tmp_path / "w.pkl", "wb") as f:
        pickle.dump({"blobs": blobs}, f, protocol=2)
    got = load_tensors(tmp_path / "w.pkl")
    assert list(got) == ["conv1_w"]


def test_safetensors(tmp_path):
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in SD.items()}, str(tmp_path / "w.safetensors"))
    _check(load_tensors(tmp_path / "w.safetensors"))


@pytest.mark.parametrize("name", ["evil.pkl", "evil.pt", "evil.pickle"])
def test_code_running_pickle_is_refused_and_never_runs(tmp_path, name):
    marker = tmp_path / "MARKER"
    with open(tmp_path / name, "wb") as f:
        pickle.dump({"w": _RunsCode(marker)}, f)
    with pytest.raises(UnsafeFileError, match="system"):
        load_tensors(tmp_path / name)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4])
def test_plain_numpy_pickle_with_a_torch_extension_is_read(tmp_path, protocol):
    """torch's weights-only loader refuses numpy's globals in a protocol-2 pickle; such a
    file goes to the restricted unpickler, as the docstring promises, and is read."""
    arrays = {k: v.numpy() for k, v in SD.items()}
    with open(tmp_path / "w.pth", "wb") as f:
        pickle.dump(arrays, f, protocol=protocol)
    _check(load_tensors(tmp_path / "w.pth"))
    marker = tmp_path / "MARKER"  # numpy's globals first, then code: still refused
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({**arrays, "x": _RunsCode(marker)}, f, protocol=protocol)
    with pytest.raises(UnsafeFileError, match="system"):
        load_tensors(tmp_path / "evil.pth")
    assert not marker.exists()


def test_code_running_torch_zip_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "MARKER"
    torch.save({"w": torch.zeros(2), "x": _RunsCode(marker)}, tmp_path / "evil.pth")
    assert zipfile.is_zipfile(tmp_path / "evil.pth")
    with pytest.raises(UnsafeFileError, match=r"evil\.pth"):
        load_tensors(tmp_path / "evil.pth")
    assert not marker.exists()


def test_truncated_zip_is_corrupt_and_named(tmp_path):
    torch.save(SD, tmp_path / "w.pth")
    data = (tmp_path / "w.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match=r"cut\.pth.*(truncated|corrupt)"):
        load_tensors(tmp_path / "cut.pth")


@pytest.mark.parametrize("name", ["r.pt", "r.pkl", "r.safetensors", "r.pyth"])
def test_random_bytes_are_corrupt(tmp_path, name):
    (tmp_path / name).write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CorruptFileError, match=name.replace(".", r"\.")):
        load_tensors(tmp_path / name)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(KvjaxError, match="not found"):
        load_tensors(tmp_path / "nope.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CorruptFileError, match="empty"):
        load_tensors(tmp_path / "empty.pth")


def test_a_whole_model_object_is_refused(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "m.pth")  # pickles the class: needs code
    with pytest.raises(UnsafeFileError, match=r"m\.pth"):
        load_tensors(tmp_path / "m.pth")


def test_without_torch_a_torch_file_says_how_to_install_it(tmp_path, monkeypatch):
    import sys
    torch.save(SD, tmp_path / "w.pth")
    monkeypatch.setitem(sys.modules, "torch", None)  # as after `pip install .` (no extra)
    with pytest.raises(KvjaxError, match=r'pip install "kvjax\[torch\]"'):
        load_tensors(tmp_path / "w.pth")


def test_plain_values_beside_the_weights_are_admitted_inert(tmp_path):
    """Training checkpoints keep numpy scalars and RNG state, paths and slices beside the
    weights, and a best accuracy as a tensor next to the state dict: the weights load, the
    rest stays inert (torch's weights-only loader refused them all; nothing is imported)."""
    import pathlib
    f = tmp_path / "train.pth"
    torch.save({"epoch": 30, "state_dict": {"module." + k: v for k, v in SD.items()},
                "best_acc1": torch.tensor(55.0), "best": np.float64(0.71),
                "rng": np.random.get_state(), "out": pathlib.Path("/runs/a"),
                "crop": slice(0, 112)}, f)
    _check(load_tensors(f))


def test_code_beside_plain_values_is_still_refused(tmp_path):
    marker = tmp_path / "ran"
    f = tmp_path / "evil.pth"
    torch.save({"state_dict": SD, "best": np.float64(0.7), "x": _RunsCode(marker)}, f)
    with pytest.raises(UnsafeFileError, match="would import code"):
        load_tensors(f)
    assert not marker.exists()


def test_bfloat16_safetensors_are_read_as_float32(tmp_path):
    from safetensors.torch import save_file
    sd = {k: (v.bfloat16() if v.is_floating_point() else v) for k, v in SD.items()}
    save_file(sd, tmp_path / "w.safetensors")
    got = load_tensors(tmp_path / "w.safetensors")
    assert got["conv.weight"].dtype == np.float32
    np.testing.assert_array_equal(got["conv.weight"], sd["conv.weight"].float().numpy())


def test_a_torch_file_of_the_old_format_named_pkl_is_read(tmp_path):
    torch.save(SD, tmp_path / "w.pkl", _use_new_zipfile_serialization=False)
    _check(load_tensors(tmp_path / "w.pkl"))


def test_a_truncated_old_format_torch_file_is_corrupt_with_torchs_reason(tmp_path):
    torch.save(SD, tmp_path / "w.pth", _use_new_zipfile_serialization=False)
    data = (tmp_path / "w.pth").read_bytes()
    (tmp_path / "w.pth").write_bytes(data[:len(data) // 2])
    with pytest.raises(CorruptFileError, match=r"w\.pth is a torch file \(the pre-1\.6 format\)"):
        load_tensors(tmp_path / "w.pth")


def test_torchscript_and_html_files_say_what_they_are(tmp_path):
    scripted = torch.jit.script(torch.nn.Conv3d(3, 2, 1))
    scripted.save(str(tmp_path / "s.pt"))
    with pytest.raises(KvjaxError, match=r"s\.pt is a TorchScript archive.*state_dict\(\)"):
        load_tensors(tmp_path / "s.pt")
    (tmp_path / "c3d.pickle").write_text("<!DOCTYPE html><html><head><title>Google Drive - "
                                         "Virus scan warning</title></head></html>")
    with pytest.raises(CorruptFileError, match=r"c3d\.pickle is an HTML page"):
        load_tensors(tmp_path / "c3d.pickle")


def test_tensors_without_a_plain_value_are_one_error(tmp_path):
    q = torch.quantize_per_tensor(torch.ones(2, 2), 0.1, 0, torch.qint8)
    torch.save({"w": q, "b": torch.ones(2)}, tmp_path / "q.pth")
    with pytest.raises(KvjaxError, match=r"q\.pth: tensor 'w' \(torch\.qint8"):
        load_tensors(tmp_path / "q.pth")
    sparse = {"w": torch.eye(3).to_sparse(), "b": torch.ones(2)}
    torch.save(sparse, tmp_path / "s.pth")
    np.testing.assert_array_equal(load_tensors(tmp_path / "s.pth")["w"], np.eye(3))


def test_a_dict_that_contains_itself_is_corrupt_not_a_hang(tmp_path):
    d = {"epoch": 1}
    d["model"] = d
    torch.save(d, tmp_path / "loop.pth")
    with pytest.raises(CorruptFileError, match="contains itself"):
        load_tensors(tmp_path / "loop.pth")


def test_a_damaged_zip_member_is_corrupt_not_other_weights(tmp_path):
    """torch.load does not check the zip's CRCs: a flipped byte loaded as other weights."""
    torch.save(SD, tmp_path / "w.pth")
    data = bytearray((tmp_path / "w.pth").read_bytes())
    with zipfile.ZipFile(tmp_path / "w.pth") as z:
        info = next(i for i in z.infolist() if i.filename.endswith("data/0"))
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + 5] ^= 0xFF  # a byte of conv.weight's storage
    (tmp_path / "w.pth").write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match=r"w\.pth is damaged: the bytes of .*data/0 do "
                                               r"not match their checksum"):
        load_tensors(tmp_path / "w.pth")


def test_caffe2_bookkeeping_blobs_are_dropped_without_momentum(tmp_path):
    blobs = {"conv1_w": np.ones((2, 3, 1, 1, 1), np.float32), "lr": np.array([0.1], np.float32),
             "model_iter": np.array([5], np.int64)}
    (tmp_path / "c2.pkl").write_bytes(pickle.dumps({"blobs": blobs}, protocol=2))
    assert set(load_tensors(tmp_path / "c2.pkl")) == {"conv1_w"}
