"""Online strategies: how the hyperparameters are updated during one training run."""

from .base import Strategy, WindowEstimate
from .fixed import Fixed
from .global_ import Global, GlobalResult
from .glocal import Glocal
from .local import Local

__all__ = ["Fixed", "Global", "GlobalResult", "Glocal", "Local", "Strategy", "WindowEstimate"]
