"""`convert` and `inspect` as the CLI calls them: refusals and messages (cheap cases; each
architecture's own test converts and inspects a full checkpoint)."""
import os
import pickle

import pytest

torch = pytest.importorskip("torch")

import kvjax  # noqa: E402
from converters import commands, tables  # noqa: E402
from kvjax.errors import KvjaxError, UnsafeFileError  # noqa: E402

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


def test_mismatch_names_missing_unexpected_and_misshaped(tmp_path):
    sd = {"conv1.0.weight": torch.zeros(64, 6, 7, 7), "surprise.weight": torch.zeros(1)}
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(KvjaxError) as e:
        commands.convert(str(tmp_path / "partial.pth"), str(tmp_path / "out"), "flownets")
    msg = str(e.value)
    assert "missing" in msg and "conv2.0.weight" in msg and "surprise.weight" in msg
    assert "flownets" in msg and not (tmp_path / "out").exists()
