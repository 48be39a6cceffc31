"""VideoGPT VQ-VAE (Lightning .ckpt) -> kvjax `videogpt-vqvae` encoder: every layer matches."""
import argparse

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_refs  # noqa: E402
from converters import commands  # noqa: E402


@pytest.mark.parametrize("downsample", [(2, 4, 4), (4, 4, 4)])
def test_every_layer_matches(tmp_path, downsample):
    ref = torch_refs.random_module(torch_refs.VQVAE, n_hiddens=32, n_res_layers=2,
                                   downsample=downsample, embedding_dim=8)
    args = argparse.Namespace(n_hiddens=32, n_res_layers=2, downsample=list(downsample),
                              embedding_dim=8, n_codes=32, sequence_length=8, resolution=32,
                              data_path="/data/ucf101")
    c = torch_refs.convert_reference(
        ref, tmp_path, "videogpt-vqvae", "vqvae.ckpt",
        wrap=lambda sd: {"epoch": 3, "global_step": 10, "pytorch-lightning_version": "1.9.0",
                         "state_dict": sd, "hyper_parameters": {"args": args}})
    assert "declared irrelevant" in c.summary
    assert c.model.input_size == (8, 32, 32) and c.model.value_range == (-0.5, 0.5)
    x = np.random.default_rng(1).uniform(-0.5, 0.5, (1, 8, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x.transpose(0, 4, 1, 2, 3)))
    got = torch_refs.all_layers(c.model, x)
    assert set(got) == set(want)
    torch_refs.compare(got, want)
    t, h, w = (8 // downsample[0], 32 // downsample[1], 32 // downsample[2])
    assert got["pre_vq_conv"].shape == (1, t, h, w, 8)
    assert "videogpt-vqvae (all tensors match)" in commands.inspect(c.src)
