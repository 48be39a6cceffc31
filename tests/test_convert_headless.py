"""Checkpoints people already have: backbones without their classifier head, and weights
under a wrapper's key prefix (MoCo's encoder_q./encoder_k., MMAction2's backbone.).

The MoCo-style file is real PyTorch: a random r3d_18 (torchvision layout, from
tests/torch_refs.py) with `fc` removed as the query encoder, and as the key encoder the same
tensors but for other stem weights (MoCo starts it as a copy; torch.save then stores the
shared tensors once, which keeps the file small), saved by torch.save the way MoCo's
training script saves them ({"epoch", "arch", "state_dict": {"module.encoder_q.*",
"module.encoder_k.*", "module.queue", "module.queue_ptr"}, "optimizer"}), converted once
(module fixture).
"""
import argparse
import os
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import kvjax  # noqa: E402
import torch_refs  # noqa: E402
from converters import commands, tables  # noqa: E402
from converters.load import load_checkpoint  # noqa: E402
from kvjax.cli import main  # noqa: E402
from kvjax.errors import KvjaxError, WeightsMismatchError  # noqa: E402
from kvjax.io import model_checkpoint  # noqa: E402

ARCH = "r3d_18"


def _backbone(seed):
    """(reference r3d_18 with a 5-class fc, its state dict without fc.*)."""
    ref = torch_refs.random_module(torch_refs.VideoResNet, ARCH, num_classes=5, seed=seed)
    sd = {k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    return ref, sd


@pytest.fixture(scope="module")
def moco(tmp_path_factory):
    """(query encoder's reference module, its headless state dict, the key encoder's state
    dict, path of the MoCo-style file)."""
    d = tmp_path_factory.mktemp("moco")
    ref_q, q = _backbone(seed=0)
    g = torch.Generator().manual_seed(1)
    k = {**q, "stem.0.weight": torch.randn(q["stem.0.weight"].shape, generator=g),
         "stem.1.running_mean": torch.randn(64, generator=g)}
    sd = {**{f"module.encoder_q.{n}": v for n, v in q.items()},
          **{f"module.encoder_k.{n}": v for n, v in k.items()},
          "module.queue": torch.randn(128, 64),
          "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    path = str(d / "moco_r3d18.pth.tar")
    torch.save({"epoch": 200, "arch": ARCH, "state_dict": sd,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.03}]}}, path)
    return ref_q, q, k, path


@pytest.fixture(scope="module")
def converted(moco, tmp_path_factory):
    """(DST, summary) of the query encoder converted with --prefix encoder_q (no dot)."""
    dst = str(tmp_path_factory.mktemp("moco-ck") / "ck")
    return dst, commands.convert(moco[3], dst, ARCH, prefix="encoder_q")


def _video():
    x = np.random.default_rng(1).uniform(0, 1, (1, 8, 32, 32, 3)).astype(np.float32)
    mean = np.asarray(torch_refs.KINETICS_MEAN, np.float32)
    std = np.asarray(torch_refs.KINETICS_STD, np.float32)
    return x, torch.from_numpy(((x - mean) / std).transpose(0, 4, 1, 2, 3))


# ------------------------------------------------------------------- headless + --prefix

def test_prefix_picks_the_query_encoder_and_it_converts_without_its_head(moco, converted):
    ref_q, q, k, src = moco
    dst, summary = converted
    assert f"key prefix 'encoder_q.' (--prefix): {len(q)} of {2 * len(q) + 2} tensors " \
           "converted" in summary
    assert ("no classifier head in the file (fc.weight, fc.bias): converted without it; "
            "layers up to avgpool") in summary
    man = model_checkpoint.read_manifest(dst)
    assert man["config"] == {"num_classes": 0} and man["source"]["prefix"] == "encoder_q."

    model = kvjax.load_model(ARCH, checkpoint=dst)  # rebuilt headless from the manifest
    names = model.layer_names()
    assert names[-1] == "avgpool" and "fc" not in names and len(names) == 39  # 40 with fc
    # the query encoder's weights, not the key encoder's
    stem = np.asarray(model.net.stem.kernel[...]).transpose(4, 3, 0, 1, 2)
    np.testing.assert_array_equal(stem, q["stem.0.weight"].numpy())
    assert not np.allclose(stem, k["stem.0.weight"].numpy())

    # every layer up to the head equals PyTorch's own backbone (the full reference model)
    x, xt = _video()
    with torch.no_grad():
        want = ref_q(xt)
    got = torch_refs.all_layers(model, x)
    assert set(got) == set(want) - {"fc"}
    errs = torch_refs.compare(got, want, names=sorted(got))
    assert errs["avgpool"] <= torch_refs.TOL and got["avgpool"].shape == (1, 1, 1, 1, 512)


