"""The task registry: ``names()``, ``describe()``, ``make(name, seed, **overrides)``.

Every registered name maps to a builder (one per task family module) plus fixed keyword
arguments. ``make`` applies the generic overrides itself (``total_steps``, ``batch_size``,
``init``) and forwards the rest (``dtype``, ``device`` and family options such as ``num_train``)
to the builder, so an override the task does not understand is an error, not silently ignored.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .base import Task, apply_init
from .logistic import make_logistic_digits
from .mnist1d import make_mnist1d
from .quadratic import make_quadratic
from .reweighting import RECOMMENDED, make_imbalanced, make_noisy
from .suite import (
    make_diabetes_mlp,
    make_digits_cnn_bn,
    make_digits_mlp_long,
    make_mnist1d_independent,
    make_seq_transformer,
)

__all__ = ["describe", "make", "names", "register"]


@dataclass(frozen=True)
class _Entry:
    builder: Callable[..., Task]
    description: str
    fixed: Mapping[str, Any] = field(default_factory=dict)      # what makes the task (optimizer, arch)
    defaults: Mapping[str, Any] = field(default_factory=dict)   # overridable options (num_train)


_REGISTRY: dict[str, _Entry] = {}

#: overrides handled by ``make`` for every task
GENERIC_OVERRIDES = ("total_steps", "batch_size", "init")


def register(name: str, builder: Callable[..., Task], description: str,
             defaults: Mapping[str, Any] | None = None, **fixed: Any) -> None:
    """Add a task: ``builder(seed, **fixed, **defaults, **overrides)`` must return a ``Task``.

    ``fixed`` options define the task and cannot be overridden; ``defaults`` can.
    """
    if name in _REGISTRY:
        raise ValueError(f"task {name!r} is already registered")
    _REGISTRY[name] = _Entry(builder, description, dict(fixed), dict(defaults or {}))


def names() -> list[str]:
    """The registered task names, in registration order."""
    return list(_REGISTRY)


def describe() -> dict[str, str]:
    """One-line description of every registered task, by name."""
    return {name: entry.description for name, entry in _REGISTRY.items()}


def _accepted(entry: _Entry) -> list[str]:
    params = inspect.signature(entry.builder).parameters
    return [p for p in params if p not in ("seed", "name") and p not in entry.fixed]


def make(name: str, seed: int = 0, **overrides: Any) -> Task:
    """Build task ``name`` from ``seed`` (model init and default batch order).

    Overrides: ``total_steps``, ``batch_size`` (None = full batch), ``init`` (a dict of initial
    hyperparameter values, applied with ``space.set``), ``dtype``, ``device`` and the task's own
    options (see ``describe()`` and the builder's signature). The global RNGs are left unchanged.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(names())}")
    entry = _REGISTRY[name]
    generic = {k: overrides.pop(k) for k in GENERIC_OVERRIDES if k in overrides}
    accepted = _accepted(entry)
    unknown = [k for k in overrides if k not in accepted]
    if unknown:
        raise ValueError(f"task {name!r}: unknown override(s) {unknown}; accepted: "
                         f"{', '.join([*GENERIC_OVERRIDES, *accepted])}")
    task = entry.builder(int(seed), **entry.fixed, **{**entry.defaults, **overrides})
    task.name = name
    task.description = entry.description if not task.description else task.description
    if "total_steps" in generic:
        steps = int(generic["total_steps"])
        if steps < 1:
            raise ValueError(f"total_steps={steps}: expected a positive integer")
        task.total_steps = steps
    if "batch_size" in generic:
        batch = generic["batch_size"]
        if batch is not None and int(batch) < 1:
            raise ValueError(f"batch_size={batch}: expected a positive integer or None (full batch)")
        task.batch_size = None if batch is None else int(batch)
    apply_init(task.space, generic.get("init"))
    return task


register("quadratic", make_quadratic,
         "linear regression 200x20 (condition 1e3), full-batch GD tuning lr, wd; closed-form answers, float64",
         optimizer="sgd")
register("quadratic-adamw", make_quadratic,
         "linear regression 200x20 (condition 1e3), full-batch AdamW tuning lr, wd, float64", optimizer="adamw")
register("logistic-digits", make_logistic_digits,
         "logistic regression on sklearn digits, SGD-momentum tuning lr, wd, momentum; batch 64", optimizer="sgd")
register("logistic-digits-adamw", make_logistic_digits,
         "logistic regression on sklearn digits, AdamW tuning lr, wd; batch 64", optimizer="adamw")
register("mnist1d-mlp", make_mnist1d,
         "MNIST-1D MLP 40-100-100-10, 3000 train (overfits), SGD-momentum tuning lr, wd, momentum; batch 128",
         arch="mlp", optimizer="sgd")
register("mnist1d-mlp-adamw", make_mnist1d,
         "MNIST-1D MLP 40-100-100-10, 3000 train (overfits), AdamW tuning lr, wd; batch 128",
         arch="mlp", optimizer="adamw")
register("mnist1d-mlp-large", make_mnist1d,
         "MNIST-1D MLP 40-100-100-10, 20000 train (no overfitting), SGD-momentum tuning lr, wd, momentum",
         arch="mlp", optimizer="sgd", defaults={"num_train": 20000})
register("mnist1d-mlp-large-adamw", make_mnist1d,
         "MNIST-1D MLP 40-100-100-10, 20000 train (no overfitting), AdamW tuning lr, wd",
         arch="mlp", optimizer="adamw", defaults={"num_train": 20000})
register("mnist1d-cnn", make_mnist1d,
         "MNIST-1D 1-D CNN (3 conv layers, ~17k params), 3000 train, SGD-momentum tuning lr, wd, momentum",
         arch="cnn", optimizer="sgd")
register("mnist1d-cnn-adamw", make_mnist1d,
         "MNIST-1D 1-D CNN (3 conv layers, ~17k params), 3000 train, AdamW tuning lr, wd", arch="cnn",
         optimizer="adamw")
register("mnist1d-imbalanced", make_imbalanced,
         "MNIST-1D MLP, long-tailed train (imbalance ratio 50), balanced val/test; per-class loss weights (forward)")
register("mnist1d-noisy", make_noisy,
         "MNIST-1D MLP, 3000 train with 40% wrong labels, clean val 300; per-sample loss weights (reverse)")

# The no-regret suite (benchmarks/bench_suite.py): common library defaults as the start, not tuned values.
register("digits-cnn-bn", make_digits_cnn_bn,
         "CNN with BatchNorm on sklearn digits 8x8 (2.9k params), SGD-momentum from lr 0.01; batch 64, 400 steps")
register("seq-transformer", make_seq_transformer,
         "1-layer Transformer encoder, synthetic pointer task (plateau then sudden drop, 10% label noise), "
         "AdamW from lr 1e-3; batch 64, 400 steps")
register("diabetes-mlp", make_diabetes_mlp,
         "MLP regression on sklearn diabetes (265 train: overfits fast), SGD-momentum from lr 0.01; MSE, batch 32")
register("digits-mlp-long", make_digits_mlp_long,
         "long horizon: MLP 64-32-10 on sklearn digits, 5000 steps (~150 epochs), SGD-momentum from lr 0.01")
register("mnist1d-mlp-indep", make_mnist1d_independent,
         "MNIST-1D MLP 40-64-64-10, 2000 train, 1500 steps, batch 64, SGD-momentum from lr 0.003 (untuned start)")


def recommended_settings(name: str) -> dict[str, Any]:
    """Tuning settings (``glocal_bench.experiment.Settings`` fields) a task was benchmarked with, if any.

    The command line uses them where the user gave no flag: e.g. per-sample loss weights need a
    per-coordinate hyper-optimizer (Adam), which the default plain SGD on a clipped hypergradient
    is not (a unit-norm step spread over 3000 weights moves each by ~0.002).
    """
    return dict(RECOMMENDED.get(name, {}))

