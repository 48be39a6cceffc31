"""`convert` and `inspect` as the CLI calls them: refusals, messages and the checks recorded
in the manifest (cheap cases on a tiny VQ-VAE; each architecture's own test converts and
inspects a full checkpoint, tests/test_convert_cli.py runs the command line)."""
import argparse
import os
import pickle
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import kvjax  # noqa: E402
import torch_refs  # noqa: E402
from converters import commands, tables  # noqa: E402
from converters.parity import ParityError  # noqa: E402
from kvjax.errors import KvjaxError, UnsafeFileError  # noqa: E402
from kvjax.io import model_checkpoint  # noqa: E402

CONVERTED = ["c3d", "pytorch-i3d", "r3d_18", "mc3_18", "r2plus1d_18", "slowfast-i3d-r50",
             "videogpt-vqvae", "flownets"]


def test_every_convertible_arch_is_a_model():
    assert tables.archs() == sorted(CONVERTED)
    assert set(CONVERTED) < set(kvjax.models.available())


@pytest.mark.parametrize("arch", CONVERTED)
def test_no_checkpoint_says_how_to_make_one(arch):
    with pytest.raises(KvjaxError, match=f"kvjax convert SRC DST --arch {arch}"):
        kvjax.load_model(arch)


def test_unknown_arch_lists_valid_ones_before_reading(tmp_path):
    with pytest.raises(KvjaxError, match=r"unknown architecture 'r3d'.*r3d_18"):
        commands.convert(str(tmp_path / "never-read.pth"), str(tmp_path / "out"), "r3d")


def test_convert_refuses_unsafe_file_and_writes_nothing(tmp_path):
    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'MARKER'}",))
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"conv1.weight": RunsCode()}, f)
    with pytest.raises(UnsafeFileError):
        commands.convert(str(tmp_path / "evil.pth"), str(tmp_path / "out"), "c3d")
    with pytest.raises(UnsafeFileError):
        commands.inspect(str(tmp_path / "evil.pth"))
    assert sorted(os.listdir(tmp_path)) == ["evil.pth"]


def test_inspect_unknown_layout(tmp_path):
    torch.save({"features.0.weight": torch.zeros(8, 3, 3, 3), "features.0.bias": torch.zeros(8),
                "head.weight": torch.zeros(2, 8)}, tmp_path / "other.pth")
    text = commands.inspect(str(tmp_path / "other.pth"))
    assert "guessed architecture: none of" in text
    assert "features.0" in text and "8 kernels" in text and "3 tensors" in text


def test_inspect_weights_without_a_dotted_name(tmp_path):
    """A bare module's state_dict ('weight') or an underscored key: listed, no StopIteration."""
    torch.save(torch.nn.Conv3d(3, 8, 3).state_dict(), tmp_path / "bare.pth")
    assert "weight" in commands.inspect(str(tmp_path / "bare.pth"))
    torch.save({"conv1_weight": torch.zeros(4, 3, 3, 3, 3)}, tmp_path / "under.pth")
    text = commands.inspect(str(tmp_path / "under.pth"))
    assert "conv1_weight" in text and "4 kernels" in text


def test_mismatch_names_missing_unexpected_and_misshaped(tmp_path):
    sd = {"conv1.0.weight": torch.zeros(64, 6, 7, 7), "surprise.weight": torch.zeros(1)}
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(KvjaxError) as e:
        commands.convert(str(tmp_path / "partial.pth"), str(tmp_path / "out"), "flownets")
    msg = str(e.value)
    assert "missing" in msg and "conv2.0.weight" in msg and "surprise.weight" in msg
    assert "flownets" in msg and not (tmp_path / "out").exists()


def test_every_layout_change_has_an_exact_inverse():
    """What lets `convert` check that each stored array reads back as its PyTorch tensor."""
    rng = np.random.default_rng(0)
    for arch in CONVERTED:
        table = tables.get(arch)
        shapes = commands._expected_shapes(arch, "{}")
        for key, (path, layout) in table.mapping().items():
            assert isinstance(layout, tables.Layout), (arch, key, layout)
            # the model's rank, with small distinct sizes (a wrong axis order shows)
            small = tuple(1 if n == 1 else 2 + i for i, n in enumerate(shapes[path]))
            stored = rng.standard_normal(small).astype(np.float32)
            np.testing.assert_array_equal(layout(layout.inverse(stored)), stored,
                                          err_msg=f"{arch} {key}")


def test_every_arch_names_an_existing_parity_test():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for arch in CONVERTED:
        assert os.path.isfile(os.path.join(repo, tables.parity_test(arch))), arch


