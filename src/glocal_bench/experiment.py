"""One tuning run of a registered task with a named strategy, as a result record.

This is what ``glocal run``, ``compare`` and ``demo`` execute. A record holds the final metrics,
the cost (all inner steps executed, restarts included, wall time and CPU time), the final
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

from glocal import defaults
from glocal.outer import Global
from glocal.records import Listener, Record, step_record, val_record, window_record
from glocal.strategies import Fixed, Glocal, Local
from glocal.tuner import Tuner

from . import baselines, parallel, tasks
from .tasks.base import Task

STRATEGIES = ("fixed", "local", "glocal", "global", "grid", "hd", "schedulefree", "prodigy")
#: strategies that are not glocal's: plain torch loops over the same model and batches (baselines.py)
BASELINES = ("hd", "schedulefree", "prodigy")

#: outer steps on phi (``glocal.defaults.hyper_optimizer``)
HYPER_OPTIMIZERS = ("relative", "sgd", "adam")

Progress = Callable[[int], None]
#: called with (inner step, validation loss) at every curve point of an online run; may raise to stop
CurveHook = Callable[[int, float], None]


@dataclass
class Checkpointing:
    """Resumable online runs: ``save(state)`` is called at window ends, every ``every_windows`` windows,
    with everything needed to continue the run (the Tuner's state and the record built so far); a run
    given that ``state`` continues from it and ends exactly as the uninterrupted run (timings aside).
    ``global`` and ``grid`` runs are not saved part-way: they restart (deterministically).
    """

    save: Callable[[dict[str, Any]], None]
    every_windows: int = 1
    state: dict[str, Any] | None = None


@dataclass
class Settings:
    """How a strategy is run; the defaults are what ``glocal compare`` uses."""

    window: int = defaults.WINDOW
    record_every: int | None = None
    hyper_lr: float = defaults.HYPER_LR
    hyper_optimizer: str = defaults.HYPER_OPTIMIZER
    clip_norm: float | None = defaults.CLIP_NORM
    #: RelativeSGD's per-coordinate trust region per window (hyper_optimizer "relative")
    max_step: float = defaults.MAX_STEP
    #: RelativeSGD's per-coordinate rate adaptation (grow, shrink) and its largest rate
    hyper_etas: tuple[float, float] | None = defaults.HYPER_ETAS
    #: None: RelativeSGD's default, 2 x hyper_lr
    max_rate: float | None = None
    #: Glocal's per-coordinate guard against the local value (None: off)
    max_ratio: float | None = defaults.MAX_RATIO
    #: other ``glocal.Glocal`` options (e.g. ``{"disagree": "zero"}``), for experiments
    glocal_options: dict[str, Any] = field(default_factory=dict)
    #: other ``glocal.Local`` options (e.g. ``{"anchor": "run"}``), for experiments
    local_options: dict[str, Any] = field(default_factory=dict)
    steps: int | None = None
    outer_steps: int = defaults.OUTER_STEPS
    init: dict[str, float] = field(default_factory=dict)
    koopman: dict[str, Any] = field(default_factory=dict)
    curve_points: int = 20
    compile: bool = False
    #: records between window ends use the first this many validation samples (None: all of them)
    record_val_size: int | None = None

    def validate(self, total_steps: int) -> None:
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"--steps={self.steps}: expected a positive number of steps")
        if not 1 <= self.window <= total_steps:
            raise ValueError(f"--window={self.window}: expected 1..{total_steps} (the run's total steps)")
        if not (self.hyper_lr > 0 and math.isfinite(self.hyper_lr)):
            raise ValueError(f"--hyper-lr={self.hyper_lr}: expected a finite number > 0")
        if self.hyper_optimizer not in HYPER_OPTIMIZERS:
            raise ValueError(f"--hyper-optimizer={self.hyper_optimizer!r}: expected one of "
                             f"{', '.join(HYPER_OPTIMIZERS)}")
        if self.outer_steps < 1:
            raise ValueError(f"--outer-steps={self.outer_steps}: expected an integer >= 1")
        if self.record_val_size is not None and self.record_val_size < 1:
            raise ValueError(f"--record-val-size={self.record_val_size}: expected a positive number of samples")


def build_task(name: str, seed: int, settings: Settings) -> Task:
    overrides: dict[str, Any] = {}
    if settings.steps is not None:
        overrides["total_steps"] = settings.steps
    if settings.init:
        overrides["init"] = dict(settings.init)
    return tasks.make(name, seed=seed, **overrides)


def _hyper_optimizer(task: Task, settings: Settings) -> torch.optim.Optimizer:
    return defaults.hyper_optimizer(task.space.raw, settings.hyper_optimizer, settings.hyper_lr, settings.max_step,
                                     settings.hyper_etas, settings.max_rate)


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


def _shifted(listener: Listener | None, offset: int) -> list[Listener]:
    """``listener`` receiving records with steps counted from ``offset`` (runs after restarts)."""
    if listener is None:
        return []
    if offset == 0:
        return [listener]

    def forward(record: Record) -> None:
        listener(record.shifted(offset))

    return [forward]


def _online(task: Task, strategy_name: str, settings: Settings, seed: int, progress: Progress | None,
            on_curve: CurveHook | None = None, checkpointing: Checkpointing | None = None,
            on_record: Listener | None = None, offset: int = 0) -> dict[str, Any]:
    total = task.total_steps
    if strategy_name == "fixed":
        strategy: Any = Fixed()
    elif strategy_name == "local":
        strategy = Local(window=settings.window, mode=task.mode, **settings.local_options)
    else:
        strategy = Glocal(window=settings.window, total_steps=total, record_every=settings.record_every,
                          mode=task.mode, koopman=dict(settings.koopman), max_ratio=settings.max_ratio,
                          **settings.glocal_options)
    hyper = None if strategy_name == "fixed" else _hyper_optimizer(task, settings)
    record_val = None
    if settings.record_val_size is not None and settings.record_val_size < len(task.val[0]):
        record_val = parallel.shard_validation(tuple(t[:settings.record_val_size] for t in task.val))
    # under torchrun every rank trains on its shard of each batch (identity in one process)
    tuner = Tuner(task.model, task.optimizer, task.space, task.train_loss, task.val_loss, strategy, hyper,
                  val=parallel.shard_validation(task.val), clip_norm=settings.clip_norm, compile=settings.compile,
                  record_val=record_val, listeners=_shifted(on_record, offset))
    batches = parallel.shard_batches(task.batches(seed))
    every = _curve_every(total, settings)
    curve: list[list[float]] = []
    trajectory: list[dict[str, Any]] = [{"step": 0, **_compact_hparams(task.space.to_dict())}]
    compute = 0.0
    first = 1
    resume = checkpointing.state if checkpointing is not None else None
    if resume is not None:
        tuner.load_state_dict(resume["tuner"])
        curve, trajectory, compute, first = resume["curve"], resume["trajectory"], resume["compute"], resume["step"] + 1
        for _ in range(resume["step"]):  # the batch order is a function of the seed: replay it
            next(batches)
        if progress is not None:
            progress(resume["step"])
    period = settings.window * (checkpointing.every_windows if checkpointing is not None else 0)
    saved = first - 1
    stall = resume["stall"] if resume is not None else {"run": 0, "windows": 0}
    for step in range(first, total + 1):
        start = time.perf_counter()
        record = tuner.step(next(batches))
        compute += time.perf_counter() - start
        stall["run"] = stall["run"] + 1 if record.get("skipped") or record.get("diverged") else 0
        if stall["run"] == settings.window:  # a whole window without one applied, non-divergent step
            stall.update(run=0, windows=stall["windows"] + 1)
        if record["updated"]:
            trajectory.append({"step": step, **_compact_hparams(task.space.to_dict())})
        if step % every == 0 or step == total:
            curve.append([step, validation_loss(task)])
            if on_curve is not None:
                on_curve(step, curve[-1][1])
        if progress is not None:
            progress(1)
        if (checkpointing is not None and step < total and step - saved >= period
                and (tuner.strategy.window == 0 or tuner.steps_in_window == 0)):
            checkpointing.save({"step": step, "tuner": tuner.state_dict(), "curve": curve,
                                "trajectory": trajectory, "compute": compute, "stall": stall})
            saved = step
    windows = [_compact_window({k: w.get(k) for k in ("start", "end", "local", "estimate", "fell_back", "reason",
                                                      "skipped", "at_bound") if k != "at_bound" or k in w})
               for w in tuner.history.windows]
    return {"inner_steps": total, "compute_seconds": compute, "curve": curve, "hparam_trajectory": trajectory,
            "skipped_updates": tuner.skipped_updates, "skipped_steps": tuner.skipped_steps,
            "stalled_windows": stall["windows"], "bound_hits": _bound_hits(tuner.history.windows),
            "divergences": tuner.divergences, "reverted_updates": tuner.reverted_updates,
            "restored_faults": tuner.restored_faults, "fallbacks": tuner.fallbacks, "windows": windows}


def _bound_hits(windows: list[dict[str, Any]]) -> dict[str, int]:
    """Per hyperparameter, the number of windows whose update was stopped at one of its bounds."""
    hits: dict[str, int] = {}
    for w in windows:
        for name in w.get("at_bound") or {}:
            hits[name] = hits.get(name, 0) + 1
    return hits


def _global(task: Task, settings: Settings, seed: int, progress: Progress | None,
            on_record: Listener | None = None) -> dict[str, Any]:
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
        if on_record is not None:  # records at inner steps executed, restarts included
            on_record(step_record(counter["steps"], record["train_loss"], skipped=bool(record.get("skipped"))))
            if "val_loss" in record:
                on_record(val_record(counter["steps"], record["val_loss"]))
            if record["updated"]:
                on_record(window_record(counter["steps"], task.space, {"hparams": task.space.to_dict()}))
        if progress is not None:
            progress(1)

    start = time.perf_counter()
    result = Global(outer_steps=settings.outer_steps, mode=task.mode).run(
        task.model, task.optimizer, task.space, task.train_loss, task.val_loss,
        lambda: parallel.shard_batches(task.batches(seed)), total, parallel.shard_validation(task.val),
        _hyper_optimizer(task, settings), settings.clip_norm, on_step, compile=settings.compile,
    )
    return {"inner_steps": result.inner_steps, "compute_seconds": time.perf_counter() - start, "curve": curve,
            "hparam_trajectory": trajectory, "skipped_updates": result.skipped_updates, "fallbacks": 0,
            "outer": result.outer}


def _grid(name: str, seed: int, settings: Settings, progress: Progress | None,
          on_record: Listener | None = None) -> tuple[Task, dict[str, Any]]:
    probe = build_task(name, seed, settings)
    configurations = probe.grid_configurations()
    best: tuple[float, Task, dict[str, Any]] | None = None
    inner = 0
    compute = 0.0
    tried = []
    for config in configurations:
        task = build_task(name, seed, Settings(**{**asdict(settings), "init": {**settings.init, **config}}))
        part = _online(task, "fixed", settings, seed, progress, on_record=on_record, offset=inner)
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
        progress: Progress | None = None, on_curve: CurveHook | None = None,
        checkpointing: Checkpointing | None = None, on_record: Listener | None = None) -> dict[str, Any]:
    """Run ``strategy`` on task ``name`` and return its result record (see module docstring).

    ``on_curve(step, val_loss)`` (fixed/local/glocal only) is called at every curve point; an
    exception it raises stops the run and propagates (used by ``glocal_bench.search`` to prune).
    ``checkpointing`` (fixed/local/glocal only) saves the run at window ends and resumes it.
    ``on_record`` receives the run's ``glocal.records.Record`` s, steps counted as inner steps
    executed (grid configurations and global's restarts follow each other).
    """
    settings = settings or Settings()
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    started, cpu_started = time.perf_counter(), time.process_time()
    # the global RNG (dropout, random augmentation) starts from the seed in every run, so that a run
    # does not depend on the runs before it in the process (a resumed compare skips those)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if strategy == "grid":
            task, part = _grid(name, seed, settings, progress, on_record)
        elif strategy in BASELINES:
            task = build_task(name, seed, settings)
            part = baselines.run_baseline(task, strategy, seed, _curve_every(task.total_steps, settings),
                                          validation_loss, progress)
        else:
            task = build_task(name, seed, settings)
            settings.validate(task.total_steps)
            part = _global(task, settings, seed, progress, on_record) if strategy == "global" else _online(
                task, strategy, settings, seed, progress, on_curve, checkpointing, on_record)
    metrics = task.evaluate()
    record: dict[str, Any] = {
        "task": name,
        "strategy": strategy,
        "seed": seed,
        "final_val_loss": metrics["val_loss"],
        "test_loss": metrics["test_loss"],
        "wall_seconds": time.perf_counter() - started,
        # CPU seconds of this process: unlike wall time, not inflated by other jobs on a shared machine
        "cpu_seconds": time.process_time() - cpu_started,
        "hparams": part.pop("final_hparams", None) or task.space.to_dict(),
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
