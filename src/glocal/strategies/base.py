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
        """Turn the recorded trajectory (n, q), rows h_0 = 0, h_k, ..., h_window, into the
        hypergradient; ``window_end`` is the global step at which the window ends.

        Optional: ``keeps_trajectory(window_end) -> bool``, True when the next window goes on with
        this trajectory (tangents not reset; the loop keeps the last ``fit_rows`` rows), so that rows
        are realised hypergradients since the trajectory's start, not since the window's."""
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


def check_anchor(anchor: str, mode: str, reanchor_every: int | None) -> None:
    """``anchor`` is "window" or "run" (forward mode only); ``reanchor_every`` a positive int or None."""
    if anchor not in ("window", "run"):
        raise ValueError(f"anchor={anchor!r}: expected 'window' or 'run'")
    if anchor == "run" and mode != "forward":
        raise ValueError("anchor='run' needs mode='forward' (a reverse-mode graph over the whole run would grow "
                         "without bound)")
    if reanchor_every is not None:
        check_positive_int("reanchor_every", reanchor_every)


def continues_trajectory(anchor: str, reanchor_every: int | None, window: int, window_end: int) -> bool:
    """Whether the window after ``window_end`` goes on with the trajectory: with ``anchor="run"``, except
    every ``reanchor_every`` windows (counted in steps, so that a resumed run re-anchors alike)."""
    if anchor != "run":
        return False
    return reanchor_every is None or (window_end // window) % reanchor_every != 0
