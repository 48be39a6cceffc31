"""c3d-pytorch (DavideA/c3d-pytorch, `C3D.py`) -> kvjax `c3d`.

Keys: conv1 conv2 conv3a conv3b conv4a conv4b conv5a conv5b fc6 fc7 fc8, each `.weight` and
`.bias`; nothing else. Its Sports-1M file `c3d.pickle` is a legacy torch.save of that dict.
"""
from __future__ import annotations

from converters.tables import Table, conv3d, linear, vector
from kvjax.models import c3d as model


def config(tensors, meta=None) -> dict:
    w = tensors.get("fc8.weight")
    return {"num_classes": int(w.shape[0])} if w is not None and w.ndim == 2 else {}


def mapping(num_classes: int = model.NUM_CLASSES):
    m = {}
    for name, _, _ in model.CONVS:
        m[f"{name}.weight"] = ((name, "kernel"), conv3d)
        m[f"{name}.bias"] = ((name, "bias"), vector)
    for name, _, _ in model.FCS:
        m[f"{name}.weight"] = ((name, "kernel"), linear)
        m[f"{name}.bias"] = ((name, "bias"), vector)
    return m


TABLES = {"c3d": Table("c3d", config, mapping, model.make_net, ignore=(),
                       source="DavideA/c3d-pytorch C3D.py")}
