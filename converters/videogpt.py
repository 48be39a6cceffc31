"""VideoGPT VQ-VAE (wilson1yan/VideoGPT, a Lightning .ckpt of `VQVAE`) -> kvjax `videogpt-vqvae`.

Only the encoder is converted; `decoder.*`, `post_vq_conv.*` and `codebook.*` are declared
irrelevant (they never see the video). Keys -> kvjax state paths:
    encoder.convs.I.conv.{weight,bias}           -> convs_I/{kernel,bias}
    encoder.conv_last.conv.{weight,bias}         -> conv_last
    encoder.res_stack.I.block.0.*  (BatchNorm)   -> res_I/bn0
    encoder.res_stack.I.block.2.conv.weight      -> res_I/conv3     (3x3x3, C -> C/2)
    encoder.res_stack.I.block.3.*                -> res_I/bn1
    encoder.res_stack.I.block.5.conv.weight      -> res_I/conv1     (1x1x1, C/2 -> C)
    encoder.res_stack.I.block.6.*                -> res_I/bn2
    encoder.res_stack.I.block.8.attn_A.{w_qs,w_ks,w_vs}.weight (out, in) -> res_I/attn_A/... (in, out)
    encoder.res_stack.I.block.8.attn_A.fc.{weight,bias}                   -> res_I/attn_A/fc
    encoder.res_stack.N.*  (final BatchNorm)     -> res_bn
    pre_vq_conv.conv.{weight,bias}               -> pre_vq_conv
Config: n_hiddens, n_res_layers, embedding_dim from the shapes; downsample, sequence_length and
resolution from the checkpoint's hyper-parameters (Lightning saves VideoGPT's args; `kvjax
convert --hparam downsample=4,2,2` gives them for a bare state dict), else the 16 x 64 x 64
default size; `--hparam` takes only these three (`HPARAMS`), each checked before the file is
read (downsample: three powers of two >= 1). Without a recorded downsample `require` refuses
the conversion: every downsampling kernel is 4x4x4 whatever its strides, so the weights
cannot tell 4,4,4 from 4,2,2 (guessing the architecture needs only the shapes, and takes
(2^n,)*3).
"""
from __future__ import annotations

import re

from converters.tables import BN_IGNORE, Table, batchnorm, conv3d, linear, vector
from kvjax.errors import KvjaxError
from kvjax.models import videogpt as model


def _n_downsampling_convs(tensors) -> int:
    return len({m[1] for k in tensors if (m := re.match(r"encoder\.convs\.(\d+)\.", k))})


def config(tensors, meta=None) -> dict:
    hp = dict((meta or {}).get("hyper_parameters") or {})
    if "encoder.conv_last.conv.weight" not in tensors:
        return {}
    n_convs = _n_downsampling_convs(tensors)
    blocks = {int(m[1]) for k in tensors if (m := re.match(r"encoder\.res_stack\.(\d+)\.block", k))}
    cfg = {"n_hiddens": int(tensors["encoder.conv_last.conv.weight"].shape[0]),
           "n_res_layers": len(blocks),
           "embedding_dim": int(tensors["pre_vq_conv.conv.weight"].shape[0])
           if "pre_vq_conv.conv.weight" in tensors else model.DEFAULTS["embedding_dim"],
           "downsample": [2 ** n_convs] * 3}
    for k in ("downsample", "sequence_length", "resolution"):
        if k in hp and (k == "downsample" or isinstance(hp[k], int)):
            cfg[k] = _recorded(k, hp[k])
    return cfg


# The hyper-parameters `kvjax convert --hparam NAME=VALUE` takes: {name: check(value) ->
# value, a KvjaxError naming the valid form}. --hparam values are checked before the file
# is read; they replace those the checkpoint records.
HPARAMS = {"downsample": lambda v: list(model.check_downsample(v)),
           "sequence_length": lambda v: model.check_size("sequence_length", v),
           "resolution": lambda v: model.check_size("resolution", v)}


def _recorded(name: str, value):
    """A hyper-parameter the checkpoint records (or --hparam gave), checked."""
    try:
        return HPARAMS[name](value)
    except KvjaxError as e:
        raise KvjaxError(f"this VideoGPT checkpoint's hyper-parameters are unusable: {e}; "
                         f"give the right value with --hparam {name}=...") from None


def require(tensors, meta=None) -> None:
    """Refuse a checkpoint without a recorded downsample (see the module docstring)."""
    hp = (meta or {}).get("hyper_parameters") or {}
    n_convs = _n_downsampling_convs(tensors)
    if "downsample" not in hp and n_convs:
        raise KvjaxError(
            f"this VideoGPT checkpoint does not record its `downsample` (the stride per axis T, "
            f"H, W, e.g. 4,2,2; its {n_convs} downsampling convolutions allow several), and the "
            f"weights cannot tell it: convert the Lightning .ckpt VideoGPT saved, or give it: "
            f"kvjax convert SRC DST --arch videogpt-vqvae --hparam downsample=T,H,W")


def mapping(n_hiddens=model.DEFAULTS["n_hiddens"], n_res_layers=model.DEFAULTS["n_res_layers"],
            downsample=model.DEFAULTS["downsample"], embedding_dim=None, **_):
    m = {}
    for i in range(len(model.conv_strides(downsample))):
        m[f"encoder.convs.{i}.conv.weight"] = ((f"convs_{i}", "kernel"), conv3d)
        m[f"encoder.convs.{i}.conv.bias"] = ((f"convs_{i}", "bias"), vector)
    m["encoder.conv_last.conv.weight"] = (("conv_last", "kernel"), conv3d)
    m["encoder.conv_last.conv.bias"] = (("conv_last", "bias"), vector)
    for i in range(n_res_layers):
        t, p = f"encoder.res_stack.{i}.block", f"res_{i}"
        m.update(batchnorm(f"{t}.0", (p, "bn0")))
        m[f"{t}.2.conv.weight"] = ((p, "conv3", "kernel"), conv3d)
        m.update(batchnorm(f"{t}.3", (p, "bn1")))
        m[f"{t}.5.conv.weight"] = ((p, "conv1", "kernel"), conv3d)
        m.update(batchnorm(f"{t}.6", (p, "bn2")))
        for a in ("attn_w", "attn_h", "attn_t"):
            for proj in ("w_qs", "w_ks", "w_vs", "fc"):
                m[f"{t}.8.{a}.{proj}.weight"] = ((p, a, proj, "kernel"), linear)
            m[f"{t}.8.{a}.fc.bias"] = ((p, a, "fc", "bias"), vector)
    m.update(batchnorm(f"encoder.res_stack.{n_res_layers}", ("res_bn",)))
    m["pre_vq_conv.conv.weight"] = (("pre_vq_conv", "kernel"), conv3d)
    m["pre_vq_conv.conv.bias"] = (("pre_vq_conv", "bias"), vector)
    return m


TABLES = {"videogpt-vqvae": Table(
    "videogpt-vqvae", config, mapping, model.make_net,
    ignore=BN_IGNORE + ("decoder.*", "post_vq_conv.*", "codebook.*"),
    source="wilson1yan/VideoGPT videogpt/vqvae.py", require=require, hparams=HPARAMS)}