def test_layers_and_inspect_read_the_headless_checkpoint(converted, capsys):
    dst = converted[0]
    assert main(["layers", "--model", ARCH, "--checkpoint", dst]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()[3:]]
    assert rows[-1] == "avgpool" and "fc" not in rows and len(rows) == 39
    assert main(["inspect", dst]) == 0
    out = capsys.readouterr().out
    assert f"arch {ARCH}, config {{'num_classes': 0}}" in out
    assert "tensors under the key prefix 'encoder_q.'" in out
    assert "no classifier head (the source had none)" in out
    assert "layers in network order (39;" in out and "fc/kernel" not in out


def test_two_prefixes_that_fit_equally_are_refused_naming_both(moco, tmp_path):
    with pytest.raises(KvjaxError) as e:
        commands.convert(moco[3], str(tmp_path / "ck"), ARCH)
    assert re.search(r"fit r3d_18 equally well under 2 key prefixes: encoder_q\., "
                     r"encoder_k\. .*choose one with --prefix: kvjax convert .*moco_r3d18"
                     r"\.pth\.tar .*ck --arch r3d_18 --prefix encoder_q\.$", str(e.value))
    assert os.listdir(tmp_path) == []


def test_a_prefix_that_matches_nothing_lists_those_there(moco, tmp_path, capsys):
    q = moco[1]
    assert main(["convert", moco[3], str(tmp_path / "ck"), "--arch", ARCH,
                 "--prefix", "encoder"]) == 2  # a key component, not a string prefix
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kvjax convert: error: --prefix 'encoder' "
                                               "matches no tensor of "), err
    assert err[0].endswith(f"the keys there are under encoder_q. ({len(q)}), encoder_k. "
                           f"({len(q)}); 2 without one (queue, queue_ptr); the tensors fit "
                           f"r3d_18 under encoder_q., encoder_k.")
    assert os.listdir(tmp_path) == []


def test_a_prefix_given_with_the_wrapper_that_the_loader_removed(moco):
    """load_checkpoint strips "module." (every key has it): --prefix module.encoder_k. still
    names the key encoder."""
    tensors, meta = load_checkpoint(moco[3])
    kept, used, line = commands._select_prefix(tensors, meta, ARCH, "module.encoder_k.",
                                               moco[3], "DST")
    assert used == "encoder_k." and "key prefix 'encoder_k.' (--prefix)" in line
    assert set(kept) == set(moco[2])
    np.testing.assert_array_equal(kept["stem.0.weight"], moco[2]["stem.0.weight"].numpy())


def test_inspect_names_the_architecture_and_both_prefixes(moco):
    text = commands.inspect(moco[3])
    assert ("guessed architecture: r3d_18 under each of the key prefixes encoder_q., "
            "encoder_k. (all tensors match, no classifier head (fc.weight, fc.bias)), "
            "equally: choose one, e.g. `kvjax convert ") in text
    assert "--arch r3d_18 --prefix encoder_q.`" in text


def test_a_unique_prefix_is_found_and_named(moco, tmp_path):
    """MMAction2 keeps the network under "backbone." beside its "cls_head.": the prefix
    is inferred (no conversion needed to see it), and `inspect` says so."""
    sd = moco[1]
    mm = {**{f"backbone.{n}": v for n, v in sd.items()},
          "cls_head.fc_cls.weight": torch.zeros(5, 512), "cls_head.fc_cls.bias": torch.zeros(5)}
    path = str(tmp_path / "mmaction_r3d.pth")
    torch.save({"meta": {"epoch": 3}, "state_dict": mm}, path)
    tensors, meta = load_checkpoint(path)
    kept, used, line = commands._select_prefix(tensors, meta, ARCH, None, path, "DST")
    assert used == "backbone." and set(kept) == set(sd)
    assert line == (f"key prefix 'backbone.' found: the only one under which the tensors fit "
                    f"r3d_18 (all tensors match, no classifier head (fc.weight, fc.bias)); "
                    f"{len(sd)} of {len(sd) + 2} tensors converted, those outside it left out "
                    f"(--prefix chooses another)")
    assert "guessed architecture: r3d_18 under the key prefix 'backbone.' (all tensors " \
           "match, no classifier head" in commands.inspect(path)


