"""torchvision video ResNets (r3d_18, mc3_18, r2plus1d_18) -> kvjax: every layer matches."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_refs  # noqa: E402
from converters import commands  # noqa: E402
from kvjax.errors import WeightsMismatchError  # noqa: E402


def _convert(arch, tmp_path, num_classes=5):
    ref = torch_refs.random_module(torch_refs.VideoResNet, arch, num_classes=num_classes)
    c = torch_refs.convert_reference(ref, tmp_path, arch, f"{arch}.pth")
    return ref, c.model, c.src


@pytest.mark.parametrize("arch", ["r3d_18", "mc3_18", "r2plus1d_18"])
def test_every_layer_matches(arch, tmp_path):
    ref, model, src = _convert(arch, tmp_path)
    x = np.random.default_rng(1).uniform(0, 1, (1, 8, 32, 32, 3)).astype(np.float32)
    mean = np.asarray(torch_refs.KINETICS_MEAN, np.float32)
    std = np.asarray(torch_refs.KINETICS_STD, np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(((x - mean) / std).transpose(0, 4, 1, 2, 3)))
    got = torch_refs.all_layers(model, x)
    assert set(got) == set(want)
    torch_refs.compare(got, want)
    assert got["fc"].shape == (1, 5)
    assert f"guessed architecture: {arch} (all tensors match)" in commands.inspect(src)


def test_r2plus1d_midplanes_and_shapes(tmp_path):
    _, model, _ = _convert("r2plus1d_18", tmp_path)
    layers = {l.name: l for l in model.layers()}
    assert layers["stem/spatial"].channels == 45
    assert layers["layer1/0/conv1/mid"].channels == 144   # 64*64*27 // (64*9 + 3*64)
    assert layers["layer2/0/conv1/mid"].channels == 230   # 64*128*27 // (64*9 + 3*128)
    assert layers["layer2/0/conv2/mid"].channels == 230   # the block's midplanes, reused
    assert layers["layer4"].shape == (2, 7, 7, 512)


def test_r3d_weights_do_not_fit_mc3(tmp_path):
    torch.save(torch_refs.VideoResNet("r3d_18", 5).state_dict(), tmp_path / "r3d.pth")
    with pytest.raises(WeightsMismatchError, match=r"layer2\.0\.conv1\.0\.weight.*--arch r3d_18"):
        commands.convert(str(tmp_path / "r3d.pth"), str(tmp_path / "ck"), "mc3_18")
