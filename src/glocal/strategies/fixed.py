"""Fixed: no tuning. The baseline every user compares against; costs a plain training step."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .base import WindowEstimate


@dataclass
class Fixed:
    name: str = "fixed"
    window: int = 0
    record_every: int = 1
    mode: str = "plain"

    def estimate(self, trajectory: Tensor, window_end: int) -> WindowEstimate:  # the loop never calls it (window 0)
        raise RuntimeError("Fixed never updates hyperparameters")
