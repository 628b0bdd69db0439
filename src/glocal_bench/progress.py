"""Progress bars on stderr (tqdm), with the tuned hyperparameters shown beside the bar.

The time estimate is tqdm's exponential moving average of the step rate (smoothing 0.3), timed
from the end of the first step on: the setup before it (building the task) and the first step
(a ``torch.compile`` warm-up) are not the training rate, and a slow early step stops dominating
the estimate after a few redraws, where an elapsed / done estimate would stay inflated for a large
part of the run. Before a rate is known the estimate is "?", not a made-up number; the elapsed
time shown counts from the end of the first step. On a terminal the bar redraws at most 5 times a
second; otherwise (a log file) at most every ``LOG_INTERVAL`` seconds.
"""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm

from glocal.records import Record

#: seconds between redraws when stderr is not a terminal (log files stay short)
LOG_INTERVAL = 10.0


class ProgressBar:
    """``bar(n)`` advances by n steps; ``bar.show(record)`` puts a window's hyperparameters beside it."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None, enabled: bool = True,
                 mininterval: float | None = None) -> None:
        stream = stream or sys.stderr
        tty = bool(getattr(stream, "isatty", lambda: False)())
        if mininterval is None:
            mininterval = 0.2 if tty else LOG_INTERVAL
        self.bar = tqdm(total=max(1, total), desc=label, file=stream, disable=not enabled, unit="step",
                        mininterval=mininterval, smoothing=0.3, dynamic_ncols=tty, ascii=not tty, leave=True)
        self._started = False

    def __call__(self, increment: int = 1) -> None:
        if not self._started:  # the clock starts after the first step: setup (and a first step that
            self._started = True  # compiles or warms up) is not the training rate
            self.bar.reset(total=self.bar.total)
            self.bar.n = self.bar.last_print_n = self.bar.initial = increment  # counted, not timed
            self.bar.refresh()
            return
        self.bar.update(increment)

    def show(self, record: Record) -> None:
        """A listener: after each window, the current hyperparameters (up to 3) beside the bar."""
        if record.kind != "window":
            return
        values = {tag.split("/", 1)[1]: f"{value:.3g}" for tag, value in record.scalars.items()
                  if tag.startswith("hparams/")}
        if values:
            self.bar.set_postfix(dict(list(values.items())[:3]), refresh=False)

    @property
    def remaining_seconds(self) -> float | None:
        """tqdm's current estimate of the time left (None before the rate is known)."""
        info = self.bar.format_dict
        rate, total, done = info.get("rate"), info.get("total"), info.get("n", 0)
        if not rate or total is None:
            return None
        return (total - done) / rate

    def close(self) -> None:
        self.bar.close()
