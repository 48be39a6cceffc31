"""Progress display: tqdm bars on a terminal, plain timestamped lines otherwise."""
from __future__ import annotations

import sys
import time


class Progress:
    """`update(stage, done, total)` from the pipeline; `start(label)` for each chunk."""

    def __init__(self, stream=None, *, min_interval: float = 10.0):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.min_interval = min_interval
        self.bar = None
        self.label = ""
        self._last = 0.0
        self._t0 = 0.0
        self._stage = None

    def start(self, label: str) -> None:
        self.close()
        self.label = label
        self._t0 = time.time()  # stage-1 rates include compilation: what the user waits for

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self._stage:
            self.close_bar()
            if self._stage is not None:
                self._t0 = time.time()
            self._stage = stage
            if self.tty:
                from tqdm.auto import tqdm
                self.bar = tqdm(total=total, desc=f"{self.label} {stage}", unit="step"
                                if stage == "stage 1" else "", file=self.stream, leave=True)
        if self.bar is not None:
            self.bar.total = total
            self.bar.update(done - self.bar.n)
            return
        now = time.time()
        if done == total or now - self._last >= self.min_interval or done == 0:
            self._last = now
            rate = done / max(now - self._t0, 1e-9)
            eta = (total - done) / rate if rate > 0 else float("nan")
            unit = " steps" if stage == "stage 1" else ""
            extra = f", {rate:.2f} steps/s, ETA {eta:.0f} s" if stage == "stage 1" and done else ""
            print(f"[{time.strftime('%H:%M:%S')}] {self.label} {stage}: {done}/{total}{unit}"
                  f"{extra}", file=self.stream, flush=True)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        self.close_bar()
        self._stage = None
