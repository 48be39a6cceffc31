"""User-facing errors. Each says what was wrong and what would be right.

The CLI turns every `KvjaxError` into one line on stderr and exit code 2.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class KvjaxError(ValueError):
    """Bad input from the user: unknown name, out-of-range index, unusable file."""


class UnsafeFileError(KvjaxError):
    """A file would run code or import something other than plain arrays when loaded."""


class CorruptFileError(KvjaxError):
    """A file is truncated or not in the format its name promises."""


class WeightsMismatchError(KvjaxError):
    """A checkpoint's tensors do not match the architecture: missing, unexpected, mis-shaped."""


def unknown_name(kind: str, name: str, valid: Iterable[str], *, where: str = "",
                 hint: str = "") -> KvjaxError:
    """An error for an unknown `kind` (layer, model, ...) naming the closest valid choices."""
    valid = list(valid)
    close = difflib.get_close_matches(name, valid, n=5, cutoff=0.4)
    if not close:  # substring matches help for long hierarchical names
        close = [v for v in valid if name.lower() in v.lower()][:5]
    msg = f"unknown {kind} {name!r}{' ' + where if where else ''}"
    if close:
        msg += f"; closest: {', '.join(close)}"
    if len(valid) <= 12:
        msg += f"; valid: {', '.join(valid)}"
    else:
        msg += f" ({len(valid)} valid{'; ' + hint if hint else ''})"
    return KvjaxError(msg)
