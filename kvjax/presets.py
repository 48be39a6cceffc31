"""Named presets of the stage configs: a base config per name, overridden field by field."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from kvjax.errors import KvjaxError


def select(cls: type, presets: Mapping[str, Any], name: str, overrides: Mapping[str, Any]):
    """`presets[name]` (an instance of the dataclass `cls`) with `overrides` applied.

    An unknown name or field raises a KvjaxError listing the valid ones."""
    if name not in presets:
        raise KvjaxError(f"unknown preset {name!r} for {cls.__name__}; valid: "
                         f"{', '.join(presets)}")
    fields = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise KvjaxError(f"unknown {cls.__name__} field(s) {bad}; valid: {sorted(fields)}")
    return dataclasses.replace(presets[name], **overrides)
