"""Differentiable inner optimizers: pure functions with ``torch.optim`` update semantics."""

from .adamw import AdamW
from .base import InnerOptimizer
from .sgd import SGD

__all__ = ["SGD", "AdamW", "InnerOptimizer"]
