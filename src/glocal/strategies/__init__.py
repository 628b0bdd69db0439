"""Online strategies: how the hyperparameters are updated during one training run.

(``Global``, which retrains, is a driver above ``Tuner``: ``glocal.outer``.)
"""

from .base import Strategy, WindowEstimate
from .fixed import Fixed
from .glocal import Glocal
from .local import Local

__all__ = ["Fixed", "Glocal", "Local", "Strategy", "WindowEstimate"]
