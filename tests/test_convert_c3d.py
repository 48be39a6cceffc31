"""c3d-pytorch -> kvjax `c3d`: every exposed layer matches the PyTorch reference."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import kvjax  # noqa: E402
from converters import commands  # noqa: E402
from kvjax.errors import KvjaxError, WeightsMismatchError  # noqa: E402
import torch_refs  # noqa: E402


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(reference module, converted checkpoint dir, source) for a randomly initialised C3D."""
    ref = torch_refs.random_module(torch_refs.C3D, num_classes=11)
    c = torch_refs.convert_reference(ref, tmp_path_factory.mktemp("c3d"), "c3d", "c3d.pickle")
    assert "c3d" in c.summary and c.dst in c.summary
    return ref, c.dst, c.src


def _parity(ref, dst, size):
    model = kvjax.load_model("c3d", checkpoint=dst)
    x = np.random.default_rng(1).uniform(0, 255, (1, *size, 3)).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x.transpose(0, 4, 1, 2, 3)))
    got = torch_refs.all_layers(model, x)
    assert set(got) == set(want)
    return torch_refs.compare(got, want)


def test_every_layer_matches(converted):
    ref, dst, _ = converted
    errs = _parity(ref, dst, (16, 112, 112))
    assert len(errs) == 8 * 2 + 5 + 5 and "fc8" in errs


def test_model_facts(converted):
    _, dst, _ = converted
    model = kvjax.load_model("c3d", checkpoint=dst)
    assert model.input_size == (16, 112, 112) and model.value_range == (0.0, 255.0)
    layers = {l.name: l for l in model.layers()}
    assert layers["conv1"].shape == (16, 112, 112, 64)
    assert layers["pool5"].shape == (1, 4, 4, 512)
    assert layers["fc8"].channels == 11 and layers["conv1/conv"].read == "pre-activation"
    small = [l.name for l in model.layers((16, 32, 32))]  # fc6 needs 16x112x112: ends at pool5
    assert small[-1] == "pool5"


def test_no_checkpoint_says_how_to_make_one():
    with pytest.raises(KvjaxError, match=r"kvjax convert SRC DST --arch c3d"):
        kvjax.load_model("c3d")


def test_mismatch_lists_names(converted, tmp_path):
    sd = {k: v for k, v in converted[0].state_dict().items() if not k.startswith("fc")}
    sd.pop("conv3a.bias")
    sd["extra.weight"] = torch.zeros(3)
    sd["conv2.weight"] = torch.zeros(128, 64, 3, 3, 1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(WeightsMismatchError) as e:
        commands.convert(str(tmp_path / "bad.pth"), str(tmp_path / "out"), "c3d")
    msg = str(e.value)
    assert "conv3a.bias" in msg and "extra.weight" in msg and "conv2.weight" in msg
    assert "fc6.weight" in msg and "(128, 64, 3, 3, 1)" in msg
    assert not (tmp_path / "out").exists()


def test_inspect_torch_file_guesses_c3d(converted):
    _, _, src = converted
    text = commands.inspect(src)
    assert "guessed architecture: c3d (all tensors match)" in text
    assert "convolution layers (8, 2752 kernels" in text
    assert "conv5b.weight" in text and "(512, 512, 3, 3, 3)" in text


def test_inspect_converted_checkpoint(converted):
    _, dst, src = converted
    text = commands.inspect(dst)
    assert "arch c3d" in text and "num_classes" in text and "conv5b/kernel" in text
    assert "(3, 3, 3, 512, 512)" in text and "2752 kernels" in text

