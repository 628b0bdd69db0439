"""The online loop: ``Tuner.step`` trains one batch and updates phi at window ends.

Data flow of one step: batch -> engine step (theta, s and their tangents) -> every
``record_every`` steps h_j = grad L_val . Z_theta into the window buffer -> at the window's end
the strategy turns the buffer into a hypergradient -> clip -> ``space.raw.grad`` ->
``hyper_optimizer.step()`` -> tangents reset. A non-finite hypergradient is skipped and counted.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from . import defaults
from .hypergrad import ForwardEngine, PlainEngine, ReverseEngine
from .hypergrad.engine import Engine, Validation
from .hypergrad.functional import Batch, LossFn
from .optim.base import InnerOptimizer
from .space import HyperSpace
from .strategies.base import Strategy, WindowEstimate


@dataclass
class History:
    """What happened: per step training losses, per record validation losses, per window updates."""

    train_loss: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    windows: list[dict[str, Any]] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.__dict__)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__dict__.update(copy.deepcopy(state))


class Tuner:
    """Tunes ``space`` while training ``model`` in the user's own loop.

    ``tuner.step(train_batch, val_batch)`` once per batch trains the model in place (evaluate it
    as usual), records local hypergradients and, at each window's end, writes the strategy's
    hypergradient into ``space.raw.grad`` and steps ``hyper_optimizer`` (any ``torch.optim``
    optimizer over ``[space.raw]``; default: ``glocal.defaults.hyper_optimizer``). A hyper-optimizer
    with a ``set_reference(param, local)`` method (``glocal.hyperopt.RelativeSGD``) is also given the
    window's local hypergradient before each step. ``val_batch`` may be omitted when ``val`` (a fixed
    batch or a callable returning one) was given here.

    Failures never corrupt the model or phi: a step whose loss or new parameters are not finite is
    not applied, and a training loss above ``divergence_factor`` times the previous window's mean
    counts as divergence; either undoes the last phi update and restores the model and inner
    optimizer state saved when it was made (counted in ``skipped_steps``, ``divergences`` and
    ``reverted_updates``). ``compile=True`` runs the
    forward-mode step through ``torch.compile`` (2.4-2.6x faster at batch 128 after a cold compile
    of ~10-17 s; SGD/AdamW, models without buffers; see docs/benchmarks.md).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: InnerOptimizer,
        space: HyperSpace,
        train_loss: LossFn,
        val_loss: LossFn,
        strategy: Strategy,
        hyper_optimizer: torch.optim.Optimizer | None = None,
        *,
        val: Validation | None = None,
        clip_norm: float | None = defaults.CLIP_NORM,
        compile: bool = False,
        divergence_factor: float | None = 100.0,
    ) -> None:
        if divergence_factor is not None and not (divergence_factor > 1 and math.isfinite(divergence_factor)):
            raise ValueError(f"divergence_factor={divergence_factor!r}: expected a finite number > 1, or None")
        if clip_norm is not None and not (clip_norm > 0 and math.isfinite(clip_norm)):
            raise ValueError(f"clip_norm={clip_norm!r}: expected a finite number > 0, or None for no clipping")
        for name in ("window", "record_every", "mode", "estimate"):
            if not hasattr(strategy, name):
                raise ValueError(f"strategy: expected a glocal strategy (Fixed, Local, Glocal), got {strategy!r}")
        self.model = model
        self.space = space
        self.strategy = strategy
        self.val = val
        self.clip_norm = clip_norm
        self.divergence_factor = divergence_factor
        engine_type = {"plain": PlainEngine, "forward": ForwardEngine, "reverse": ReverseEngine}[strategy.mode]
        if compile and strategy.mode == "forward":  # opt-in: torch.compile'd step (limits in its docstring)
            from .hypergrad.compiled import CompiledForwardEngine

            engine_type = CompiledForwardEngine
        self.engine: Engine = engine_type(model, optimizer, space, train_loss, val_loss)
        if strategy.window > 0:
            if hyper_optimizer is None:
                hyper_optimizer = defaults.hyper_optimizer(space.raw)
            if not any(p is space.raw for g in hyper_optimizer.param_groups for p in g["params"]):
                raise ValueError("hyper_optimizer: it must optimize space.raw, e.g. torch.optim.Adam([space.raw])")
        self.hyper_optimizer = hyper_optimizer
        self.history = History()
        self.step_count = 0
        self.steps_in_window = 0
        self.buffer: list[Tensor] = []
        self.skipped_updates = 0
        self.fallbacks = 0
        self.reverted_updates = 0
        #: steps after which training was judged divergent (loss > divergence_factor x the last window's)
        self.divergences = 0
        self._reference_loss: float | None = None
        self._raw_before_update: Tensor | None = None
        self._snapshot: tuple[tuple[Tensor, ...], tuple[Tensor, ...], tuple[Tensor, ...]] | None = None

    # -- reading -----------------------------------------------------------------------------
    @property
    def hparams(self) -> dict[str, float | list[float]]:
        """Current constrained hyperparameter values."""
        return self.space.to_dict()

    # -- the loop --------------------------------------------------------------------------
    def step(self, train_batch: Batch, val_batch: Validation | None = None) -> dict[str, Any]:
        """Train on one batch; at record points and window ends also validate and update phi."""
        val = val_batch if val_batch is not None else self.val
        window = self.strategy.window
        if window > 0 and val is None:
            raise ValueError("val_batch: required (or pass val= to Tuner) when the strategy tunes")
        if window > 0 and self.steps_in_window == 0:
            self._begin_window()
        skipped_before = self.engine.skipped_steps
        train_loss = self.engine.step(train_batch)
        self.step_count += 1
        self.history.train_loss.append(train_loss)
        record: dict[str, Any] = {"step": self.step_count, "train_loss": train_loss, "updated": False}
        if self.engine.skipped_steps > skipped_before:
            record["skipped"] = True
            if window > 0:
                self._recover()
            return record
        if window > 0 and self._diverged(train_loss):
            record["diverged"] = True
            self.divergences += 1
            self._recover()
            return record
        if window == 0:
            return record
        self.steps_in_window += 1
        if self.steps_in_window % self.strategy.record_every == 0 or self.steps_in_window == window:
            val_loss, h = self.engine.hypergradient(val)
            self.buffer.append(h.detach().clone())
            self.history.val_steps.append(self.step_count)
            self.history.val_loss.append(val_loss)
            record["val_loss"] = val_loss
        if self.steps_in_window == window:
            record["updated"] = self._end_window()
        return record

    @property
    def skipped_steps(self) -> int:
        """Training steps not applied because the loss or the new parameters were not finite."""
        return self.engine.skipped_steps

    def _diverged(self, train_loss: float) -> bool:
        """Training loss far above the mean of the window before the last update (or not finite)."""
        if self.divergence_factor is None or self._reference_loss is None:
            return False
        return not math.isfinite(train_loss) or abs(train_loss) > self.divergence_factor * max(
            abs(self._reference_loss), 1e-12)

    def _recover(self) -> None:
        """After a non-finite step: undo the last hyperparameter update (once) and restart the window.

        The non-finite step itself was never applied; the model and inner optimizer state return to
        their values at the last update (the steps since were taken with the phi that is undone), so
        model and phi are back at the last state known to train. Everything is counted.
        """
        if self._raw_before_update is not None:
            with torch.no_grad():
                self.space.raw.copy_(self._raw_before_update)
            self._raw_before_update = None
            if self._snapshot is not None:  # steps taken with the bad phi may have blown up (finite) too
                params, buffers, state = self._snapshot
                self.engine.fmodel.write_back(params, buffers)
                self.engine.state = tuple(t.clone() for t in state)
                self._snapshot = None
            self.reverted_updates += 1
            if self.history.windows:
                self.history.windows[-1]["reverted"] = True
        self.steps_in_window = 0
        self.buffer = []

    def _begin_window(self) -> None:
        if isinstance(self.engine, ReverseEngine):
            self.engine.begin_window()
        else:
            self.engine.reset_tangents()
        self.buffer = [torch.zeros_like(self.space.raw, requires_grad=False)]

    def _end_window(self) -> bool:
        """Estimate, check, clip and apply the window's hypergradient; True when phi changed."""
        trajectory = torch.stack(self.buffer)
        entry: dict[str, Any] = {"start": self.step_count - self.steps_in_window, "end": self.step_count}
        recent = [v for v in self.history.train_loss[-self.steps_in_window:] if math.isfinite(v)]
        if recent:
            self._reference_loss = sum(recent) / len(recent)
        try:
            estimate = self.strategy.estimate(trajectory, self.step_count)
        except (RuntimeError, ValueError, ArithmeticError) as error:  # a failed fit never stops training
            estimate = WindowEstimate(hypergradient=trajectory[-1], local=trajectory[-1], fell_back=True,
                                      reason=f"estimator error: {error}")
        hypergradient = torch.as_tensor(estimate.hypergradient, dtype=self.space.raw.dtype,
                                        device=self.space.raw.device).reshape(self.space.raw.shape)
        entry.update(local=trajectory[-1].tolist(), estimate=hypergradient.tolist(),
                     fell_back=estimate.fell_back, reason=estimate.reason, diagnostics=estimate.diagnostics)
        self.fallbacks += int(estimate.fell_back)
        self.steps_in_window = 0
        self.buffer = []
        if not torch.isfinite(hypergradient).all():
            self.skipped_updates += 1
            entry.update(skipped=True, hparams=self.space.to_dict())
            self.history.windows.append(entry)
            return False
        norm = float(hypergradient.norm())
        if self.clip_norm is not None and norm > self.clip_norm:
            hypergradient = hypergradient * (self.clip_norm / norm)
        previous = self.space.raw.detach().clone()
        assert self.hyper_optimizer is not None
        self.hyper_optimizer.zero_grad(set_to_none=True)
        self.space.raw.grad = hypergradient.clone()
        set_reference = getattr(self.hyper_optimizer, "set_reference", None)
        if callable(set_reference):  # scale-free outer steps measure phi in units of the local hypergradient
            set_reference(self.space.raw, trajectory[-1].to(hypergradient))
        self.hyper_optimizer.step()
        if not torch.isfinite(self.space.raw).all():  # never corrupt phi
            with torch.no_grad():
                self.space.raw.copy_(previous)
            self.skipped_updates += 1
            entry["skipped"] = True
        else:
            entry["skipped"] = False
            self._raw_before_update = previous
            fmodel = self.engine.fmodel
            self._snapshot = (tuple(p.detach().clone() for p in fmodel.parameters()),
                              tuple(b.detach().clone() for b in fmodel.buffers()),
                              tuple(t.detach().clone() for t in self.engine.state))
        entry.update(used=hypergradient.tolist(), norm=norm, hparams=self.space.to_dict())
        self.history.windows.append(entry)
        return not entry["skipped"]

    # -- checkpointing -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: model, inner optimizer state, tangents, window buffer,
        hyperparameters, hyper-optimizer, RNG and history (at any step; reverse mode: at window ends)."""
        if isinstance(self.engine, ReverseEngine) and self.steps_in_window:
            raise RuntimeError("a reverse-mode Tuner can be checkpointed only at a window's end")
        state: dict[str, Any] = {
            "model": copy.deepcopy(self.model.state_dict()),
            "inner_state": [s.detach().clone() for s in self.engine.state],
            "inner_step": self.engine.step_count,
            "space": self.space.state_dict(),
            "step_count": self.step_count,
            "steps_in_window": self.steps_in_window,
            "buffer": [b.clone() for b in self.buffer],
            "skipped_updates": self.skipped_updates,
            "fallbacks": self.fallbacks,
            "reverted_updates": self.reverted_updates,
            "divergences": self.divergences,
            "reference_loss": self._reference_loss,
            "skipped_steps": self.engine.skipped_steps,
            "raw_before_update": None if self._raw_before_update is None else self._raw_before_update.clone(),
            "history": self.history.state_dict(),
            "rng": torch.get_rng_state(),
        }
        if isinstance(self.engine, ForwardEngine):
            state["tangent_params"] = [t.clone() for t in self.engine.tangent_params]
            state["tangent_state"] = [t.clone() for t in self.engine.tangent_state]
        if self.hyper_optimizer is not None:
            state["hyper_optimizer"] = copy.deepcopy(self.hyper_optimizer.state_dict())
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.engine.state = tuple(s.clone() for s in state["inner_state"])
        self.engine.step_count = state["inner_step"]
        self.space.load_state_dict(state["space"])
        self.step_count = state["step_count"]
        self.steps_in_window = state["steps_in_window"]
        self.buffer = [b.clone() for b in state["buffer"]]
        self.skipped_updates = state["skipped_updates"]
        self.fallbacks = state["fallbacks"]
        self.reverted_updates = state.get("reverted_updates", 0)
        self.divergences = state.get("divergences", 0)
        self._reference_loss = state.get("reference_loss")
        self.engine.skipped_steps = state.get("skipped_steps", 0)
        before = state.get("raw_before_update")
        self._raw_before_update = None if before is None else before.clone()
        self.history.load_state_dict(state["history"])
        if isinstance(self.engine, ForwardEngine) and "tangent_params" in state:
            self.engine.set_tangents(tuple(state["tangent_params"]), tuple(state["tangent_state"]))
        if isinstance(self.engine, ReverseEngine):
            self.engine.begin_window()
        if self.hyper_optimizer is not None and "hyper_optimizer" in state:
            self.hyper_optimizer.load_state_dict(state["hyper_optimizer"])
        torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])


def run_online(tuner: Tuner, batches: Iterator[Batch], steps: int,
               on_step: Callable[[dict[str, Any]], None] | None = None) -> Tuner:
    """Drive ``tuner`` for ``steps`` batches of ``batches`` (convenience for scripts and the CLI)."""
    for _ in range(steps):
        record = tuner.step(next(batches))
        if on_step is not None:
            on_step(record)
    return tuner
