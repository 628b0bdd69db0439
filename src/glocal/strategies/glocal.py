"""Glocal: extrapolate the window's local hypergradients to the end of training (Koopman/DMD).

The window's trajectory h_0 = 0, h_k, ..., h_tau is fitted with Hankel DMD and predicted
``(total_steps - window_end) / record_every`` rows ahead: an estimate of the global
hypergradient from the window's start at the cost of a local one.

Default estimator (chosen in ``glocal bench estimator``, docs/benchmarks.md): affine DMD whose
prediction is blended with the local value h_tau by their held-out errors
(``fallback="weighted"``): on smooth full-batch dynamics the weight is ~1 (the extrapolation is
accurate to 1e-4), on minibatch training it shrinks toward h_tau where the fit is unreliable.
When the fit cannot be made at all the estimator falls back to h_tau and the window is counted.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from ..koopman import extrapolate
from .base import WindowEstimate, check_mode, check_positive_int, check_record_every

#: options of ``glocal.koopman.extrapolate`` that Glocal uses unless told otherwise
DEFAULT_KOOPMAN: dict[str, Any] = {"model": "affine", "fallback": "weighted"}


@dataclass
class Glocal:
    window: int = 100
    total_steps: int = 1000
    record_every: int | None = None  # type: ignore[assignment]
    mode: str = "forward"
    #: options for ``glocal.koopman.extrapolate``, merged over DEFAULT_KOOPMAN
    koopman: dict[str, Any] = field(default_factory=dict)
    name: str = "glocal"
    _warned_past_end: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_positive_int("window", self.window)
        check_positive_int("total_steps", self.total_steps)
        if self.window > self.total_steps:
            raise ValueError(f"window={self.window}: expected at most total_steps={self.total_steps}")
        self.record_every = check_record_every(self.window, self.record_every)
        if self.window // self.record_every + 1 < 3:
            raise ValueError(
                f"record_every={self.record_every}: the window of {self.window} steps must give at least 3 "
                "recorded points (record_every <= window / 2)"
            )
        check_mode(self.mode)
        self.koopman = {**DEFAULT_KOOPMAN, **self.koopman}

    def estimate(self, trajectory: Tensor, window_end: int) -> WindowEstimate:
        if window_end > self.total_steps and not self._warned_past_end:
            self._warned_past_end = True
            warnings.warn(f"Glocal: training ran past total_steps={self.total_steps} (window ending at step "
                          f"{window_end}); from now on there is nothing left to extrapolate to and Glocal follows "
                          "the window's local hypergradient, as Local does. Raise total_steps to plan further.",
                          RuntimeWarning, stacklevel=2)
        remaining = max(0, self.total_steps - window_end)
        rows_ahead = round(remaining / self.record_every)
        result = extrapolate(trajectory, rows_ahead, **self.koopman)
        diagnostics = {
            "rank": result.rank,
            "residual": result.residual,
            "holdout_error": result.holdout_error,
            "holdout_last_value_error": result.holdout_last_value_error,
            "eigenvalue_moduli": [float(abs(e)) for e in result.eigenvalues],
            "rows_ahead": rows_ahead,
            "weight": result.weight,
        }
        return WindowEstimate(hypergradient=result.value, local=trajectory[-1], fell_back=result.fell_back,
                              reason=result.reason, diagnostics=diagnostics)
