"""c3d-pytorch (DavideA/c3d-pytorch, `C3D.py`) -> kvjax `c3d`.

Keys: conv1 conv2 conv3a conv3b conv4a conv4b conv5a conv5b fc6 fc7 fc8, each `.weight` and
`.bias`; nothing else. Its Sports-1M file `c3d.pickle` is a legacy torch.save of that dict.

The classifier head is `fc8` alone (`HEAD`): a file without `fc8.weight` and `fc8.bias`
converts to the network without it (num_classes 0), whose last layers are `fc7/linear` and
`fc7`. fc6 and fc7 stay required: they are layers kvjax offers for visualisation, their
4096-d outputs are C3D's classic video descriptors, and files kept for those features keep
them; a file that lacks them as well is refused, naming them.
"""
from __future__ import annotations

from converters.tables import Table, classifier_config, conv3d, linear, vector
from kvjax.models import c3d as model

HEAD = ("fc8.weight", "fc8.bias")


def config(tensors, meta=None) -> dict:
    return classifier_config(tensors, *HEAD, ndim=2)


def mapping(num_classes: int = model.NUM_CLASSES):
    m = {}
    for name, _, _ in model.CONVS:
        m[f"{name}.weight"] = ((name, "kernel"), conv3d)
        m[f"{name}.bias"] = ((name, "bias"), vector)
    for name, _, cout in model.FCS:
        if cout is None and not num_classes:
            continue  # built without the classifier fc8
        m[f"{name}.weight"] = ((name, "kernel"), linear)
        m[f"{name}.bias"] = ((name, "bias"), vector)
    return m


TABLES = {"c3d": Table("c3d", config, mapping, model.make_net, ignore=(),
                       source="DavideA/c3d-pytorch C3D.py", head=HEAD)}
