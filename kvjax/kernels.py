"""Parsing kernel selections such as `all`, `0-63`, `0,5,9` or `0-7,12`."""
from __future__ import annotations

from kvjax.errors import KvjaxError

SPEC_HELP = "'all', a range '0-63', a list '0,5,9', or both '0-7,12'"


def parse_kernels(spec: str | int | range | list | tuple, channels: int, *, layer: str = "") -> list[int]:
    """Sorted, de-duplicated kernel indices in [0, channels) from a spec or a sequence.

    Raises KvjaxError naming the valid range for out-of-range or malformed specs.
    """
    where = f" of layer {layer!r}" if layer else ""
    if isinstance(spec, int):
        spec = [spec]
    if isinstance(spec, (range, list, tuple)):
        out = [int(k) for k in spec]
    else:
        text = str(spec).strip().lower()
        if text == "all":
            return list(range(channels))
        out = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            lo, dash, hi = part.partition("-")
            try:
                a, b = (int(lo), int(hi)) if dash else (int(part), int(part))
            except ValueError:
                raise KvjaxError(f"cannot read kernels {spec!r}: use {SPEC_HELP}") from None
            if b < a:
                raise KvjaxError(f"kernel range {part!r} runs backwards: write {b}-{a}")
            if dash and (a < 0 or b >= channels):  # refused before building it
                raise KvjaxError(f"kernel range {part} out of range{where}: it has "
                                 f"{channels} kernels, 0-{channels - 1}")
            out.extend(range(a, b + 1))
    if not out:
        raise KvjaxError(f"no kernels selected by {spec!r}: use {SPEC_HELP}")
    bad = sorted({k for k in out if not 0 <= k < channels})
    if bad:
        raise KvjaxError(f"kernel(s) {', '.join(map(str, bad[:8]))} out of range{where}: "
                         f"it has {channels} kernels, 0-{channels - 1}")
    return sorted(set(out))
