"""The registry of architecture tables and the layout changes they use.

A table says, for one architecture, exactly which PyTorch tensor goes where:

    Table.config(tensors, meta) -> dict    constructor arguments read off the checkpoint
                                           (e.g. num_classes from the classifier's shape;
                                           meta: recorded hyper-parameters, see load.py)
    Table.mapping(config) -> {torch name: (NNX state path, layout change)}
    Table.ignore                           glob patterns of keys known to be irrelevant
    Table.prepare(tensors) -> tensors      renames an alternative layout of the same weights
                                           (Caffe2 blob names) to the table's keys
    Table.make_net(**config)               the kvjax NNX module the state belongs to

Layout changes (PyTorch -> kvjax, channels last):

    conv3d  weight (Cout, Cin, kt, kh, kw) -> kernel (kt, kh, kw, Cin, Cout)
    conv2d  weight (Cout, Cin, kh, kw)     -> kernel (kh, kw, Cin, Cout)
    linear  weight (out, in)               -> kernel (in, out)
    vectors (bias, BN weight/bias/running stats) unchanged
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Callable, Mapping

import numpy as np

from kvjax.errors import unknown_name

Mapping_ = dict[str, tuple[tuple, Callable[[np.ndarray], np.ndarray]]]

# Keys every PyTorch BatchNorm writes that carry no weights.
BN_IGNORE = ("*num_batches_tracked",)


def conv3d(a: np.ndarray) -> np.ndarray:
    """(Cout, Cin, kt, kh, kw) -> (kt, kh, kw, Cin, Cout)."""
    if a.ndim != 5:
        return a  # the shape check in `assign` reports it with the name
    return np.ascontiguousarray(a.transpose(2, 3, 4, 1, 0))


def conv2d(a: np.ndarray) -> np.ndarray:
    """(Cout, Cin, kh, kw) -> (kh, kw, Cin, Cout)."""
    if a.ndim != 4:
        return a
    return np.ascontiguousarray(a.transpose(2, 3, 1, 0))


def linear(a: np.ndarray) -> np.ndarray:
    """(out, in) -> (in, out)."""
    if a.ndim != 2:
        return a
    return np.ascontiguousarray(a.T)


def vector(a: np.ndarray) -> np.ndarray:
    return a


def batchnorm(torch_prefix: str, path: tuple, *, scale: bool = True) -> Mapping_:
    """PyTorch BatchNorm{1,2,3}d tensors -> kvjax `layers.BatchNorm` at `path`."""
    m = {f"{torch_prefix}.bias": ((*path, "bias"), vector),
         f"{torch_prefix}.running_mean": ((*path, "mean"), vector),
         f"{torch_prefix}.running_var": ((*path, "var"), vector)}
    if scale:
        m[f"{torch_prefix}.weight"] = ((*path, "scale"), vector)
    return m


@dataclasses.dataclass(frozen=True)
class Table:
    arch: str
    config: Callable[..., dict]
    mapping: Callable[..., Mapping_]
    make_net: Callable
    ignore: tuple[str, ...] = BN_IGNORE
    source: str = ""  # the upstream code whose key layout this is
    prepare: Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]] = lambda t: t
    # `prepare` renames an alternative key layout (e.g. Caffe2 blob names) to the table's own


# arch -> module under converters/ that defines TABLE (imported on first use).
_MODULES = {"c3d": "c3d", "pytorch-i3d": "pytorch_i3d", "r3d_18": "video_resnet",
            "mc3_18": "video_resnet", "r2plus1d_18": "video_resnet",
            "slowfast-i3d-r50": "slowfast_i3d", "videogpt-vqvae": "videogpt",
            "flownets": "flownets"}


def archs() -> list[str]:
    """Architectures that `kvjax convert` can convert."""
    return sorted(_MODULES)


def get(arch: str) -> Table:
    """The table for `arch`, or a KvjaxError naming the valid architectures."""
    if arch not in _MODULES:
        raise unknown_name("architecture", arch, archs(),
                           hint="these are the architectures `kvjax convert --arch` knows")
    mod = importlib.import_module(f"converters.{_MODULES[arch]}")
    return mod.TABLES[arch]
