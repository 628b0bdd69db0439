"""One tuning run of a registered task with a named strategy, as a result record.

This is what ``glocal run``, ``compare`` and ``demo`` execute. A record holds the final metrics,
the cost (all inner steps executed, restarts included, and wall time), the final
hyperparameters, the validation-loss curve against inner steps executed, the hyperparameter
trajectory and, for online strategies, the per-window local and used hypergradients.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from glocal.outer import Global
from glocal.strategies import Fixed, Glocal, Local
from glocal.tuner import Tuner

from . import tasks
from .tasks.base import Task

STRATEGIES = ("fixed", "local", "glocal", "global", "grid")

Progress = Callable[[int], None]
#: called with (inner step, validation loss) at every curve point of an online run; may raise to stop
CurveHook = Callable[[int, float], None]


@dataclass
class Settings:
    """How a strategy is run; the defaults are what ``glocal compare`` uses."""

    window: int = 100
    record_every: int | None = None
    hyper_lr: float = 1.0
    hyper_optimizer: str = "sgd"
    clip_norm: float | None = 1.0
    steps: int | None = None
    outer_steps: int = 4
    init: dict[str, float] = field(default_factory=dict)
    koopman: dict[str, Any] = field(default_factory=dict)
    curve_points: int = 20
    compile: bool = False

    def validate(self, total_steps: int) -> None:
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"--steps={self.steps}: expected a positive number of steps")
        if not 1 <= self.window <= total_steps:
            raise ValueError(f"--window={self.window}: expected 1..{total_steps} (the run's total steps)")
        if not (self.hyper_lr > 0 and math.isfinite(self.hyper_lr)):
            raise ValueError(f"--hyper-lr={self.hyper_lr}: expected a finite number > 0")
        if self.hyper_optimizer not in ("sgd", "adam"):
            raise ValueError(f"--hyper-optimizer={self.hyper_optimizer!r}: expected 'sgd' or 'adam'")
        if self.outer_steps < 1:
            raise ValueError(f"--outer-steps={self.outer_steps}: expected an integer >= 1")


def build_task(name: str, seed: int, settings: Settings) -> Task:
    overrides: dict[str, Any] = {}
    if settings.steps is not None:
        overrides["total_steps"] = settings.steps
    if settings.init:
        overrides["init"] = dict(settings.init)
    return tasks.make(name, seed=seed, **overrides)


def _hyper_optimizer(task: Task, settings: Settings) -> torch.optim.Optimizer:
    if settings.hyper_optimizer == "adam":
        return torch.optim.Adam([task.space.raw], lr=settings.hyper_lr)
    return torch.optim.SGD([task.space.raw], lr=settings.hyper_lr)


def validation_loss(task: Task) -> float:
    """The task's validation loss of its model (eval mode, no gradient): the curve's y values."""
    model = task.model
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return float(task.val_loss(model(task.val[0]), task.val[1]))
    finally:
        model.train(was)


#: per-step and per-window records keep vectors up to this length; longer ones (per-sample weights,
#: thousands of entries) are summarised so that result files stay small
VECTOR_LIMIT = 64


def _summary(values: list[float]) -> dict[str, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return {"mean": float(t.mean()), "min": float(t.min()), "max": float(t.max()), "norm": float(t.norm())}


def _compact_hparams(values: dict[str, Any]) -> dict[str, Any]:
    """``space.to_dict()`` with vectors longer than ``VECTOR_LIMIT`` replaced by their summary."""
    return {k: _summary(v) if isinstance(v, list) and len(v) > VECTOR_LIMIT else v for k, v in values.items()}


def _compact_window(window: dict[str, Any]) -> dict[str, Any]:
    """A window record whose local/estimate vectors longer than ``VECTOR_LIMIT`` become norms and a cosine."""
    local, estimate = window.get("local"), window.get("estimate")
    if not (isinstance(local, list) and len(local) > VECTOR_LIMIT):
        return window
    a = torch.tensor(local, dtype=torch.float64)
    b = torch.tensor(estimate, dtype=torch.float64) if isinstance(estimate, list) else a
    cosine = float(torch.nn.functional.cosine_similarity(a, b, dim=0)) if a.norm() > 0 and b.norm() > 0 else None
    out = {k: v for k, v in window.items() if k not in ("local", "estimate")}
    out.update(local_norm=float(a.norm()), estimate_norm=float(b.norm()), estimate_local_cosine=cosine)
    return out


def _curve_every(total: int, settings: Settings) -> int:
    return max(1, total // max(1, settings.curve_points))


def _online(task: Task, strategy_name: str, settings: Settings, seed: int, progress: Progress | None,
            on_curve: CurveHook | None = None) -> dict[str, Any]:
    total = task.total_steps
    if strategy_name == "fixed":
        strategy: Any = Fixed()
    elif strategy_name == "local":
        strategy = Local(window=settings.window, mode=task.mode)
    else:
        strategy = Glocal(window=settings.window, total_steps=total, record_every=settings.record_every,
                          mode=task.mode, koopman=dict(settings.koopman))
    hyper = None if strategy_name == "fixed" else _hyper_optimizer(task, settings)
    tuner = Tuner(task.model, task.optimizer, task.space, task.train_loss, task.val_loss, strategy, hyper,
                  val=task.val, clip_norm=settings.clip_norm, compile=settings.compile)
    batches = task.batches(seed)
    every = _curve_every(total, settings)
    curve: list[list[float]] = []
    trajectory: list[dict[str, Any]] = [{"step": 0, **_compact_hparams(task.space.to_dict())}]
    compute = 0.0
    for step in range(1, total + 1):
        start = time.perf_counter()
        record = tuner.step(next(batches))
        compute += time.perf_counter() - start
        if record["updated"]:
            trajectory.append({"step": step, **_compact_hparams(task.space.to_dict())})
        if step % every == 0 or step == total:
            curve.append([step, validation_loss(task)])
            if on_curve is not None:
                on_curve(step, curve[-1][1])
        if progress is not None:
            progress(1)
    windows = [_compact_window({k: w.get(k) for k in ("start", "end", "local", "estimate", "fell_back", "reason",
                                                      "skipped")}) for w in tuner.history.windows]
    return {"inner_steps": total, "compute_seconds": compute, "curve": curve, "hparam_trajectory": trajectory,
            "skipped_updates": tuner.skipped_updates, "skipped_steps": tuner.skipped_steps,
            "divergences": tuner.divergences, "reverted_updates": tuner.reverted_updates,
            "fallbacks": tuner.fallbacks, "windows": windows}


def _global(task: Task, settings: Settings, seed: int, progress: Progress | None) -> dict[str, Any]:
    total = task.total_steps
    every = _curve_every(total, settings)
    curve: list[list[float]] = []
    trajectory: list[dict[str, Any]] = [{"step": 0, **_compact_hparams(task.space.to_dict())}]
    counter = {"steps": 0}

    def on_step(outer: int, record: dict[str, Any]) -> None:
        counter["steps"] += 1
        if record["step"] % every == 0 or record["step"] == total:
            curve.append([counter["steps"], validation_loss(task)])
        if record["updated"]:
            trajectory.append({"step": counter["steps"], **_compact_hparams(task.space.to_dict())})
        if progress is not None:
            progress(1)

    start = time.perf_counter()
    result = Global(outer_steps=settings.outer_steps, mode=task.mode).run(
        task.model, task.optimizer, task.space, task.train_loss, task.val_loss, lambda: task.batches(seed), total,
        task.val, _hyper_optimizer(task, settings), settings.clip_norm, on_step, compile=settings.compile,
    )
    return {"inner_steps": result.inner_steps, "compute_seconds": time.perf_counter() - start, "curve": curve,
            "hparam_trajectory": trajectory, "skipped_updates": result.skipped_updates, "fallbacks": 0,
            "outer": result.outer}


def _grid(name: str, seed: int, settings: Settings, progress: Progress | None) -> tuple[Task, dict[str, Any]]:
    probe = build_task(name, seed, settings)
    configurations = probe.grid_configurations()
    best: tuple[float, Task, dict[str, Any]] | None = None
    inner = 0
    compute = 0.0
    tried = []
    for config in configurations:
        task = build_task(name, seed, Settings(**{**asdict(settings), "init": {**settings.init, **config}}))
        part = _online(task, "fixed", settings, seed, progress)
        inner += part["inner_steps"]
        compute += part["compute_seconds"]
        val_loss = validation_loss(task)
        tried.append({"hparams": config, "final_val_loss": val_loss})
        if best is None or val_loss < best[0] or not math.isfinite(best[0]):
            best = (val_loss, task, part)
    assert best is not None
    _, task, part = best
    part.update(inner_steps=inner, compute_seconds=compute, grid=tried)
    return task, part


def run(name: str, strategy: str, seed: int = 0, settings: Settings | None = None,
        progress: Progress | None = None, on_curve: CurveHook | None = None) -> dict[str, Any]:
    """Run ``strategy`` on task ``name`` and return its result record (see module docstring).

    ``on_curve(step, val_loss)`` (fixed/local/glocal only) is called at every curve point; an
    exception it raises stops the run and propagates (used by ``glocal_bench.search`` to prune).
    """
    settings = settings or Settings()
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    started = time.perf_counter()
    if strategy == "grid":
        task, part = _grid(name, seed, settings, progress)
    else:
        task = build_task(name, seed, settings)
        settings.validate(task.total_steps)
        part = _global(task, settings, seed, progress) if strategy == "global" else _online(
            task, strategy, settings, seed, progress, on_curve)
    metrics = task.evaluate()
    record: dict[str, Any] = {
        "task": name,
        "strategy": strategy,
        "seed": seed,
        "final_val_loss": metrics["val_loss"],
        "test_loss": metrics["test_loss"],
        "wall_seconds": time.perf_counter() - started,
        "hparams": task.space.to_dict(),
        "total_steps": task.total_steps,
    }
    for key in ("test_accuracy", "balanced_test_accuracy", "val_accuracy"):
        if key in metrics:
            record[key] = metrics[key]
    record.update(task.extra_metrics())  # task-specific metrics (e.g. weights of corrupted samples)
    record.update(part)
    record["settings"] = {k: v for k, v in asdict(settings).items() if k != "curve_points"}
    return record


def planned_steps(name: str, strategy: str, settings: Settings, seed: int = 0) -> int:
    """Inner steps a run will execute (for progress bars)."""
    task = build_task(name, seed, settings)
    if strategy == "global":
        return task.total_steps * (settings.outer_steps + 1)
    if strategy == "grid":
        return task.total_steps * len(task.grid_configurations())
    return task.total_steps