def _vqvae(path, seed=0, edit=None):
    """A tiny VideoGPT VQ-VAE Lightning checkpoint (converts in about a second)."""
    ref = torch_refs.random_module(torch_refs.VQVAE, n_hiddens=16, n_res_layers=1,
                                   downsample=(2, 4, 4), embedding_dim=4, seed=seed)
    sd = ref.state_dict()
    if edit:
        edit(sd)
    args = argparse.Namespace(n_hiddens=16, n_res_layers=1, downsample=[2, 4, 4],
                              embedding_dim=4, sequence_length=4, resolution=16)
    torch.save({"state_dict": sd, "hyper_parameters": {"args": args}}, path)
    return str(path)


def test_videogpt_without_its_downsample_is_refused_unless_given(tmp_path):
    """A bare state dict does not say VideoGPT's strides, and every downsampling kernel is
    4x4x4 whatever they are: refused (it converted as 4,4,4 before), or given by --hparam."""
    ref = torch_refs.random_module(torch_refs.VQVAE, n_hiddens=16, n_res_layers=1,
                                   downsample=(4, 2, 2), embedding_dim=4)
    torch.save(ref.state_dict(), tmp_path / "bare.pth")
    with pytest.raises(KvjaxError, match="does not record its `downsample`.*--hparam "
                                         "downsample=T,H,W"):
        commands.convert(str(tmp_path / "bare.pth"), str(tmp_path / "ck"), "videogpt-vqvae")
    assert not (tmp_path / "ck").exists()
    assert "videogpt-vqvae (all tensors match)" in commands.inspect(str(tmp_path / "bare.pth"))
    commands.convert(str(tmp_path / "bare.pth"), str(tmp_path / "ck"), "videogpt-vqvae",
                     {"downsample": [4, 2, 2]})
    config = model_checkpoint.read_manifest(tmp_path / "ck")["config"]
    assert config["downsample"] == [4, 2, 2]



@pytest.mark.parametrize("hparam,msg", [
    ("downsample=4", r"--hparam downsample must be three powers of two >= 1, the stride per "
                     r"axis T,H,W \(e.g. 4,4,4 or 4,2,2\); got 4$"),
    ("downsample=0,2,2", r"downsample must be three powers of two >= 1.*got 0,2,2$"),
    ("downsample=4,3,2", r"downsample must be three powers of two >= 1.*got 4,3,2$"),
    ("downsample=4,2,x", r"downsample must be three powers of two >= 1.*got '4,2,x'$"),
    ("downsample=4,2", r"downsample must be three powers of two >= 1.*got 4,2$"),
    ("resolution=0", r"--hparam resolution must be a whole number >= 1 .*got 0$"),
    ("sequence_length=x", r"--hparam sequence_length must be a whole number >= 1.*got 'x'$"),
    ("bogus=1", r"unknown hyper-parameter 'bogus' for --arch videogpt-vqvae; valid: "
                r"downsample, resolution, sequence_length$"),
], ids=["one-int", "zero", "not-power-of-two", "not-a-number", "two", "resolution", "frames",
        "unknown"])
