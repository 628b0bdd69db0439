"""Glocal: extrapolate the trajectory of hypergradients to the end of training (Koopman/DMD).

The recorded trajectory h_0 = 0, h_k, ... is fitted with Hankel DMD and predicted
``(total_steps - window_end) / record_every`` rows ahead: an estimate of the global hypergradient
at the cost of a local one. Where the trajectory starts is ``anchor``:

* ``"run"`` (default in forward mode): tangents are carried across windows, so h_k is the realised
  hypergradient of the current validation loss with respect to phi applied since the run's start
  (real-time forward-mode HPO; phi's updates are part of the trajectory), and the fit extrapolates
  the rest of the run. The realised part already holds the effect of overfitting that a
  one-window hypergradient cannot see; the fit uses the last ``fit_rows`` rows.
* ``"window"`` (reverse mode, whose graph cannot span the run): tangents reset at each window's
  start, as in the paper; h is the window's local hypergradient.

Default estimator (``glocal.defaults``): affine DMD whose prediction is blended with the last
value by their held-out errors (``fallback="weighted"``, weight w). On smooth full-batch dynamics
w ~ 1 and the estimate is followed as is, sign changes included. Below ``trust_weight`` (minibatch
training) a per-coordinate guard applies: a coordinate that disagrees in sign with the last value
takes the last value, and magnitudes are capped at ``max_ratio`` x its magnitude. When the fit
cannot be made at all the estimator falls back to the last value and the window is counted.
Why these defaults (measured on the no-regret suite): docs/benchmarks.md.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .. import defaults
from ..koopman import extrapolate
from .base import WindowEstimate, check_anchor, check_mode, check_positive_int, check_record_every, continues_trajectory

#: options of ``glocal.koopman.extrapolate`` that Glocal uses unless told otherwise
DEFAULT_KOOPMAN: dict[str, Any] = defaults.KOOPMAN


def guard(estimate: Tensor, local: Tensor, max_ratio: float, disagree: str = "local") -> tuple[Tensor, int]:
    """Per coordinate: where the estimate disagrees in sign with the local value, the local value
    (``disagree="local"``) or zero (``"zero"``: that coordinate is not moved), else the estimate with
    its magnitude capped at ``max_ratio`` x the local one. Returns the result and how many
    coordinates were changed."""
    if disagree not in ("local", "zero"):
        raise ValueError(f"disagree={disagree!r}: expected 'local' or 'zero'")
    agree = torch.sign(estimate) == torch.sign(local)
    bound = max_ratio * local.abs()
    guarded = torch.where(agree, estimate.clamp(-bound, bound), local if disagree == "local" else 0 * local)
    return guarded, int((guarded != estimate).sum())


@dataclass
class Glocal:
    window: int = defaults.WINDOW
    total_steps: int = 1000
    record_every: int | None = None  # type: ignore[assignment]
    mode: str = "forward"
    #: options for ``glocal.koopman.extrapolate``, merged over DEFAULT_KOOPMAN
    koopman: dict[str, Any] = field(default_factory=dict)
    #: what the estimate of an untrusted fit (held-out blend weight below ``trust_weight``) becomes: "last"
    #: (the last recorded row: the realised hypergradient) or "guard" (see ``guard``: ``max_ratio``, ``disagree``)
    untrusted: str = defaults.UNTRUSTED
    #: untrusted="guard": per-coordinate guard against the last row (see ``guard``); None: the estimate as is
    max_ratio: float | None = defaults.MAX_RATIO
    #: a fit whose held-out blend weight is at least this is trusted: its estimate is followed as is
    trust_weight: float = defaults.TRUST_WEIGHT
    #: what a coordinate that disagrees in sign with the local value becomes: "local" or "zero"
    disagree: str = defaults.DISAGREE
    #: where the trajectory starts: "run" (tangents carried from the run's start; forward mode only) or
    #: "window" (tangents reset at each window's start); None: "run" in forward mode, else "window"
    anchor: str | None = None
    #: anchor="run": start a new trajectory every this many windows (None: never). Tangents carried over
    #: a long run of large steps can grow chaotically (sensitivity to a perturbation far in the past)
    reanchor_every: int | None = defaults.REANCHOR_EVERY
    #: the fit uses at most the last this many rows of the trajectory (an anchored one grows with the run)
    fit_rows: int = defaults.FIT_ROWS
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
        if self.max_ratio is not None and not (self.max_ratio >= 1 and self.max_ratio < float("inf")):
            raise ValueError(f"max_ratio={self.max_ratio!r}: expected a finite number >= 1, or None")
        if self.disagree not in ("local", "zero"):
            raise ValueError(f"disagree={self.disagree!r}: expected 'local' or 'zero'")
        if self.untrusted not in ("last", "guard"):
            raise ValueError(f"untrusted={self.untrusted!r}: expected 'last' or 'guard'")
        if self.anchor is None:
            self.anchor = defaults.ANCHOR if self.mode == "forward" else "window"
        check_anchor(self.anchor, self.mode, self.reanchor_every)
        check_positive_int("fit_rows", self.fit_rows, minimum=self.window // self.record_every + 1)
        if not 0 <= self.trust_weight <= 1:
            raise ValueError(f"trust_weight={self.trust_weight!r}: expected a number in [0, 1]")
        self.koopman = {**DEFAULT_KOOPMAN, **self.koopman}

    def keeps_trajectory(self, window_end: int) -> bool:
        """Whether the next window goes on with the trajectory: with ``anchor="run"``, except every
        ``reanchor_every`` windows (counted in steps, so that a resumed run re-anchors alike)."""
        return continues_trajectory(self.anchor, self.reanchor_every, self.window, window_end)

    def estimate(self, trajectory: Tensor, window_end: int) -> WindowEstimate:
        if window_end > self.total_steps and not self._warned_past_end:
            self._warned_past_end = True
            warnings.warn(f"Glocal: training ran past total_steps={self.total_steps} (window ending at step "
                          f"{window_end}); from now on there is nothing left to extrapolate to and Glocal follows "
                          "the last recorded hypergradient, as Local does. Raise total_steps to plan further.",
                          RuntimeWarning, stacklevel=2)
        remaining = max(0, self.total_steps - window_end)
        rows_ahead = round(remaining / self.record_every)
        trajectory = trajectory[-self.fit_rows:]
        result = extrapolate(trajectory, rows_ahead, **self.koopman)
        value, guarded = result.value, 0
        if not result.fell_back and result.weight < self.trust_weight:  # an untrusted fit
            if self.untrusted == "last":
                value = trajectory[-1]
                guarded = int((value != result.value).sum())
            elif self.max_ratio is not None:
                value, guarded = guard(value, trajectory[-1], self.max_ratio, self.disagree)
        diagnostics = {
            "rank": result.rank,
            "residual": result.residual,
            "holdout_error": result.holdout_error,
            "holdout_last_value_error": result.holdout_last_value_error,
            "eigenvalue_moduli": [float(abs(e)) for e in result.eigenvalues],
            "rows_ahead": rows_ahead,
            "weight": result.weight,
            "raw_estimate": result.value.tolist() if result.value.numel() <= 64 else None,
            "guarded": guarded,
        }
        return WindowEstimate(hypergradient=value, local=trajectory[-1], fell_back=result.fell_back,
                              reason=result.reason, diagnostics=diagnostics)
