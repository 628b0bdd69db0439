"""Local: follow the hypergradient through the last ``window`` steps (greedy, short-horizon).

With window = 1 and the learning rate this is hypergradient descent (Baydin et al., 2018). With
``anchor="run"`` the tangents are not reset at window starts (re-anchored every ``reanchor_every``
windows), so the hypergradient followed is the realised one since the anchor: real-time forward-mode
hyperparameter optimisation (Franceschi et al., 2017), Glocal's trajectory without the extrapolation.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .. import defaults
from .base import WindowEstimate, check_anchor, check_mode, check_positive_int, continues_trajectory


@dataclass
class Local:
    window: int = defaults.WINDOW
    mode: str = "forward"
    #: "window" (tangents reset at each window's start: the truncated, local hypergradient) or "run"
    #: (tangents carried across windows; forward mode only)
    anchor: str = "window"
    #: anchor="run": start anew every this many windows (None: never)
    reanchor_every: int | None = defaults.REANCHOR_EVERY
    name: str = "local"

    #: only the last row is used, so a kept trajectory needs no more than the last two rows
    fit_rows = 2

    def __post_init__(self) -> None:
        check_positive_int("window", self.window)
        check_mode(self.mode)
        check_anchor(self.anchor, self.mode, self.reanchor_every)

    @property
    def record_every(self) -> int:
        """Only the window's end is needed."""
        return self.window

    def keeps_trajectory(self, window_end: int) -> bool:
        """With ``anchor="run"``: True except every ``reanchor_every`` windows (see ``Glocal``)."""
        return continues_trajectory(self.anchor, self.reanchor_every, self.window, window_end)

    def estimate(self, trajectory: Tensor, window_end: int) -> WindowEstimate:
        last = trajectory[-1]
        return WindowEstimate(hypergradient=last, local=last)