def _vqvae_under(path, prefix):
    """A tiny VideoGPT VQ-VAE Lightning checkpoint with its keys under `prefix`, beside a
    tensor of another model (converts in about a second)."""
    ref = torch_refs.random_module(torch_refs.VQVAE, n_hiddens=16, n_res_layers=1,
                                   downsample=(2, 4, 4), embedding_dim=4)
    sd = {f"{prefix}{k}": v for k, v in ref.state_dict().items()}
    sd["prior.pos_embedding"] = torch.zeros(4, 8)
    args = argparse.Namespace(n_hiddens=16, n_res_layers=1, downsample=[2, 4, 4],
                              embedding_dim=4, sequence_length=4, resolution=16)
    torch.save({"state_dict": sd, "hyper_parameters": {"args": args}}, path)
    return ref, str(path)


def test_an_inferred_prefix_converts_and_is_recorded(tmp_path):
    ref, src = _vqvae_under(tmp_path / "vq.ckpt", "vqvae.")
    summary = commands.convert(src, str(tmp_path / "ck"), "videogpt-vqvae")
    n = len(ref.state_dict())
    assert (f"  key prefix 'vqvae.' found: the only one under which the tensors fit "
            f"videogpt-vqvae (all tensors match); {n} of {n + 1} tensors converted") in summary
    assert "no classifier head" not in summary  # VideoGPT's encoder has none to lack
    man = model_checkpoint.read_manifest(tmp_path / "ck")
    assert man["source"]["prefix"] == "vqvae." and man["config"]["n_hiddens"] == 16


def test_keys_that_fit_as_they_are_are_not_searched(moco, monkeypatch):
    """The common case costs nothing: no prefix search, no prefix recorded."""
    tensors = {k: v.numpy() for k, v in moco[1].items()}  # a plain headless state dict
    monkeypatch.setattr(commands, "fitting_prefixes", lambda *a: pytest.fail("searched"))
    kept, used, line = commands._select_prefix(tensors, {}, ARCH, None, "SRC", "DST")
    assert kept is tensors and used == "" and line is None


# ------------------------------------------------------------------ what stays an error

def test_a_head_only_partly_there_is_an_error_naming_the_rest(moco, tmp_path):
    """fc.bias without fc.weight: refused, the weight named as missing (the class count is
    read off the bias, so the bias is not reported as mis-shaped against 400 classes)."""
    torch.save({**moco[1], "fc.bias": torch.zeros(5)}, tmp_path / "partial.pth")
    with pytest.raises(WeightsMismatchError) as e:
        commands.convert(str(tmp_path / "partial.pth"), str(tmp_path / "ck"), ARCH)
    msg = str(e.value)
    assert "does not match the model for architecture 'r3d_18': missing 1: fc.weight. " \
           "The classifier head (fc.weight, fc.bias) is only partly in the file: a " \
           "checkpoint without its head must lack all of it" in msg
    assert "expected (" not in msg
    assert os.listdir(tmp_path) == ["partial.pth"]
    table = tables.get(ARCH)  # and the other way round: the weight alone
    only_weight = {"fc.weight": np.zeros((5, 512), np.float32)}
    assert table.config(only_weight) == {"num_classes": 5} and "fc.bias" in table.mapping(5)


def test_headless_but_missing_another_tensor_names_it(moco, tmp_path):
    sd = {k: v for k, v in moco[1].items() if k != "layer2.0.conv1.0.weight"}
    torch.save(sd, tmp_path / "holed.pth")
    with pytest.raises(WeightsMismatchError, match=r"'r3d_18': missing 1: "
                                                   r"layer2\.0\.conv1\.0\.weight$"):
        commands.convert(str(tmp_path / "holed.pth"), str(tmp_path / "ck"), ARCH)


# ------------------------------------------------------------- every arch with a head

HEADS = {  # arch: (model module, the layers the head adds, the last layer without it)
    "c3d": ("c3d", {"fc8"}, "fc7"),
    "pytorch-i3d": ("pytorch_i3d", {"Logits"}, "Mixed_5c"),
    "r3d_18": ("video_resnet", {"fc"}, "avgpool"),
    "r2plus1d_18": ("video_resnet", {"fc"}, "avgpool"),
    "slowfast-i3d-r50": ("slowfast_i3d", {"head"}, "s5"),
}


