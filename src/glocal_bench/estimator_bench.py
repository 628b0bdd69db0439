"""How well does each estimator predict the global hypergradient? (``glocal bench estimator``)

For windows starting at several points t_k of a training run with the hyperparameters held
fixed, the tangents are reset at t_k and carried to the end of the run T, recording
h_j = d L_val(theta_{t_k + j}) / d raw every ``record_every`` steps. The last row is the TRUE
global hypergradient from t_k; the mean of the rows in the last ``average_last`` steps is the
time-averaged target (under minibatches the single-step target is noisy).
Every window length tau uses the first tau / record_every + 1 rows of the same pass, so one
forward pass per start serves all window lengths. Each estimator variant sees only its window.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from glocal.hypergrad import ForwardEngine, PlainEngine
from glocal.koopman import extrapolate

from . import tasks

Variant = Callable[[Tensor, int, int, int], tuple[Tensor, bool]]


def _koopman(**options: Any) -> Variant:
    def estimate(window: Tensor, rows_ahead: int, record_every: int, tau: int) -> tuple[Tensor, bool]:
        result = extrapolate(window, rows_ahead, **options)
        return result.value, result.fell_back

    return estimate


def _capped(steps_scale: Callable[[int, int], float], **options: Any) -> Variant:
    """Affine DMD with eigenvalue moduli capped so that no mode is slower than a given time scale."""

    def estimate(window: Tensor, rows_ahead: int, record_every: int, tau: int) -> tuple[Tensor, bool]:
        cap = math.exp(-record_every / steps_scale(record_every, tau))
        result = extrapolate(window, rows_ahead, max_modulus=cap, **options)
        return result.value, result.fell_back

    return estimate


def _local(window: Tensor, rows_ahead: int, record_every: int, tau: int) -> tuple[Tensor, bool]:
    return window[-1], False


#: the estimator variants compared; "local" is the baseline h_tau
VARIANTS: dict[str, Variant] = {
    "local": _local,
    "paper": _koopman(model="plain", fallback="never"),
    "paper+holdout": _koopman(model="plain"),
    "affine": _koopman(model="affine", fallback="never"),
    "affine+holdout": _koopman(model="affine"),
    "affine+weighted": _koopman(model="affine", fallback="weighted"),
    "affine-cap100": _capped(lambda k, tau: 100.0, fallback="never"),
    "affine-cap100+weighted": _capped(lambda k, tau: 100.0, fallback="weighted"),
}

def _guarded(max_ratio: float, **options: Any) -> Variant:
    """A Koopman variant followed by Glocal's per-coordinate guard against the local value."""
    from glocal.strategies.glocal import guard

    def estimate(window: Tensor, rows_ahead: int, record_every: int, tau: int) -> tuple[Tensor, bool]:
        result = extrapolate(window, rows_ahead, **options)
        if result.fell_back:
            return result.value, True
        return guard(result.value, window[-1], max_ratio)[0], False

    return estimate


VARIANTS["affine+weighted+guard3"] = _guarded(3.0, model="affine", fallback="weighted")

#: records keep per-coordinate estimate, truth and local values up to this many hyperparameters
PER_COORDINATE_LIMIT = 16

#: the variant the Glocal strategy uses by default (chosen from these measurements, docs/benchmarks.md)
DEFAULT_VARIANT = "affine+weighted"

@dataclass(frozen=True)
class Regime:
    """A task in a given training regime, with the window lengths and record spacing to test."""

    task: str
    description: str
    windows: tuple[int, ...] = (100, 200)
    record_every: int = 10
    #: initial learning rate as a fraction of the task's default (hyperparameters are rarely optimal
    #: when tuning starts; at the optimum the global hypergradient is ~0 and relative errors are noise)
    lr_factor: float = 0.1
    steps: int | None = None


#: the regimes of issue 6 (SGD-momentum; add "-adamw" to a task name for the AdamW variant)
REGIMES = {
    "quadratic": Regime("quadratic", "convex, full batch, slow convergence (lr 0.02)", (50, 100), 1, 0.2),
    "logistic-digits": Regime("logistic-digits", "convex, minibatch"),
    "mnist1d-mlp-large": Regime("mnist1d-mlp-large", "MLP, minibatch, no overfitting (20k samples)"),
    "mnist1d-mlp": Regime("mnist1d-mlp", "MLP, minibatch, overfits (3k samples)"),
}


def regime_of(task: str) -> Regime:
    """The regime settings of ``task`` (an AdamW variant shares its SGD task's); others get defaults."""
    base = task.removesuffix("-adamw")
    regime = REGIMES.get(base)
    if regime is None:
        return Regime(task, "custom")
    return Regime(task, regime.description, regime.windows, regime.record_every, regime.lr_factor, regime.steps)


@dataclass
class BenchConfig:
    starts: Sequence[float] = (0.0, 0.25, 0.5, 0.75)
    windows: Sequence[int] = (100, 200)
    record_every: int = 10
    average_last: int = 50
    steps: int | None = None
    seed: int = 0
    init: dict[str, float] | None = None


def _cosine(a: Tensor, b: Tensor) -> float:
    denominator = float(a.norm() * b.norm())
    return float(a @ b) / denominator if denominator > 0 else float("nan")


def _relative_error(estimate: Tensor, truth: Tensor) -> float:
    scale = float(truth.norm())
    return float((estimate - truth).norm()) / scale if scale > 0 else float("nan")


