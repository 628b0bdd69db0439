"""The Task record shared by every benchmark problem: data splits, batching, evaluation.

A task is everything one online-tuning run needs, built reproducibly from a seed: a freshly
initialised model, the differentiable inner optimizer (constants for untuned hyperparameters),
the HyperSpace to tune with good initial values, fixed train/val/test splits and the losses.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from glocal.optim import SGD, AdamW
from glocal.space import HyperSpace, Log, Logit

__all__ = [
    "Split",
    "Task",
    "cross_entropy",
    "global_rngs_kept",
    "log_grid",
    "mse",
    "seeded_init",
    "stratified_split",
]

Split = tuple[Tensor, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


def cross_entropy(output: Tensor, target: Tensor) -> Tensor:
    """Mean cross entropy of logits ``output`` (n, C) against integer labels ``target`` (n,)."""
    return F.cross_entropy(output, target)


def mse(output: Tensor, target: Tensor) -> Tensor:
    """Mean squared error; a trailing singleton output dimension is dropped (regression heads)."""
    if output.dim() == target.dim() + 1 and output.shape[-1] == 1:
        output = output.squeeze(-1)
    return F.mse_loss(output, target)


@contextmanager
def global_rngs_kept() -> Iterator[None]:
    """Restore Python's and numpy's global RNG states after the block (importing scikit-learn's
    datasets module draws from Python's ``random``, and tasks must leave the global RNGs unchanged)."""
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


@contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Seed torch's global RNG for the block (model initialisation) and restore it afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def log_grid(center: float, factor: float, n: int) -> list[float]:
    """``n`` log-spaced values around ``center``, consecutive ones a ``factor`` apart."""
    offset = (n - 1) / 2
    return [float(center * factor ** (i - offset)) for i in range(n)]


def stratified_split(labels: Tensor, fractions: Sequence[float], seed: int) -> list[Tensor]:
    """Index tensors of a stratified random split of ``labels`` into parts of the given fractions.

    Each class is shuffled (a ``torch.Generator`` seeded by ``seed``) and cut by the cumulative
    fractions, so every part has (almost) the class proportions of the whole.
    """
    gen = torch.Generator().manual_seed(seed)
    parts: list[list[Tensor]] = [[] for _ in fractions]
    bounds = list(itertools.accumulate(fractions))
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        cuts = [0] + [round(b * len(idx)) for b in bounds[:-1]] + [len(idx)]
        for k in range(len(fractions)):
            parts[k].append(idx[cuts[k]:cuts[k + 1]])
    out = []
    for chunks in parts:
        idx = torch.cat(chunks)
        out.append(idx[torch.randperm(len(idx), generator=gen)])
    return out


@dataclass
class Task:
    """A benchmark problem: model, inner optimizer, HyperSpace, fixed splits, losses, budget.

    ``batch_size`` None (or >= the training-set size) means full batch. Minibatches drop the
    incomplete last batch of an epoch so that every step sees the same batch shape.
    """

    name: str
    model: nn.Module
    optimizer: SGD | AdamW
    space: HyperSpace
    train: Split
    val: Split
    test: Split
    batch_size: int | None
    total_steps: int
    train_loss: LossFn
    val_loss: LossFn
    num_classes: int | None
    seed: int = 0
    description: str = ""
    grid: dict[str, list[float]] = field(default_factory=dict)
    #: hypergradient engine the online strategies use: "forward" (small q) or "reverse" (large q)
    mode: str = "forward"
    #: training batches are ``(x, y, idx)`` with the samples' training-set indices (per-sample weights)
    indexed_batches: bool = False
    #: task-specific metrics ``hook(task) -> dict`` merged into result records (see ``extra_metrics``)
    metrics_hook: Callable[[Task], dict[str, Any]] | None = None

    # -- data --------------------------------------------------------------------------------
    @property
    def num_train(self) -> int:
        return len(self.train[0])

    @property
    def full_batch(self) -> bool:
        return self.batch_size is None or self.batch_size >= self.num_train

    @property
    def steps_per_epoch(self) -> int:
        return 1 if self.full_batch else self.num_train // int(self.batch_size)  # type: ignore[arg-type]

    def batches(self, seed: int | None = None) -> Iterator[tuple[Tensor, ...]]:
        """Infinite training batches, reshuffled every epoch by a generator seeded with ``seed``.

        The same seed always gives the same order (the Global strategy retrains on it); the
        default is the task's own seed. The global RNGs are not touched. Batches are ``(x, y)``,
        or ``(x, y, idx)`` when ``indexed_batches`` is set.
        """
        x, y = self.train
        if self.full_batch:
            everything = torch.arange(self.num_train, device=x.device)
            while True:
                yield (x, y, everything) if self.indexed_batches else (x, y)
        gen = torch.Generator().manual_seed(self.seed if seed is None else int(seed))
        n, b = self.num_train, int(self.batch_size)  # type: ignore[arg-type]
        while True:
            perm = torch.randperm(n, generator=gen).to(x.device)
            for start in range(0, n - b + 1, b):
                idx = perm[start:start + b]
                yield (x[idx], y[idx], idx) if self.indexed_batches else (x[idx], y[idx])

    # -- evaluation --------------------------------------------------------------------------
    def evaluate(self, model: nn.Module | None = None) -> dict[str, float]:
        """Metrics of ``model`` (default: the task's) in eval mode without gradients.

        Keys: ``train_loss``, ``val_loss``, ``test_loss``; for classification also
        ``val_accuracy``, ``test_accuracy`` and ``balanced_test_accuracy`` (mean per-class recall).
        """
        model = self.model if model is None else model
        was_training = model.training
        model.eval()
        out: dict[str, float] = {}
        try:
            with torch.no_grad():
                for split, (x, y) in (("train", self.train), ("val", self.val), ("test", self.test)):
                    output = model(x)
                    loss_fn = self.train_loss if split == "train" else self.val_loss
                    out[f"{split}_loss"] = float(loss_fn(output, y))
                    if self.num_classes is not None and split != "train":
                        pred = output.argmax(-1)
                        out[f"{split}_accuracy"] = float((pred == y).to(torch.float64).mean())
                        if split == "test":
                            out["balanced_test_accuracy"] = balanced_accuracy(pred, y, self.num_classes)
        finally:
            model.train(was_training)
        return out

    def extra_metrics(self) -> dict[str, Any]:
        """Task-specific metrics of the current model and hyperparameters (``metrics_hook``), or {}."""
        return dict(self.metrics_hook(self)) if self.metrics_hook is not None else {}

    def default_grid(self) -> dict[str, list[float]]:
        """A small log-spaced grid (about 16 configurations) over the tuned hyperparameters."""
        return {name: list(values) for name, values in self.grid.items()}

    def grid_configurations(self) -> list[dict[str, float]]:
        """The Cartesian product of ``default_grid()`` as a list of ``{name: value}`` dicts."""
        grid = self.default_grid()
        names = list(grid)
        return [dict(zip(names, values, strict=True)) for values in itertools.product(*grid.values())]

    def __repr__(self) -> str:
        params = sum(p.numel() for p in self.model.parameters())
        return (f"Task({self.name!r}, seed={self.seed}, params={params}, train={self.num_train}, "
                f"val={len(self.val[0])}, test={len(self.test[0])}, batch_size={self.batch_size}, "
                f"total_steps={self.total_steps}, optimizer={self.optimizer!r}, space={self.space!r})")


def balanced_accuracy(pred: Tensor, target: Tensor, num_classes: int) -> float:
    """Mean over the classes present in ``target`` of the fraction of that class predicted right."""
    recalls = []
    for c in range(num_classes):
        mask = target == c
        if bool(mask.any()):
            recalls.append(float((pred[mask] == c).to(torch.float64).mean()))
    return sum(recalls) / len(recalls)


def to_split(x: Tensor, y: Tensor, dtype: torch.dtype, device: torch.device | str | None,
             regression: bool = False) -> Split:
    """Inputs in ``dtype`` on ``device``; labels int64 (classification) or ``dtype`` (regression)."""
    x = x.to(dtype=dtype, device=device)
    y = y.to(dtype=dtype if regression else torch.int64, device=device)
    return x, y


def apply_init(space: HyperSpace, init: Mapping[str, float] | None) -> None:
    """Overwrite initial hyperparameter values (``space.set``), naming unknown ones clearly."""
    if init:
        space.set(**dict(init))


def optimizer_and_space(kind: str, lr: float, weight_decay: float, momentum: float | None,
                        dtype: torch.dtype, device: torch.device | str | None) -> tuple[SGD | AdamW, HyperSpace]:
    """The inner optimizer with constants equal to the initial values, and the space tuning them.

    ``"sgd"``: SGD tuning log lr and log weight decay, plus logit momentum unless ``momentum``
    is None (then plain gradient descent). ``"adamw"``: AdamW tuning log lr and log weight decay.
    """
    if kind == "sgd":
        opt = SGD(lr=lr, momentum=momentum or 0.0, weight_decay=weight_decay)
        entries = {"lr": Log(lr), "weight_decay": Log(weight_decay)}
        if momentum is not None:
            entries["momentum"] = Logit(momentum)
        return opt, HyperSpace(dtype=dtype, device=device, **entries)
    if kind == "adamw":
        opt = AdamW(lr=lr, weight_decay=weight_decay)
        return opt, HyperSpace(dtype=dtype, device=device, lr=Log(lr), weight_decay=Log(weight_decay))
    raise ValueError(f"optimizer={kind!r}: expected 'sgd' or 'adamw'")
