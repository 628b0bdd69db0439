"""The protocol every online strategy follows, and the per-window record it produces.

A strategy decides three things: how long a window is, at which steps of the window the local
hypergradient h_j is recorded, and how the recorded trajectory becomes the hypergradient that
updates phi at the window's end. The Tuner does everything else (training, tangents, the
hyper-optimizer step, clipping, skipping non-finite estimates).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from .. import defaults


@dataclass
class WindowEstimate:
    """What a strategy returns for one window: the hypergradient to follow and why."""

    hypergradient: Tensor
    local: Tensor
    fell_back: bool = False
    reason: str | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Strategy(Protocol):
    name: str
    #: steps per window; 0 means phi is never updated (no tangents are carried)
    window: int
    #: record h_j every this many steps of the window (the window's end is always recorded)
    record_every: int
    #: "forward" (tangents, small q) or "reverse" (unrolled graph, large q)
    mode: str

    def estimate(self, trajectory: Tensor, window_end: int) -> WindowEstimate:
        """Turn the window's recorded trajectory (n, q), rows h_0 = 0, h_k, ..., h_window, into
        the hypergradient; ``window_end`` is the global step at which the window ends."""
        ...


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r}: expected an integer >= {minimum}")
    return value


def check_mode(mode: str) -> str:
    if mode not in ("forward", "reverse"):
        raise ValueError(f"mode={mode!r}: expected 'forward' or 'reverse'")
    return mode


def check_record_every(window: int, record_every: int | None) -> int:
    """Default: record ``defaults.RECORD_POINTS`` points per window; must divide the window so its end is a row."""
    if record_every is None:
        record_every = max(1, window // defaults.RECORD_POINTS)
        while window % record_every:
            record_every -= 1
    check_positive_int("record_every", record_every)
    if record_every > window or window % record_every:
        raise ValueError(f"record_every={record_every}: expected a divisor of window={window} (1..{window})")
    return record_every
