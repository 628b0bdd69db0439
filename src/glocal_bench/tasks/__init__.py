"""Benchmark problems for online hyperparameter tuning, built reproducibly from a seed.

``glocal_bench.tasks.make("mnist1d-mlp", seed=0)`` returns a :class:`Task`: a fresh model, the
differentiable inner optimizer, the HyperSpace to tune, fixed train/val/test splits, losses,
batching and evaluation. ``names()`` lists the tasks and ``describe()`` says what each one is.
"""

from .base import Task
from .quadratic import QuadraticExact, QuadraticProblem, optimal_weight_decay, quadratic_exact
from .registry import describe, make, names, recommended_settings, register

__all__ = [
    "QuadraticExact",
    "QuadraticProblem",
    "Task",
    "describe",
    "make",
    "names",
    "optimal_weight_decay",
    "quadratic_exact",
    "recommended_settings",
    "register",
]
