"""One record format for what happens during tuning, consumed by any logger.

The Tuner (and the drop-in optimizers) call their listeners with a :class:`Record` at each event:

* ``"step"`` after every training step: ``train/loss`` when known (``train/skipped``,
  ``train/diverged`` = 1 when the step was not applied or judged divergent);
* ``"val"`` at every record point of a window: ``val/loss``;
* ``"window"`` at every window's end: ``hparams/<name>`` (the values after the update),
  ``hypergrad_local/<name>`` (the last local hypergradient of the window), ``hypergrad_used/<name>``
  (what the hyper-optimizer received, after the strategy's estimate and clipping),
  ``hypergrad/norm`` (before clipping), ``window/fell_back`` and ``window/skipped`` (0 or 1), and the
  estimator's numeric diagnostics as ``estimator/<key>`` (rank, residual, hold-out errors, ...);
* ``"revert"`` when a divergence undid the last hyperparameter update: ``window/reverted`` = 1.

``scalars`` is flat (tag -> float), ready for ``SummaryWriter.add_scalar``, Lightning's
``logger.log_metrics`` or a CSV row; ``details`` keeps everything else (full vectors, the fallback
reason). Vector hyperparameters longer than ``VECTOR_LIMIT`` are summarised (mean/min/max/norm).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from .space import HyperSpace

__all__ = ["KINDS", "VECTOR_LIMIT", "Listener", "Record", "emit", "revert_record", "step_record", "val_record",
           "window_record"]

KINDS = ("step", "val", "window", "revert")
#: vectors up to this length are logged element by element (``name[i]``), longer ones summarised
VECTOR_LIMIT = 16


@dataclass(frozen=True)
class Record:
    """One event: its kind (see ``KINDS``), the training step it belongs to, scalars and details."""

    kind: str
    step: int
    scalars: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)

    def shifted(self, offset: int) -> Record:
        """The same record at ``step + offset`` (e.g. inner steps counted across restarts)."""
        return replace(self, step=self.step + offset)


#: anything that consumes records: a function, a bound method, a logger adapter
Listener = Callable[[Record], None]


def step_record(step: int, train_loss: float, *, skipped: bool = False, diverged: bool = False) -> Record:
    """A training step; a NaN loss means "not known" (a drop-in optimizer stepped without a closure)."""
    scalars = {} if math.isnan(train_loss) else {"train/loss": float(train_loss)}
    if skipped:
        scalars["train/skipped"] = 1.0
    if diverged:
        scalars["train/diverged"] = 1.0
    return Record("step", step, scalars)


def val_record(step: int, val_loss: float) -> Record:
    return Record("val", step, {"val/loss": float(val_loss)})


def _named(prefix: str, space: HyperSpace, values: Sequence[float] | torch.Tensor) -> dict[str, float]:
    """``prefix/name`` per hyperparameter from a raw-ordered vector (vectors per element or summarised)."""
    flat = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    out: dict[str, float] = {}
    for name in space.names:
        part = flat[space.slice_of(name)]
        out.update(_expand(f"{prefix}/{name}", part, scalar=space.values()[name].dim() == 0))
    return out


def _expand(tag: str, part: torch.Tensor, scalar: bool) -> dict[str, float]:
    if scalar:
        return {tag: float(part.reshape(()))}
    if part.numel() <= VECTOR_LIMIT:
        return {f"{tag}[{i}]": float(v) for i, v in enumerate(part.tolist())}
    return {f"{tag}/mean": float(part.mean()), f"{tag}/min": float(part.min()), f"{tag}/max": float(part.max()),
            f"{tag}/norm": float(part.norm())}


def _hparam_scalars(space: HyperSpace, hparams: Mapping[str, float | list[float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, value in hparams.items():
        part = torch.as_tensor(value, dtype=torch.float64).reshape(-1)
        out.update(_expand(f"hparams/{name}", part, scalar=not isinstance(value, list)))
    return out


def _diagnostic_scalars(diagnostics: Mapping[str, Any]) -> dict[str, float]:
    """Numeric estimator diagnostics; a list (eigenvalue moduli) is logged as its maximum."""
    out: dict[str, float] = {}
    for key, value in diagnostics.items():
        if isinstance(value, bool):
            out[f"estimator/{key}"] = float(value)
        elif isinstance(value, int | float):
            if math.isfinite(float(value)):
                out[f"estimator/{key}"] = float(value)
        elif isinstance(value, list | tuple) and value and all(isinstance(v, int | float) for v in value):
            out[f"estimator/{key}_max"] = float(max(value))
    return out


def window_record(step: int, space: HyperSpace, entry: Mapping[str, Any]) -> Record:
    """The record of one window's end from the Tuner's window entry (``tuner.history.windows[-1]``)."""
    scalars: dict[str, float] = {}
    if entry.get("hparams") is not None:
        scalars.update(_hparam_scalars(space, entry["hparams"]))
    if entry.get("local") is not None:
        scalars.update(_named("hypergrad_local", space, entry["local"]))
    if entry.get("used") is not None:
        scalars.update(_named("hypergrad_used", space, entry["used"]))
    if entry.get("norm") is not None and math.isfinite(entry["norm"]):
        scalars["hypergrad/norm"] = float(entry["norm"])
    scalars["window/fell_back"] = float(bool(entry.get("fell_back")))
    scalars["window/skipped"] = float(bool(entry.get("skipped")))
    scalars.update(_diagnostic_scalars(entry.get("diagnostics") or {}))
    details = {k: entry[k] for k in ("start", "end", "local", "estimate", "used", "reason", "diagnostics")
               if k in entry}
    return Record("window", step, scalars, details)


def revert_record(step: int) -> Record:
    return Record("revert", step, {"window/reverted": 1.0})


def emit(listeners: Sequence[Listener], record: Record) -> None:
    """Call every listener with ``record`` (in order)."""
    for listener in listeners:
        listener(record)
