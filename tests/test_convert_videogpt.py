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


def _lightning_1_3_classes():
    """Stand-ins for pytorch_lightning 1.3's ModelCheckpoint and AttributeDict, importable
    under their real names only while the checkpoint is written (kvjax never imports them)."""
    import types
    made = {}
    for module, name, base in (("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint",
                                object), ("pytorch_lightning.utilities.parsing", "AttributeDict",
                                          dict)):
        mod = types.ModuleType(module)
        cls = type(name, (base,), {"__module__": module})
        setattr(mod, name, cls)
        made[module] = mod
    for module in list(made):  # the parent packages, for the import pickle does
        parts = module.split(".")
        for i in range(1, len(parts)):
            made.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    return made


def test_lightning_1_3_checkpoint_with_callbacks_converts(tmp_path, monkeypatch):
    """VideoGPT pins pytorch_lightning 1.3.3, whose .ckpt keys the callbacks' state by their
    class and keeps the hyper-parameters in an AttributeDict: both refer to Lightning's
    classes. They are admitted as inert stand-ins (the file was refused as unsafe before)."""
    import sys
    mods = _lightning_1_3_classes()
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    checkpoint = mods["pytorch_lightning.callbacks.model_checkpoint"].ModelCheckpoint
    hparams = mods["pytorch_lightning.utilities.parsing"].AttributeDict(
        n_hiddens=32, n_res_layers=1, downsample=[4, 2, 2], embedding_dim=8, n_codes=32,
        sequence_length=8, resolution=32)
    ref = torch_refs.random_module(torch_refs.VQVAE, n_hiddens=32, n_res_layers=1,
                                   downsample=(4, 2, 2), embedding_dim=8)
    src = torch_refs.save_state_dict(ref, str(tmp_path / "vqvae.ckpt"), lambda sd: {
        "epoch": 3, "global_step": 10, "pytorch-lightning_version": "1.3.3", "state_dict": sd,
        "callbacks": {checkpoint: {"monitor": "val/recon_loss", "best_model_score":
                                   torch.tensor(0.1)}},
        "hparams_name": "args", "hyper_parameters": hparams})
    for name in mods:  # as on a machine without Lightning
        monkeypatch.delitem(sys.modules, name)
    summary = commands.convert(src, str(tmp_path / "ck"), "videogpt-vqvae")
    assert "declared irrelevant" in summary
    import kvjax
    model = kvjax.load_model("videogpt-vqvae", checkpoint=str(tmp_path / "ck"))
    assert model.input_size == (8, 32, 32)  # from the AttributeDict's hyper-parameters
    x = np.random.default_rng(1).uniform(-0.5, 0.5, (1, 8, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x.transpose(0, 4, 1, 2, 3)))
    got = torch_refs.all_layers(model, x)
    torch_refs.compare(got, want)
    assert got["pre_vq_conv"].shape == (1, 2, 16, 16, 8)  # downsample 4, 2, 2 read back