@pytest.mark.parametrize("arch", sorted(HEADS))
def test_without_its_head_an_arch_maps_and_builds_up_to_the_layer_before(arch):
    """A file with none of the head's tensors: config num_classes 0, a mapping without
    them, and a model whose layers are the full model's up to the head."""
    import functools
    import importlib

    from flax import nnx

    from kvjax.models.base import VideoModel

    name, head_layers, last = HEADS[arch]
    module = importlib.import_module(f"kvjax.models.{name}")
    make = functools.partial(module.make_net, arch) if name == "video_resnet" else module.make_net
    table = tables.get(arch)
    assert table.head and table.config({}) == {"num_classes": 0}
    assert table.head_in({}) == "none" and table.head_in({table.head[0]: 0}) == "part"
    full, headless = table.mapping(), table.mapping(num_classes=0)
    assert set(full) - set(headless) == set(table.head)

    def layers(num_classes):
        net = nnx.eval_shape(lambda: make(num_classes=num_classes))
        return VideoModel(arch, net, module.INPUT_SIZE, module.VALUE_RANGE).layer_names()
    with_head, without = layers(3), layers(0)
    assert without[-1] == last and set(with_head) - set(without) == head_layers
    assert with_head[:len(without)] == without


# ----------------------------------------------------- slow: PyTorch parity, headless

@pytest.mark.slow
@pytest.mark.parametrize("arch", ["pytorch-i3d", "slowfast-i3d-r50"])
def test_headless_conversion_matches_pytorch(arch, tmp_path):
    """pytorch-i3d without `logits.*`, PySlowFast without `head.projection.*`: converted
    (about 12 s each here, hence marked slow), every layer equals the PyTorch model's."""
    cls, until, size, lo, hi = {
        "pytorch-i3d": (torch_refs.InceptionI3d, "Mixed_5c", (8, 64, 64), -1, 1),
        "slowfast-i3d-r50": (torch_refs.SlowFastResNet, "s5", (8, 32, 32), -2, 2.4)}[arch]
    ref = torch_refs.random_module(cls, num_classes=6)
    head = tables.get(arch).head
    c = torch_refs.convert_reference(
        ref, tmp_path, arch, "backbone.pth",
        wrap=lambda sd: {k: v for k, v in sd.items() if k not in head})
    assert f"converted without it; layers up to {until}" in c.summary
    assert c.model.layer_names()[-1] == until
    x = np.random.default_rng(1).uniform(lo, hi, (1, *size, 3)).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x.transpose(0, 4, 1, 2, 3)), until=until)
    got = torch_refs.all_layers(c.model, x)
    assert set(got) == set(want)
    torch_refs.compare(got, want)


# ------------------------------------------------------------------------------ --ignore

def test_a_projection_head_in_the_classifiers_place_is_left_out_with_ignore(tmp_path, capsys):
    # MoCo v2 / SimCLR keep an MLP (fc.0, fc.2) where torchvision's classifier `fc` was: the
    # mismatch names --ignore 'fc.*', which converts the backbone without a head; a pattern
    # that matches nothing is refused before anything is written.
    _, q = _backbone(seed=3)
    g = torch.Generator().manual_seed(4)
    mlp = {"fc.0.weight": torch.randn(512, 512, generator=g), "fc.0.bias": torch.zeros(512),
           "fc.2.weight": torch.randn(128, 512, generator=g), "fc.2.bias": torch.zeros(128)}
    src = str(tmp_path / "mocov2.pth")
    torch.save({"state_dict": {f"module.encoder_q.{k}": v for k, v in {**q, **mlp}.items()}},
               src)
    with pytest.raises(WeightsMismatchError) as e:
        commands.convert(src, str(tmp_path / "a"), ARCH, prefix="encoder_q.")
    assert "unexpected 4" in str(e.value) and "--ignore 'fc.*' leaves them out" in str(e.value)
    with pytest.raises(KvjaxError, match=r"--ignore 'fcx\.\*' matches no tensor"):
        commands.convert(src, str(tmp_path / "b"), ARCH, prefix="encoder_q.",
                         ignore=["fc.*", "fcx.*"])
    assert not os.path.exists(tmp_path / "b")
    dst = str(tmp_path / "ck")
    assert main(["convert", src, dst, "--arch", ARCH, "--prefix", "encoder_q.",
                 "--ignore", "fc.*"]) == 0
    out = capsys.readouterr().out
    assert "left out by --ignore 'fc.*': 4 tensors (fc.0.weight, fc.0.bias, fc.2.weight, " \
           "fc.2.bias)" in out
    assert "no classifier head in the file (fc.weight, fc.bias)" in out
    man = model_checkpoint.read_manifest(dst)
    assert man["source"]["ignored"] == ["fc.*"] and man["config"] == {"num_classes": 0}
    model = kvjax.load_model(ARCH, checkpoint=dst)
    assert model.layer_names()[-1] == "avgpool"
    np.testing.assert_array_equal(
        np.asarray(model.net.stem.kernel[...]).transpose(4, 3, 0, 1, 2), q["stem.0.weight"].numpy())
