"""A dependency-free progress bar on stderr (redrawn in place on a terminal, sparse lines otherwise)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    def __init__(self, total: int, label: str, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total = max(1, total)
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.done = 0
        self.started = time.perf_counter()
        self.tty = self.stream.isatty()
        self._last_draw = 0.0
        self._last_percent = -1
        #: (time, done) at the first update: the estimate uses the rate since then, not the setup time
        self._origin: tuple[float, int] | None = None

    def __call__(self, increment: int = 1) -> None:
        if self._origin is None:
            self._origin = (time.perf_counter(), self.done + increment)
        self.done += increment
        if not self.enabled:
            return
        now = time.perf_counter()
        percent = int(100 * self.done / self.total)
        if self.tty and (now - self._last_draw > 0.2 or self.done >= self.total):
            self._draw(now, "\r", "")
        elif not self.tty and percent // 25 > self._last_percent // 25:
            self._draw(now, "", "\n")
        self._last_percent = percent

    def _draw(self, now: float, prefix: str, suffix: str) -> None:
        self._last_draw = now
        fraction = min(1.0, self.done / self.total)
        elapsed = now - self.started
        since, done = self._origin or (now, self.done)
        left = f"~{(now - since) / (self.done - done) * (self.total - self.done):5.1f}s" if self.done > done else "?"
        bar = "#" * int(30 * fraction) + "-" * (30 - int(30 * fraction))
        self.stream.write(f"{prefix}{self.label:<24} [{bar}] {100 * fraction:5.1f}% "
                          f"{elapsed:6.1f}s elapsed, {left} left{suffix}")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
