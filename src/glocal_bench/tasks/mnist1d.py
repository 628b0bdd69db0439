"""``mnist1d-*``: MNIST-1D (Greydanus 2020) generated locally, with an MLP or a small 1-D CNN.

The data come from ``mnist1d.data.make_dataset`` (never its downloading loader). It reseeds
Python's and numpy's global RNGs, so both states are saved and restored around it, and the result
is cached in-process (generation takes about a second per 5000 samples). Importing mnist1d
imports matplotlib, so a non-interactive backend is selected first.

Splits (fixed by the generator's own seed 42): of the generated (shuffled) samples the first
``num_train`` are train, the next ``num_val`` validation and the next ``num_test`` test; with the
defaults the test set is exactly the generator's own test part.
Default: 5000 samples -> 3000 train / 1000 val / 1000 test, a regime where the MLP overfits;
``mnist1d-mlp-large`` generates 22000 -> 20000 / 1000 / 1000 (no overfitting within the budget).
"""

from __future__ import annotations

import functools
import os
import random

import numpy as np
import torch
from torch import Tensor, nn

from .base import Task, cross_entropy, log_grid, optimizer_and_space, seeded_init, to_split

__all__ = ["MLP", "CNN1d", "make_mnist1d", "mnist1d_arrays"]


@functools.lru_cache(maxsize=4)
def mnist1d_arrays(num_samples: int = 5000) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of ``make_dataset`` with the default args (generator seed 42), global RNGs untouched.

    The generator's own train/test split is its first 80% / last 20% of one shuffled array, so
    the arrays are returned concatenated (train part first) and callers cut them.
    """
    os.environ.setdefault("MPLBACKEND", "Agg")
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    x = np.concatenate([data["x"], data["x_test"]])
    y = np.concatenate([data["y"], data["y_test"]])
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


class MLP(nn.Module):
    """40 -> hidden -> hidden -> 10 with ReLU (or tanh, smooth, for finite-difference tests)."""

    def __init__(self, hidden: int = 100, activation: str = "relu") -> None:
        super().__init__()
        act = _activation(activation)
        self.net = nn.Sequential(nn.Linear(40, hidden), act(), nn.Linear(hidden, hidden), act(), nn.Linear(hidden, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class CNN1d(nn.Module):
    """Three 1-D convolutions (stride 2) and a linear head: about 17k parameters with 48 channels."""

    def __init__(self, channels: int = 48, activation: str = "relu") -> None:
        super().__init__()
        act = _activation(activation)
        c = channels
        self.features = nn.Sequential(
            nn.Conv1d(1, c, 5, stride=2, padding=2), act(),    # 40 -> 20
            nn.Conv1d(c, c, 3, stride=2, padding=1), act(),    # 20 -> 10
            nn.Conv1d(c, c, 3, stride=2, padding=1), act(),    # 10 -> 5
        )
        self.head = nn.Linear(c * 5, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x.unsqueeze(1)).flatten(1))


def _activation(name: str) -> type[nn.Module]:
    table: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}
    if name not in table:
        raise ValueError(f"activation={name!r}: expected one of {sorted(table)}")
    return table[name]


#: per (architecture, optimizer): initial (lr, weight decay, momentum or None) and the grid
_DEFAULTS: dict[tuple[str, str], tuple[tuple[float, float, float | None], dict[str, list[float]]]] = {
    ("mlp", "sgd"): ((0.1, 3e-3, 0.9),
                     {"lr": log_grid(0.1, 3.0, 4), "weight_decay": [1e-3, 1e-2], "momentum": [0.5, 0.9]}),
    ("mlp", "adamw"): ((5e-3, 0.3, None), {"lr": log_grid(3e-3, 3.0, 4), "weight_decay": log_grid(0.1, 10.0, 4)}),
    ("cnn", "sgd"): ((0.05, 1e-3, 0.9),
                     {"lr": log_grid(0.05, 3.0, 4), "weight_decay": log_grid(1e-3, 10.0, 2), "momentum": [0.5, 0.9]}),
    ("cnn", "adamw"): ((1e-3, 1e-2, None), {"lr": log_grid(1e-3, 3.0, 4), "weight_decay": log_grid(1e-2, 10.0, 4)}),
}


def make_mnist1d(seed: int = 0, *, arch: str = "mlp", optimizer: str = "sgd", dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None, num_train: int = 3000, num_val: int = 1000,
                 num_test: int = 1000, activation: str = "relu", hidden: int = 100, channels: int = 48,
                 name: str | None = None) -> Task:
    """An MNIST-1D task: ``arch`` "mlp" (40-100-100-10) or "cnn"; batch 128, 2000 steps."""
    if arch not in ("mlp", "cnn"):
        raise ValueError(f"arch={arch!r}: expected 'mlp' or 'cnn'")
    if (arch, optimizer) not in _DEFAULTS:
        raise ValueError(f"optimizer={optimizer!r}: expected 'sgd' or 'adamw'")
    if min(num_train, num_val, num_test) < 1:
        raise ValueError("num_train, num_val and num_test must be positive")
    generated_train = num_train + num_val
    total = generated_train + num_test
    x_np, y_np = mnist1d_arrays(-(-total // 10) * 10)  # the generator makes num_samples // 10 per class
    x, y = torch.from_numpy(np.array(x_np[:total])), torch.from_numpy(np.array(y_np[:total]))
    with seeded_init(seed):
        model: nn.Module = (MLP(hidden, activation) if arch == "mlp" else CNN1d(channels, activation))
    model = model.to(dtype=dtype, device=device)
    (lr, wd, momentum), grid = _DEFAULTS[arch, optimizer]
    opt, space = optimizer_and_space(optimizer, lr, wd, momentum, dtype, device)
    default_name = f"mnist1d-{arch}" + ("-adamw" if optimizer == "adamw" else "")
    return Task(
        name=name or default_name, model=model, optimizer=opt, space=space,
        train=to_split(x[:num_train], y[:num_train], dtype, device),
        val=to_split(x[num_train:generated_train], y[num_train:generated_train], dtype, device),
        test=to_split(x[generated_train:], y[generated_train:], dtype, device),
        batch_size=128, total_steps=2000, train_loss=cross_entropy, val_loss=cross_entropy, num_classes=10,
        seed=seed, description=f"MNIST-1D {arch.upper()} ({num_train}/{num_val}/{num_test}), batch 128",
        grid={k: list(v) for k, v in grid.items()},
    )
