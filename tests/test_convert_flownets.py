"""FlowNetPytorch FlowNetS (and FlowNetS-BN) -> kvjax `flownets`: every layer matches."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_refs  # noqa: E402
from converters import commands  # noqa: E402


@pytest.mark.parametrize("batch_norm", [False, True])
def test_every_layer_matches(tmp_path, batch_norm):
    ref = torch_refs.random_module(torch_refs.FlowNetS, batch_norm)
    c = torch_refs.convert_reference(
        ref, tmp_path, "flownets", "flownets_EPE1.951.pth.tar",
        wrap=lambda sd: {"epoch": 300, "arch": "flownets_bn" if batch_norm else "flownets",
                         "div_flow": 20, "state_dict": sd, "best_EPE": 1.951})
    x = np.random.default_rng(1).uniform(0, 1, (1, 3, 64, 128, 3)).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x.transpose(0, 4, 1, 2, 3)))
    got = torch_refs.all_layers(c.model, x)
    assert set(got) == set(want)
    torch_refs.compare(got, want)
    assert got["flow2"].shape == (1, 2, 16, 32, 2)  # one flow field per frame pair, 1/4 size
    assert "flownets (all tensors match)" in commands.inspect(c.src)
