"""What a user might pick instead of glocal: hypergradient descent, schedule-free and Prodigy.

Each baseline trains the task's own model on the task's own batches (the same seed gives the same
batch order as every other strategy) with a plain torch loop, starting from the task's initial
hyperparameters, and returns the same kind of record part as the online strategies.

* ``hd``: hypergradient descent on the learning rate (Baydin et al. 2018, "Online learning rate
  adaptation with hypergradient descent"): SGD-HD for SGD tasks (momentum and L2 weight decay as
  the task's optimizer), Adam-HD for AdamW tasks. With u_{t-1} = (theta_{t-2} - theta_{t-1}) / lr
  the last update direction, lr_t = lr_{t-1} + beta g_t . u_{t-1}, kept >= 1e-3 x the initial lr.
  beta defaults to the paper's recommendation: 1e-3 for SGD-HD, 1e-7 for Adam-HD.
* ``schedulefree``: ``schedulefree.SGDScheduleFree`` / ``AdamWScheduleFree`` with the task's lr,
  weight decay (and momentum), warm-up 5% of the steps; evaluated in the optimizer's eval mode
  (and with BatchNorm statistics recomputed at the evaluation weights, as its authors advise).
* ``prodigy``: ``prodigyopt.Prodigy`` (lr 1.0, the task's weight decay, decoupled).

The last two need the optional extra ``baselines`` (``pip install glocal[baselines]``).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from glocal.optim import SGD, AdamW

from .tasks.base import Task

BASELINES = ("hd", "schedulefree", "prodigy")
#: Baydin et al. 2018's recommended hypergradient learning rates (their section 5)
HD_BETA = {"sgd": 1e-3, "adamw": 1e-7}
#: schedule-free warm-up, as a fraction of the run
WARMUP_FRACTION = 0.05
#: the optional package each baseline needs
_PACKAGES = {"schedulefree": "schedulefree", "prodigy": "prodigyopt"}

Progress = Callable[[int], None]


class MissingExtra(ImportError):
    """An optional package a baseline needs is not installed (one-line message)."""


def _import(module: str, baseline: str) -> Any:
    """Import an optional package, or raise :class:`MissingExtra` with a one-line message."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"the {baseline} baseline needs the optional extra: pip install 'glocal[baselines]' "
                           f"(package {module})") from None


def _initial(task: Task) -> dict[str, float]:
    """The inner optimizer's hyperparameters at the start (tuned ones from the space, others constants)."""
    values = dict(task.optimizer.defaults())
    for name, value in task.space.to_dict().items():
        if not isinstance(value, float):
            raise ValueError(f"task {task.name!r}: baselines tune the optimizer's hyperparameters; "
                             f"{name!r} is a vector (per-sample or per-class weights)")
        values[name] = value
    return values


def _kind(task: Task) -> str:
    if isinstance(task.optimizer, SGD):
        return "sgd"
    if isinstance(task.optimizer, AdamW):
        return "adamw"
    raise ValueError(f"task {task.name!r}: baselines support SGD and AdamW tasks, got {task.optimizer!r}")


