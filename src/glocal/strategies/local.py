"""Local: follow the hypergradient through the last ``window`` steps (greedy, short-horizon).

With window = 1 and the learning rate this is hypergradient descent (Baydin et al., 2018).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .. import defaults
from .base import WindowEstimate, check_mode, check_positive_int


@dataclass
class Local:
    window: int = defaults.WINDOW
    mode: str = "forward"
    name: str = "local"

    def __post_init__(self) -> None:
        check_positive_int("window", self.window)
        check_mode(self.mode)

    @property
    def record_every(self) -> int:
        """Only the window's end is needed."""
        return self.window

    def estimate(self, trajectory: Tensor, window_end: int) -> WindowEstimate:
        last = trajectory[-1]
        return WindowEstimate(hypergradient=last, local=last)
