"""``logistic-digits``: multinomial logistic regression on scikit-learn's bundled 8x8 digits.

Convex, small (1797 samples, 64 features, 650 parameters) and download-free: a task where the
meta-landscape is smooth and hypergradient extrapolation should be accurate. Features are
standardised with the training split's statistics; the stratified 60/20/20 split is fixed by
``data_seed`` (default 0), independent of the model/batch-order ``seed``.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from .base import (
    Task,
    cross_entropy,
    global_rngs_kept,
    log_grid,
    optimizer_and_space,
    seeded_init,
    stratified_split,
    to_split,
)

__all__ = ["make_logistic_digits"]


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    with global_rngs_kept():
        from sklearn.datasets import load_digits

        data = load_digits()
    return data.data.astype(np.float64), data.target.astype(np.int64)


def make_logistic_digits(seed: int = 0, *, optimizer: str = "sgd", dtype: torch.dtype = torch.float32,
                         device: torch.device | str | None = None, data_seed: int = 0) -> Task:
    """The logistic-digits task: nn.Linear(64, 10), cross entropy, batch 64, 1000 steps."""
    x_np, y_np = _digits()
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    train_idx, val_idx, test_idx = stratified_split(y, (0.6, 0.2, 0.2), data_seed)
    mean = x[train_idx].mean(0)
    std = x[train_idx].std(0)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))  # constant pixels stay zero
    x = (x - mean) / std
    with seeded_init(seed):
        model = nn.Linear(64, 10)
    model = model.to(dtype=dtype, device=device)
    if optimizer == "sgd":
        lr, wd, momentum = 0.05, 1e-3, 0.9
        grid = {"lr": log_grid(0.05, 3.0, 4), "weight_decay": log_grid(1e-3, 10.0, 2), "momentum": [0.5, 0.9]}
    else:
        lr, wd, momentum = 5e-3, 3e-2, None
        grid = {"lr": log_grid(5e-3, 3.0, 4), "weight_decay": log_grid(3e-2, 10.0, 4)}
    opt, space = optimizer_and_space(optimizer, lr, wd, momentum, dtype, device)
    return Task(
        name="logistic-digits" if optimizer == "sgd" else "logistic-digits-adamw",
        model=model, optimizer=opt, space=space,
        train=to_split(x[train_idx], y[train_idx], dtype, device),
        val=to_split(x[val_idx], y[val_idx], dtype, device),
        test=to_split(x[test_idx], y[test_idx], dtype, device),
        batch_size=64, total_steps=1000, train_loss=cross_entropy, val_loss=cross_entropy, num_classes=10,
        seed=seed, description="multinomial logistic regression on sklearn digits (1078/359/360), batch 64",
        grid=grid,
    )