def _loss(task: Task, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
    x, *rest = batch
    if task.indexed_batches:
        raise ValueError(f"task {task.name!r}: baselines do not support per-sample loss weights")
    return task.train_loss(model(x), *rest)


def refresh_batchnorm(model: nn.Module, x: Tensor, chunk: int = 512) -> None:
    """Recompute BatchNorm running statistics at the current weights (cumulative average over ``x``)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    was = model.training
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for start in range(0, len(x), chunk):
            model(x[start:start + chunk])
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.train(was)


class HypergradientDescent:
    """SGD-HD / Adam-HD: the task's differentiable optimizer stepped with a learning rate adapted online."""

    def __init__(self, task: Task, beta: float | None = None, min_factor: float = 1e-3) -> None:
        self.kind = _kind(task)
        self.hparams = _initial(task)
        self.beta = HD_BETA[self.kind] if beta is None else beta
        if not self.beta > 0:
            raise ValueError(f"beta={beta!r}: expected a number > 0")
        self.lr = self.hparams["lr"]
        self.min_lr = min_factor * self.lr
        self.params = [p for p in task.model.parameters() if p.requires_grad]
        self.optimizer = task.optimizer
        self.state = self.optimizer.init(self.params, tuple(self.hparams))
        self.direction: list[Tensor] | None = None
        self.count = 0

    @torch.no_grad()
    def step(self, grads: list[Tensor]) -> None:
        if self.direction is not None:  # h_t = dL(theta_t)/d lr = -g_t . u_{t-1}
            dot = sum(float((g * u).sum()) for g, u in zip(grads, self.direction, strict=True))
            self.lr = max(self.min_lr, self.lr + self.beta * dot)
        self.count += 1
        hparams = {**self.hparams, "lr": self.lr}
        old = [p.detach().clone() for p in self.params]
        new, self.state = self.optimizer.update(tuple(old), self.state, tuple(grads), hparams, self.count)
        self.direction = [(o - n) / self.lr for o, n in zip(old, new, strict=True)]
        for p, n in zip(self.params, new, strict=True):
            p.copy_(n)

    def values(self) -> dict[str, float]:
        return {**{k: v for k, v in self.hparams.items() if k in ("lr", "weight_decay", "momentum")}, "lr": self.lr}


def _make_optimizer(task: Task, name: str) -> tuple[Any, Callable[[], dict[str, float]]]:
    kind = _kind(task)
    h = _initial(task)
    params = [p for p in task.model.parameters() if p.requires_grad]
    if name == "schedulefree":
        sf = _import("schedulefree", name)
        warmup = max(1, round(WARMUP_FRACTION * task.total_steps))
        if kind == "sgd":
            opt = sf.SGDScheduleFree(params, lr=h["lr"], momentum=h["momentum"] or 0.9,
                                     weight_decay=h["weight_decay"], warmup_steps=warmup)
        else:
            opt = sf.AdamWScheduleFree(params, lr=h["lr"], betas=(h["beta1"], h["beta2"]), eps=h["eps"],
                                       weight_decay=h["weight_decay"], warmup_steps=warmup)
        return opt, lambda: {"lr": h["lr"], "weight_decay": h["weight_decay"]}
    with contextlib.redirect_stdout(io.StringIO()):  # Prodigy prints its weight-decay mode
        opt = _import("prodigyopt", name).Prodigy(params, lr=1.0, weight_decay=h["weight_decay"], decouple=True)
    return opt, lambda: {"lr": float(opt.param_groups[0]["d"] * opt.param_groups[0]["lr"]),
                         "weight_decay": h["weight_decay"]}


def check_available(name: str) -> None:
    """Raise :class:`MissingExtra` (one line) when the baseline's package is not installed."""
    if name not in BASELINES:
        raise ValueError(f"baseline {name!r}: expected one of {', '.join(BASELINES)}")
    if name in _PACKAGES:
        _import(_PACKAGES[name], name)


def run_baseline(task: Task, name: str, seed: int, curve_every: int, validation: Callable[[Task], float],
                 progress: Progress | None = None) -> dict[str, Any]:
    """Train ``task`` with baseline ``name`` for ``task.total_steps`` batches; the record part.

    The task's model ends in its evaluation state (schedule-free: the averaged weights).
    """
    check_available(name)
    model = task.model
    model.train()
    hd = HypergradientDescent(task) if name == "hd" else None
    opt, values = (None, hd.values) if hd is not None else _make_optimizer(task, name)
    params = [p for p in model.parameters() if p.requires_grad]
    batches: Iterator[tuple[Tensor, ...]] = task.batches(seed)
    total = task.total_steps
    curve: list[list[float]] = []
    trajectory: list[dict[str, Any]] = [{"step": 0, **values()}]
    compute = 0.0
    skipped = 0

    def evaluate() -> float:
        if name != "schedulefree":
            return validation(task)
        opt.eval()
        refresh_batchnorm(model, task.train[0])
        value = validation(task)
        opt.train()
        return value

    if name == "schedulefree":
        opt.train()
    for step in range(1, total + 1):
        start = time.perf_counter()
        loss = _loss(task, model, next(batches))
        grads = torch.autograd.grad(loss, params)
        if not (torch.isfinite(loss) and all(bool(torch.isfinite(g).all()) for g in grads)):
            skipped += 1  # never apply a non-finite step
        elif hd is not None:
            hd.step(list(grads))
        else:
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            opt.step()
        compute += time.perf_counter() - start
        if step % curve_every == 0 or step == total:
            curve.append([step, evaluate()])
            trajectory.append({"step": step, **values()})
        if progress is not None:
            progress(1)
    if name == "schedulefree":
        opt.eval()
        refresh_batchnorm(model, task.train[0])
    model.eval()
    return {"inner_steps": total, "compute_seconds": compute, "curve": curve, "hparam_trajectory": trajectory,
            "skipped_updates": 0, "skipped_steps": skipped, "fallbacks": 0, "final_hparams": values()}
