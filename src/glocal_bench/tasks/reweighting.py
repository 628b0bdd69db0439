"""Data-reweighting tasks: the hyperparameters are loss weights, per class or per training sample.

Both are MNIST-1D (generated locally by ``mnist1d_arrays``, never downloaded) with the
40-100-100-10 MLP, SGD-momentum at fixed lr / weight decay / momentum, batch 128; only the loss
weights are tuned, so the Fixed strategy is training with uniform weights.

* ``mnist1d-imbalanced``: the training classes are subsampled with a long-tailed (exponential)
  profile, ``n_c = n_max * ratio^(-c/9)`` (class 0 the head with ``n_max``, class 9 the tail with
  ``n_max / ratio``), imbalance ratio 50; validation (50 per class) and test (100 per class) are
  balanced and fixed. Tuned: ``class_weights`` (10, log), forward mode.
* ``mnist1d-noisy``: 3000 training samples, of which 40% (chosen by the data seed) get their label
  replaced by a uniformly random *different* class (so exactly 40% are wrong); a small clean
  validation set (300) and the 1000-sample clean test set. Tuned: ``sample_weights`` (3000, log),
  reverse mode; training batches are ``(x, y, idx)``. Result records carry the weight statistics
  of clean versus corrupted samples (``Task.extra_metrics``).

The data selection (subsampling, noise) uses ``data_seed`` (default 0, independent of the
model/batch-order ``seed``, as for the other tasks) with its own ``torch.Generator``: reproducible,
and the global RNGs are untouched.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from glocal.losses import ClassWeightedCrossEntropy, SampleWeightedCrossEntropy
from glocal.optim import SGD
from glocal.space import HyperSpace, Log, Logit

from .base import Task, cross_entropy, seeded_init, to_split
from .mnist1d import MLP, mnist1d_arrays

__all__ = ["RECOMMENDED", "REWEIGHTING_TASKS", "corrupted_mask", "long_tail_counts", "make_imbalanced", "make_noisy",
           "noisy_labels", "noisy_weight_metrics"]

#: the registered reweighting tasks (their spaces hold loss weights, not optimizer hyperparameters)
REWEIGHTING_TASKS = ("mnist1d-imbalanced", "mnist1d-noisy")

#: tuning settings these tasks were benchmarked with (``experiment.Settings`` fields; CLI flags
#: ``--window --hyper-optimizer --hyper-lr --clip``), see docs/reweighting.md
RECOMMENDED: dict[str, dict[str, Any]] = {
    "mnist1d-imbalanced": {"window": 100, "hyper_optimizer": "adam", "hyper_lr": 0.1, "clip_norm": 1.0},
    "mnist1d-noisy": {"window": 50, "hyper_optimizer": "adam", "hyper_lr": 0.1, "clip_norm": 1.0},
}

_LR, _WEIGHT_DECAY, _MOMENTUM = 0.1, 3e-3, 0.9


def long_tail_counts(n_max: int, ratio: float, num_classes: int = 10) -> list[int]:
    """Exponential long-tailed class sizes from ``n_max`` (class 0) down to ``n_max / ratio``."""
    if ratio < 1 or n_max < 1:
        raise ValueError(f"ratio={ratio}, n_max={n_max}: expected ratio >= 1 and n_max >= 1")
    return [max(1, round(n_max * ratio ** (-c / (num_classes - 1)))) for c in range(num_classes)]


def noisy_labels(labels: Tensor, fraction: float, num_classes: int, generator: torch.Generator
                 ) -> tuple[Tensor, Tensor]:
    """(noisy labels, corrupted mask): ``round(fraction * n)`` labels replaced by a random other class."""
    if not 0 <= fraction < 1:
        raise ValueError(f"noise={fraction}: expected a fraction in [0, 1)")
    n = labels.numel()
    chosen = torch.randperm(n, generator=generator)[: round(fraction * n)]
    shift = torch.randint(1, num_classes, (chosen.numel(),), generator=generator)
    noisy = labels.clone()
    noisy[chosen] = (labels[chosen] + shift) % num_classes
    corrupted = torch.zeros(n, dtype=torch.bool)
    corrupted[chosen] = True
    return noisy, corrupted


def _model(seed: int, dtype: torch.dtype, device: torch.device | str | None, activation: str) -> nn.Module:
    with seeded_init(seed):
        model = MLP(100, activation)
    return model.to(dtype=dtype, device=device)


def _optimizer() -> SGD:
    return SGD(lr=_LR, momentum=_MOMENTUM, weight_decay=_WEIGHT_DECAY)


# -- mnist1d-imbalanced -----------------------------------------------------------------------
def _imbalanced_metrics(task: Task) -> dict[str, Any]:
    """Per-class test recall and the mean recall of the five smallest (tail) classes."""
    model = task.model
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            pred = model(task.test[0]).argmax(-1)
    finally:
        model.train(was)
    y = task.test[1]
    recall = [float((pred[y == c] == c).to(torch.float64).mean()) for c in range(10)]
    return {"test_recall_per_class": recall, "tail_test_accuracy": float(np.mean(recall[5:]))}


def make_imbalanced(seed: int = 0, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                    ratio: float = 50.0, n_max: int = 600, val_per_class: int = 50, test_per_class: int = 100,
                    data_seed: int = 0, activation: str = "relu", normalize: bool = True,
                    tune_lr: bool = False) -> Task:
    """``mnist1d-imbalanced``: long-tailed training classes (ratio 50), balanced val/test; class weights.

    Per class, the first ``test_per_class`` generated samples are test, the next ``val_per_class``
    validation (both fixed), and ``n_c`` training samples are drawn from the rest by ``data_seed``.
    ``tune_lr`` adds the (log) learning rate to the space.
    """
    per_class = n_max + val_per_class + test_per_class
    x_np, y_np = mnist1d_arrays(max(5000, -(-10 * per_class // 1000) * 1000))  # num_samples / 10 per class
    x_all, y_all = torch.from_numpy(np.array(x_np)), torch.from_numpy(np.array(y_np))
    gen = torch.Generator().manual_seed(int(data_seed))
    counts = long_tail_counts(n_max, ratio)
    train_idx, val_idx, test_idx = [], [], []
    for c in range(10):
        idx = torch.nonzero(y_all == c).flatten()
        if idx.numel() < per_class:
            raise ValueError(f"class {c}: only {idx.numel()} generated samples for {per_class} needed")
        test_idx.append(idx[:test_per_class])
        val_idx.append(idx[test_per_class:test_per_class + val_per_class])
        rest = idx[test_per_class + val_per_class:]
        train_idx.append(rest[torch.randperm(rest.numel(), generator=gen)[: counts[c]]])
    train = torch.cat(train_idx)
    train = train[torch.randperm(train.numel(), generator=gen)]
    val, test = torch.cat(val_idx), torch.cat(test_idx)
    entries: dict[str, Any] = {"class_weights": Log(torch.ones(10))}
    if tune_lr:
        entries["lr"] = Log(_LR)
    space = HyperSpace(dtype=dtype, device=device, **entries)
    return Task(
        name="mnist1d-imbalanced", model=_model(seed, dtype, device, activation), optimizer=_optimizer(),
        space=space, train=to_split(x_all[train], y_all[train], dtype, device),
        val=to_split(x_all[val], y_all[val], dtype, device), test=to_split(x_all[test], y_all[test], dtype, device),
        batch_size=128, total_steps=1500,
        train_loss=ClassWeightedCrossEntropy("class_weights", normalize=normalize), val_loss=cross_entropy,
        num_classes=10, seed=seed,
        description=(f"MNIST-1D MLP, long-tailed train (ratio {ratio:g}, {train.numel()} samples, "
                     f"{counts[0]}..{counts[-1]} per class), balanced val/test; per-class loss weights"),
        mode="forward", metrics_hook=_imbalanced_metrics,
    )


# -- mnist1d-noisy ----------------------------------------------------------------------------
def noisy_weight_metrics(weights: Tensor, corrupted: Tensor, lowest: float = 0.4) -> dict[str, float]:
    """How well ``weights`` separate corrupted from clean samples.

    Keys: mean weight of clean and of corrupted samples, their ratio, the fraction of corrupted
    samples among the lowest-weighted ``lowest`` fraction, and the AUC (probability that a random
    clean sample outweighs a random corrupted one; 0.5 = no separation).
    """
    w = weights.detach().to(torch.float64).reshape(-1).cpu()
    bad = corrupted.reshape(-1).cpu()
    clean_mean, bad_mean = float(w[~bad].mean()), float(w[bad].mean())
    k = round(lowest * w.numel())
    order = torch.argsort(w, stable=True)
    ranks = torch.empty_like(w)
    ranks[order] = torch.arange(1, w.numel() + 1, dtype=torch.float64)
    # average ranks for ties (uniform weights give AUC 0.5)
    _, inverse, counts = torch.unique(w, return_inverse=True, return_counts=True)
    rank_sum = torch.zeros(counts.numel(), dtype=torch.float64).index_add_(0, inverse, ranks)
    ranks = (rank_sum / counts)[inverse]
    n_clean, n_bad = int((~bad).sum()), int(bad.sum())
    auc = (float(ranks[~bad].sum()) - n_clean * (n_clean + 1) / 2) / (n_clean * n_bad)
    return {"clean_weight_mean": clean_mean, "corrupted_weight_mean": bad_mean,
            "clean_to_corrupted_weight_ratio": clean_mean / bad_mean,
            "corrupted_fraction_lowest40": float(bad[order[:k]].to(torch.float64).mean()),
            "weight_auc": auc}


def make_noisy(seed: int = 0, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
               num_train: int = 3000, num_val: int = 300, noise: float = 0.4, data_seed: int = 0,
               transform: str = "log", activation: str = "relu", normalize: bool = True) -> Task:
    """``mnist1d-noisy``: 40% of the training labels wrong, clean val (300) and test (1000); sample weights.

    Of the 5000 generated samples the first ``num_train`` are train, the next ``num_val``
    validation and the last 1000 test (the generator's test part). ``transform``: "log" (weights
    > 0, initial 1) or "logit" (weights in (0, 1), initial 0.5).
    """
    if num_train + num_val > 4000:
        raise ValueError(f"num_train + num_val = {num_train + num_val}: at most 4000 (5000 generated, 1000 test)")
    if transform not in ("log", "logit"):
        raise ValueError(f"transform={transform!r}: expected 'log' or 'logit'")
    x_np, y_np = mnist1d_arrays(5000)
    x_all, y_all = torch.from_numpy(np.array(x_np)), torch.from_numpy(np.array(y_np))
    gen = torch.Generator().manual_seed(int(data_seed))
    y_train, corrupted = noisy_labels(y_all[:num_train], noise, 10, gen)
    weights = Log(torch.ones(num_train)) if transform == "log" else Logit(torch.full((num_train,), 0.5))
    space = HyperSpace(dtype=dtype, device=device, sample_weights=weights)
    corrupted = corrupted.to(device)

    def metrics(task: Task) -> dict[str, Any]:
        values = task.space.values()["sample_weights"]
        return noisy_weight_metrics(values, corrupted)

    return Task(
        name="mnist1d-noisy", model=_model(seed, dtype, device, activation), optimizer=_optimizer(), space=space,
        train=to_split(x_all[:num_train], y_train, dtype, device),
        val=to_split(x_all[num_train:num_train + num_val], y_all[num_train:num_train + num_val], dtype, device),
        test=to_split(x_all[4000:], y_all[4000:], dtype, device),
        batch_size=128, total_steps=2000,
        train_loss=SampleWeightedCrossEntropy("sample_weights", normalize=normalize), val_loss=cross_entropy,
        num_classes=10, seed=seed,
        description=(f"MNIST-1D MLP, {num_train} train with {noise:.0%} wrong labels, clean val {num_val} / "
                     "test 1000; per-sample loss weights (reverse mode)"),
        mode="reverse", indexed_batches=True, metrics_hook=metrics,
    )


def corrupted_mask(task: Task) -> Tensor:
    """Which training labels of an ``mnist1d-noisy`` task differ from the generator's true labels."""
    x_np, y_np = mnist1d_arrays(5000)
    del x_np
    true = torch.from_numpy(np.array(y_np[: task.num_train])).to(task.train[1].device)
    return task.train[1] != true
