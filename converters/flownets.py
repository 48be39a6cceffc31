"""ClementPinard/FlowNetPytorch FlowNetS / FlowNetS-BN (`flownets_EPE1.951.pth.tar`, a dict
with "state_dict", "arch", "div_flow") -> kvjax `flownets`.

Keys -> kvjax state paths (2D kernels get a unit temporal axis):
    convX.0.weight (Cout, Cin, kh, kw) -> convX/kernel (1, kh, kw, Cin, Cout)
    convX.0.bias                       -> convX/bias          (FlowNetS, no BatchNorm)
    convX.1.*                          -> convX_bn            (FlowNetS-BN)
    predict_flowL.weight               -> predict_flowL/kernel
    deconvL.0.weight (Cin, Cout, 4, 4), upsampled_flowM_to_L.weight (2, 2, 4, 4)
        (ConvTranspose2d) -> kernel (1, 4, 4, Cin, Cout) flipped in H and W, so that the
        transposed conv is a plain conv of the stride-dilated input
"""
from __future__ import annotations

import numpy as np

from converters.tables import Layout, Table, batchnorm, conv2d, vector
from kvjax.models import flownets as model


def _conv2d_t(a: np.ndarray) -> np.ndarray:
    """(Cout, Cin, kh, kw) -> (1, kh, kw, Cin, Cout)."""
    return conv2d(a)[None] if a.ndim == 4 else a


def _conv2d_t_inverse(a: np.ndarray) -> np.ndarray:
    """(1, kh, kw, Cin, Cout) -> (Cout, Cin, kh, kw)."""
    return conv2d.inverse(a[0])


def _conv_transpose2d(a: np.ndarray) -> np.ndarray:
    """ConvTranspose2d weight (Cin, Cout, kh, kw) -> flipped (1, kh, kw, Cin, Cout)."""
    if a.ndim != 4:
        return a
    return np.ascontiguousarray(a[:, :, ::-1, ::-1].transpose(2, 3, 0, 1))[None]


def _conv_transpose2d_inverse(a: np.ndarray) -> np.ndarray:
    """Flipped (1, kh, kw, Cin, Cout) -> ConvTranspose2d weight (Cin, Cout, kh, kw)."""
    return np.ascontiguousarray(a[0].transpose(2, 3, 0, 1)[:, :, ::-1, ::-1])


conv2d_t = Layout("conv2d_t", _conv2d_t, _conv2d_t_inverse)
conv_transpose2d = Layout("conv_transpose2d", _conv_transpose2d, _conv_transpose2d_inverse)


def config(tensors, meta=None) -> dict:
    return {"batch_norm": "conv1.1.running_mean" in tensors}


def mapping(batch_norm: bool = False):
    m = {}
    for name, *_ in model.ENCODER:
        m[f"{name}.0.weight"] = ((name, "kernel"), conv2d_t)
        if batch_norm:
            m.update(batchnorm(f"{name}.1", (f"{name}_bn",)))
        else:
            m[f"{name}.0.bias"] = ((name, "bias"), vector)
    m["predict_flow6.weight"] = (("predict_flow6", "kernel"), conv2d_t)
    for level in model.DECODER:
        m[f"deconv{level}.0.weight"] = ((f"deconv{level}", "kernel"), conv_transpose2d)
        up = f"upsampled_flow{level + 1}_to_{level}"
        m[f"{up}.weight"] = ((up, "kernel"), conv_transpose2d)
        m[f"predict_flow{level}.weight"] = ((f"predict_flow{level}", "kernel"), conv2d_t)
    return m


TABLES = {"flownets": Table("flownets", config, mapping, model.make_net,
                            source="ClementPinard/FlowNetPytorch models/FlowNetS.py")}