def trajectory_from(task_name: str, start: int, config: BenchConfig) -> tuple[Tensor, int]:
    """h every record_every steps from ``start`` (tangents reset there) to the end; returns (rows, T)."""
    overrides: dict[str, Any] = {"dtype": torch.float64}
    if config.steps is not None:
        overrides["total_steps"] = config.steps
    if config.init:
        overrides["init"] = dict(config.init)
    task = tasks.make(task_name, seed=config.seed, **overrides)
    total = task.total_steps
    batches = task.batches(config.seed)
    plain = PlainEngine(task.model, task.optimizer, task.space, task.train_loss, task.val_loss)
    for _ in range(start):
        plain.step(next(batches))
    engine = ForwardEngine(task.model, task.optimizer, task.space, task.train_loss, task.val_loss)
    engine.load_state_dict(plain.state_dict())  # the optimizer state after `start` plain steps, zero tangents
    rows = [torch.zeros(len(task.space), dtype=torch.float64)]
    for j in range(1, total - start + 1):
        engine.step(next(batches))
        if j % config.record_every == 0:
            rows.append(engine.hypergradient(task.val)[1].to(torch.float64))
    return torch.stack(rows), total


def measure(task_name: str, config: BenchConfig, variants: Sequence[str] | None = None,
            progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """One record per (start, window, variant): cosine and relative error to both targets."""
    names = list(variants or VARIANTS)
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown estimator variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    k = config.record_every
    records = []
    total = None
    for fraction in config.starts:
        probe_total = total or (config.steps or tasks.make(task_name, seed=config.seed).total_steps)
        start = round(fraction * probe_total / k) * k
        started = time.perf_counter()
        rows, total = trajectory_from(task_name, start, config)
        if progress is not None:
            progress(f"{task_name}: start {start}, {len(rows) - 1} records, {time.perf_counter() - started:.1f}s")
        truth = rows[-1]
        last = max(1, config.average_last // k)
        truth_avg = rows[-last:].mean(0)
        for tau in config.windows:
            n = tau // k + 1
            if tau % k or start + tau > total or n < 3:
                continue
            window = rows[:n]
            rows_ahead = (total - start - tau) // k
            for name in names:
                value, fell_back = VARIANTS[name](window, rows_ahead, k, tau)
                value = torch.as_tensor(value, dtype=torch.float64)
                records.append({
                    "task": task_name, "seed": config.seed, "start": start, "window": tau, "variant": name,
                    "fell_back": bool(fell_back),
                    "cosine": _cosine(value, truth), "relative_error": _relative_error(value, truth),
                    "cosine_avg": _cosine(value, truth_avg), "relative_error_avg": _relative_error(value, truth_avg),
                    "local_truth_gap": _relative_error(window[-1], truth),
                })
                if len(truth) <= PER_COORDINATE_LIMIT:  # per-coordinate values for the sign/magnitude diagnosis
                    records[-1].update(estimate=value.tolist(), truth=truth.tolist(), truth_avg=truth_avg.tolist(),
                                       local=window[-1].tolist())
    return records


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    values = sorted(v for v in values if math.isfinite(v))
    if not values:
        return (math.nan,) * 3  # type: ignore[return-value]
    if len(values) < 4:
        median = statistics.median(values)
        return values[0], median, values[-1]
    q1, q2, q3 = statistics.quantiles(values, n=4)
    return q1, q2, q3


def _window_key(record: dict[str, Any]) -> tuple[Any, ...]:
    return record["task"], record.get("seed", 0), record["start"], record["window"]


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (task, variant): quartiles of cosine and relative error, and the fraction of windows in
    which the variant's relative error is below the local value's (both targets)."""
    local = {_window_key(r): r for r in records if r["variant"] == "local"}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["task"], r["variant"]), []).append(r)
    rows = []
    for (task, variant), group in groups.items():
        row: dict[str, Any] = {"task": task, "variant": variant, "windows": len(group)}
        for key in ("cosine", "relative_error", "cosine_avg", "relative_error_avg"):
            row[key] = _quartiles([g[key] for g in group])
        beats = [g["relative_error"] < local[_window_key(g)]["relative_error"] for g in group]
        beats_avg = [g["relative_error_avg"] < local[_window_key(g)]["relative_error_avg"] for g in group]
        row["beats_local"] = sum(beats) / len(beats)
        row["beats_local_avg"] = sum(beats_avg) / len(beats_avg)
        row["fallbacks"] = sum(g["fell_back"] for g in group) / len(group)
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    def q(t: tuple[float, float, float]) -> str:
        return f"{t[1]:.3g} [{t[0]:.3g}, {t[2]:.3g}]"

    def c(t: tuple[float, float, float]) -> str:  # cosines near 1 need more digits
        return f"{t[1]:.5f} [{t[0]:.4f}, {t[2]:.4f}]"

    lines = ["| task | variant | windows | cosine to H_T | rel. error to H_T | beats local | "
             "cosine to mean H | rel. error to mean H | beats local (mean) | fallbacks |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['variant']} | {r['windows']} | {c(r['cosine'])} | {q(r['relative_error'])} "
                     f"| {r['beats_local']:.2f} | {c(r['cosine_avg'])} | {q(r['relative_error_avg'])} "
                     f"| {r['beats_local_avg']:.2f} | {r['fallbacks']:.2f} |")
    return "\n".join(lines) + "\n"