def test_videogpt_hparams_are_checked_and_name_the_valid_forms(tmp_path, capsys, hparam, msg):
    """--hparam values a VideoGPT conversion cannot use exit 2 with one line, nothing written
    (they reached int() and math.log2 before, or were ignored)."""
    from kvjax.cli import main
    ref = torch_refs.random_module(torch_refs.VQVAE, n_hiddens=16, n_res_layers=1,
                                   downsample=(4, 2, 2), embedding_dim=4)
    torch.save(ref.state_dict(), tmp_path / "bare.pth")
    assert main(["convert", str(tmp_path / "bare.pth"), str(tmp_path / "ck"),
                 "--arch", "videogpt-vqvae", "--hparam", "downsample=4,2,2",
                 "--hparam", hparam]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kvjax convert: error: "), err
    assert re.search(msg, err[0]), err[0]
    assert os.listdir(tmp_path) == ["bare.pth"]


def test_hparams_are_checked_before_the_file_is_read(tmp_path):
    never = str(tmp_path / "never-read.pth")
    with pytest.raises(KvjaxError, match=r"--arch c3d takes no --hparam \(got 'downsample'\)"):
        commands.convert(never, str(tmp_path / "out"), "c3d", {"downsample": [4, 2, 2]})
    with pytest.raises(KvjaxError, match="downsample must be three powers of two"):
        commands.convert(never, str(tmp_path / "out"), "videogpt-vqvae", {"downsample": 4})


def test_videogpt_unusable_recorded_downsample_says_to_give_it(tmp_path):
    ref = torch_refs.random_module(torch_refs.VQVAE, n_hiddens=16, n_res_layers=1,
                                   downsample=(2, 4, 4), embedding_dim=4)
    torch.save({"state_dict": ref.state_dict(),
                "hyper_parameters": {"downsample": [2, 4]}}, tmp_path / "vq.ckpt")
    with pytest.raises(KvjaxError, match=r"checkpoint's hyper-parameters are unusable: "
                                         r"downsample must be .*got 2,4; give the right value "
                                         r"with --hparam downsample="):
        commands.convert(str(tmp_path / "vq.ckpt"), str(tmp_path / "ck"), "videogpt-vqvae")
    commands.convert(str(tmp_path / "vq.ckpt"), str(tmp_path / "ck"), "videogpt-vqvae",
                     {"downsample": [2, 4, 4]})
    assert model_checkpoint.read_manifest(tmp_path / "ck")["config"]["downsample"] == [2, 4, 4]

def test_hparam_arguments_parse_to_numbers_and_lists():
    from kvjax.cli import _hparam
    assert _hparam("downsample=4,2,2") == ("downsample", [4, 2, 2])
    assert _hparam("resolution=64") == ("resolution", 64)
    assert _hparam("name=ucf101") == ("name", "ucf101")
    with pytest.raises(argparse.ArgumentTypeError):
        _hparam("downsample")


def test_manifest_records_the_checks(tmp_path):
    src = _vqvae(tmp_path / "vq.ckpt")
    summary = commands.convert(src, str(tmp_path / "ck"), "videogpt-vqvae")
    parity = model_checkpoint.read_manifest(tmp_path / "ck")["parity"]
    assert parity["weights_round_trip"] == {"checked": 41, "ignored": 14, "max_abs_error": 0.0}
    assert parity["forward"] == {"finite": True, "layers": 13, "input_size": [4, 16, 16],
                                 "seed": 0}
    assert parity["pytorch_parity"]["test"] == "tests/test_convert_videogpt.py"
    assert "41 tensors read back bit-identical" in summary and "all 13 layers" in summary


def test_same_file_again_replaces_another_file_is_refused(tmp_path):
    src, other = _vqvae(tmp_path / "vq.ckpt"), _vqvae(tmp_path / "other.ckpt", seed=1)
    dst = str(tmp_path / "ck")
    commands.convert(src, dst, "videogpt-vqvae")
    first = model_checkpoint.read_manifest(dst)
    commands.convert(src, dst, "videogpt-vqvae")  # the same command again: replaced
    assert model_checkpoint.read_manifest(dst)["source"] == first["source"]
    with pytest.raises(KvjaxError, match=r"ck exists already: a converted 'videogpt-vqvae' "
                                         r"checkpoint of .*vq\.ckpt, not of this file"):
        commands.convert(other, dst, "videogpt-vqvae")
    assert model_checkpoint.read_manifest(dst)["source"] == first["source"]
    assert sorted(os.listdir(tmp_path)) == ["ck", "other.ckpt", "vq.ckpt"]


def test_non_finite_weights_are_refused_and_nothing_written(tmp_path):
    def poison(sd):
        sd["encoder.conv_last.conv.weight"][0, 0, 1, 1, 1] = float("nan")
    src = _vqvae(tmp_path / "vq.ckpt", edit=poison)
    with pytest.raises(ParityError, match=r"non-finite values .* first at 'conv_last'; "
                                          r"non-finite weights: conv_last/kernel \(1 of 6912\)"):
        commands.convert(src, str(tmp_path / "new" / "ck"), "videogpt-vqvae")
    assert sorted(os.listdir(tmp_path)) == ["vq.ckpt"]  # not even the parent folder


def test_checkpoint_that_does_not_read_back_is_refused(tmp_path, monkeypatch):
    load = model_checkpoint.load

    def corrupted(path):  # what a faulty writer or reader would hand back
        arch, state, man = load(path)
        state["pre_vq_conv"]["bias"] = state["pre_vq_conv"]["bias"] + np.float32(1e-3)
        return arch, state, man
    monkeypatch.setattr(model_checkpoint, "load", corrupted)
    src = _vqvae(tmp_path / "vq.ckpt")
    with pytest.raises(ParityError, match=r"does not read back as the source: 1 of 41 tensors "
                                          r"differ \(pre_vq_conv\.conv\.bias -> pre_vq_conv/bias: "
                                          r"max abs error 0\.001\)"):
        commands.convert(src, str(tmp_path / "ck"), "videogpt-vqvae")
    assert sorted(os.listdir(tmp_path)) == ["vq.ckpt"]


def test_inspect_checkpoint_this_kvjax_cannot_build_still_lists_arrays(tmp_path):
    state = {"b": {"kernel": np.zeros((1, 1, 1, 2, 4), np.float32)},
             "a": {"bias": np.zeros(4, np.float32)}}
    model_checkpoint.save(tmp_path / "ck", "future-net", state)  # no parity recorded either
    text = commands.inspect(str(tmp_path / "ck"))
    assert "arch future-net" in text and "checks: none recorded" in text
    assert "layers: cannot build the model (unknown model 'future-net'" in text
    assert "convolution layers (1, 4 kernels" in text and "a/bias" in text
