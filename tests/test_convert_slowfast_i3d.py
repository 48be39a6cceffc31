"""PySlowFast I3D-R50 (.pyth and Caffe2 .pkl) -> kvjax `slowfast-i3d-r50`: every layer matches."""
import pickle
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_refs  # noqa: E402
from converters import commands  # noqa: E402


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(reference module, its conversion) for a random I3D-R50 saved as PySlowFast's .pyth."""
    ref = torch_refs.random_module(torch_refs.SlowFastResNet, num_classes=6)
    return ref, torch_refs.convert_reference(
        ref, tmp_path_factory.mktemp("slowfast"), "slowfast-i3d-r50", "I3D_8x8_R50.pyth",
        wrap=lambda sd: {"epoch": 196, "model_state": sd, "optimizer_state": {},
                         "cfg": "MODEL:\n  ARCH: i3d\n"})


def _to_caffe2(key: str) -> str:
    """PySlowFast key -> Caffe2 blob name (the inverse of PySlowFast's name conversion)."""
    bn = {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv"}
    if m := re.fullmatch(r"s1\.pathway0_stem\.conv\.weight", key):
        return "conv1_w"
    if m := re.fullmatch(r"s1\.pathway0_stem\.bn\.(\w+)", key):
        return f"res_conv1_bn_{bn[m[1]]}"
    if m := re.fullmatch(r"s(\d)\.pathway0_res(\d+)\.branch2\.([abc])\.weight", key):
        return f"res{m[1]}_{m[2]}_branch2{m[3]}_w"
    if m := re.fullmatch(r"s(\d)\.pathway0_res(\d+)\.branch2\.([abc])_bn\.(\w+)", key):
        return f"res{m[1]}_{m[2]}_branch2{m[3]}_bn_{bn[m[4]]}"
    if m := re.fullmatch(r"s(\d)\.pathway0_res(\d+)\.branch1\.weight", key):
        return f"res{m[1]}_{m[2]}_branch1_w"
    if m := re.fullmatch(r"s(\d)\.pathway0_res(\d+)\.branch1_bn\.(\w+)", key):
        return f"res{m[1]}_{m[2]}_branch1_bn_{bn[m[3]]}"
    return {"head.projection.weight": "pred_w", "head.projection.bias": "pred_b"}[key]


def _video(size):
    return np.random.default_rng(1).uniform(-2, 2.4, (1, *size, 3)).astype(np.float32)


def test_every_layer_to_s5_matches(converted):
    ref, c = converted
    x = _video((8, 32, 32))  # small; the head (avg-pool 4x7x7) needs 8x224x224, see slow test
    with torch.no_grad():
        want = ref(torch.from_numpy(x.transpose(0, 4, 1, 2, 3)), until="s5")
    got = torch_refs.all_layers(c.model, x, until="s5")
    assert set(got) == set(want) and len(got) == 3 + 16 * 6 + 4 + 1
    torch_refs.compare(got, want)
    assert "guessed architecture: slowfast-i3d-r50 (all tensors match)" in commands.inspect(c.src)


def test_caffe2_blobs_give_the_same_weights(converted, tmp_path):
    """The Caffe2 .pkl of the same network converts to exactly the .pyth's state."""
    from kvjax.io import model_checkpoint
    from kvjax.models.weights import flatten
    ref, c = converted
    blobs = {_to_caffe2(k): v.numpy() for k, v in ref.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    blobs.update({"lr": np.array([0.1]), "model_iter": np.array([5]),
                  "conv1_w_momentum": np.zeros((64, 3, 5, 7, 7), np.float32)})
    pkl = str(tmp_path / "I3D_8x8_R50.pkl")
    with open(pkl, "wb") as f:
        pickle.dump({"blobs": blobs}, f, protocol=2)
    commands.convert(pkl, str(tmp_path / "ck-c2"), "slowfast-i3d-r50")
    a = flatten(model_checkpoint.load(c.dst)[1])  # the .pyth's conversion
    b = flatten(model_checkpoint.load(tmp_path / "ck-c2")[1])
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert "slowfast-i3d-r50 (all tensors match)" in commands.inspect(pkl)


@pytest.mark.slow
def test_every_layer_matches_full_size(converted):
    ref, c = converted
    x = _video((8, 224, 224))
    with torch.no_grad():
        want = ref(torch.from_numpy(x.transpose(0, 4, 1, 2, 3)))
    got = torch_refs.all_layers(c.model, x)
    torch_refs.compare(got, want)
    assert got["head"].shape == (1, 1, 1, 1, 6)
