"""orbax restores that fail with one exception and nothing else on stderr.

When an orbax restore fails (a damaged checkpoint), tensorstore's reads still in flight finish
on its own threads and call back into orbax's asyncio event loop, closed by then. Each such
callback raises RuntimeError("Event loop is closed"), which Python prints as a traceback,
through sys.excepthook or sys.unraisablehook depending on the path (measured: 3 of 25 failed
restores of a truncated converted checkpoint printed one, after the restore had already raised),
around kvjax's one-line error. `closed_loop_noise_dropped` installs hooks that drop those
RuntimeErrors, and only those, before the restore, and keeps them when it fails: the late
callbacks come after the exception has reached the caller. The restore's other reads, failed
too, end as asyncio Tasks or Futures whose exception nobody retrieves; when they are collected
asyncio logs "Task (Future) exception was never retrieved" with the tensorstore error (1 of 25
failed restores): a filter on the "asyncio" logger drops those records, installed and kept the
same way.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator


def _closed_loop(e: BaseException | None) -> bool:
    return isinstance(e, RuntimeError) and str(e) == "Event loop is closed"


class _NeverRetrieved(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        first = record.getMessage().split("\n", 1)[0]
        return first not in ("Task exception was never retrieved",
                             "Future exception was never retrieved")


_NEVER_RETRIEVED = _NeverRetrieved()


@contextlib.contextmanager
def closed_loop_noise_dropped() -> Iterator[None]:
    """Around an orbax restore: see the module docstring. Restores the previous hooks (and
    removes the filter) when the block ends normally."""
    unraisable, excepthook = sys.unraisablehook, sys.excepthook

    def drop_unraisable(u):
        if not _closed_loop(u.exc_value):
            unraisable(u)

    def drop_excepthook(kind, value, tb):
        if not _closed_loop(value):
            excepthook(kind, value, tb)

    asyncio_log = logging.getLogger("asyncio")
    kept = _NEVER_RETRIEVED in asyncio_log.filters  # a failed restore before left it on
    sys.unraisablehook, sys.excepthook = drop_unraisable, drop_excepthook
    asyncio_log.addFilter(_NEVER_RETRIEVED)
    yield  # not reached after an exception: the hooks stay for the late callbacks
    sys.unraisablehook, sys.excepthook = unraisable, excepthook
    if not kept:
        asyncio_log.removeFilter(_NEVER_RETRIEVED)
