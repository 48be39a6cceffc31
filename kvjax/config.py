"""`kvjax.Config`: one object for both stages, from a preset plus overrides.

    kvjax.Config()                                  # preset "fast"
    kvjax.Config("paper")                           # the paper's settings (METHOD.md)
    kvjax.Config("fast", steps1=400, size=(16, 96, 96), param="pixel", lr2=5e-3)

Overrides with the CLI's names: steps1, steps2, size (T, H, W of the optimised video), lr1, lr2
(stage 2's Adam rate for the texture, and for the flow too where the preset gives the flow no
rate of its own: `paper`; `fast` keeps its flow at 1e-3, set it with stage2_lr_flow), param ("pixel" | "spectral"), chunk (kernels per compiled stage-1 program; default None: as many
as fit in the free device memory, at most 4 per CPU device, kvjax.devices; stage 2 always fits
its chunks to the memory unless stage2_chunk_size is set), input_size (T, H, W the model sees;
None: the model's own), relu_grad (the gradient of the model's ReLUs in stage 1, for
`model.features`: "exact" in `paper`, as the reference; "redirect" in `fast`), coarse_steps (of
the stage-1 steps, how many run first on a video half as high and wide, then tiled:
Stage1Config.coarse_steps). Any other field of `Stage1Config` / `Stage2Config` can be set with a
`stage1_` / `stage2_` prefix (e.g. stage2_flow_param="displacement").
"""
from __future__ import annotations

import dataclasses
from typing import Any

from kvjax.errors import KvjaxError
from kvjax.stage1 import Stage1Config
from kvjax.stage2 import Stage2Config

PRESETS = ("fast", "paper")

# Where each preset lets the model see the video. The paper resizes its 16x128x128 video to the
# model's own input (32x224x224 for I3D). `fast` feeds the video at its own size: I3D is fully
# convolutional up to Mixed_5c, and 24.5x fewer voxels is what makes a CPU run take minutes.
_INPUT_SIZE = {"paper": None, "fast": "video"}
# The ReLU gradient the preset's features use (VideoModel.features' relu_grad). The paper's
# reference takes PyTorch's true gradient, so a kernel silent on its starting video stays grey;
# `fast` redirects a ReLU that passes no gradient at all (kvjax.models.relu) so it wakes up.
_RELU_GRAD = {"paper": "exact", "fast": "redirect"}
_SHORT = {"steps1": ("stage1", "steps"), "lr1": ("stage1", "lr"), "size": ("stage1", "size"),
          "param": ("stage1", "param"), "chunk": ("stage1", "chunk_size"),
          "steps2": ("stage2", "steps"), "lr2": ("stage2", "lr"),
          "coarse_steps": ("stage1", "coarse_steps")}


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of a visualisation run (both stages). Build with `Config(preset, **overrides)`."""
    stage1: Stage1Config
    stage2: Stage2Config
    preset: str
    input_size: tuple[int, int, int] | None
    relu_grad: str

    def __init__(self, preset: str = "fast", **overrides: Any):
        if preset not in PRESETS:
            raise KvjaxError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
        over = {"stage1": {}, "stage2": {}}
        input_size, relu_grad = _INPUT_SIZE[preset], _RELU_GRAD[preset]
        for name, value in overrides.items():
            if value is None and name in _SHORT:
                continue  # the CLI's unset flags; a stage1_/stage2_ field's None is a value
            if name == "input_size":
                input_size = value
            elif name == "relu_grad":
                if value not in ("exact", "redirect"):
                    raise KvjaxError(f"relu_grad must be 'exact' or 'redirect'; got {value!r}")
                relu_grad = value
            elif name in _SHORT:
                stage, field = _SHORT[name]
                over[stage][field] = value
            elif name.startswith(("stage1_", "stage2_")):
                over[name[:6]][name[7:]] = value
            else:
                raise KvjaxError(f"unknown Config override {name!r}; valid: "
                                 f"{', '.join([*_SHORT, 'input_size', 'relu_grad'])}, or "
                                 "stage1_<field> / "
                                 "stage2_<field>")
        try:
            s1 = Stage1Config.preset(preset, **over["stage1"])
            s2 = Stage2Config.preset(preset, **over["stage2"])
        except ValueError as e:
            raise KvjaxError(str(e)) from None
        if s1.steps < 1:  # stage1.optimize takes 0 steps; a visualisation needs a video
            raise KvjaxError(f"steps1 must be at least 1; got {s1.steps}")
        if input_size == "video":
            input_size = s1.size
        object.__setattr__(self, "stage1", s1)
        object.__setattr__(self, "stage2", s2)
        object.__setattr__(self, "preset", preset)
        object.__setattr__(self, "input_size", tuple(input_size) if input_size else None)
        object.__setattr__(self, "relu_grad", relu_grad)

    def to_dict(self) -> dict:
        """Plain JSON-able description (results.json, run.json)."""
        def plain(cfg):
            out = {}
            for f in dataclasses.fields(cfg):
                v = getattr(cfg, f.name)
                out[f.name] = list(v) if isinstance(v, tuple) else (
                    v if isinstance(v, (int, float, str, bool, type(None))) else repr(v))
            return out
        return {"preset": self.preset,
                "input_size": list(self.input_size) if self.input_size else None,
                "relu_grad": self.relu_grad,
                "stage1": plain(self.stage1), "stage2": plain(self.stage2)}
