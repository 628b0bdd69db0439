"""The online loop shared by ``Tuner`` and the drop-in optimizers: windows, records, phi updates.

Data flow of one step: engine step (theta, s and their tangents) -> every ``record_every`` steps
h_j = d L_val / d raw into the window buffer -> at the window's end the strategy turns the buffer
into a hypergradient -> clip -> ``space.raw.grad`` -> ``hyper_optimizer.step()`` -> a new window,
which resets the tangents and the buffer unless the strategy keeps its trajectory going
(``keeps_trajectory``: Glocal with ``anchor="run"``).
A non-finite hypergradient is skipped and counted. The engine is used only through its protocol
(``glocal.hypergrad.engine.Engine``).

Failures never corrupt the model or phi: a step whose loss or new parameters are not finite is
not applied (by the engine), and a training loss above ``divergence_factor`` times the previous
window's mean counts as divergence; either undoes the last phi update and returns the engine to
the snapshot taken when it was made.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from . import defaults
from .hypergrad.engine import Engine, Validation
from .records import Listener, emit, revert_record, step_record, val_record, window_record
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


def check_like(expected: Any, given: Any, where: str) -> None:
    """``given`` must have the structure of ``expected``: the same dict keys where both have them, the
    same list lengths, tensors of the same shape and dtype (None on either side is accepted)."""
    if expected is None or given is None:
        return
    if isinstance(expected, Tensor):
        if not isinstance(given, Tensor) or given.shape != expected.shape or given.dtype != expected.dtype:
            got = (f"shape {tuple(given.shape)}, {given.dtype}" if isinstance(given, Tensor)
                   else type(given).__name__)
            raise ValueError(f"{where}: expected a tensor of shape {tuple(expected.shape)}, {expected.dtype}; "
                             f"got {got}")
    elif isinstance(expected, dict):
        if not isinstance(given, dict):
            raise ValueError(f"{where}: expected a dict, got {type(given).__name__}")
        for key in expected.keys() & given.keys():
            check_like(expected[key], given[key], f"{where}[{key!r}]")
    elif isinstance(expected, list | tuple):
        if not isinstance(given, list | tuple) or len(given) != len(expected):
            raise ValueError(f"{where}: expected {len(expected)} entries, got "
                             f"{len(given) if isinstance(given, list | tuple) else type(given).__name__}")
        for i, (e, g) in enumerate(zip(expected, given, strict=True)):
            check_like(e, g, f"{where}[{i}]")


def keeps_trajectory(strategy: object, window_end: int) -> bool:
    """Whether the window after the one ending at ``window_end`` goes on with this trajectory (tangents
    carried, rows kept) instead of starting a new one: the strategy's optional ``keeps_trajectory``."""
    keeps = getattr(strategy, "keeps_trajectory", None)
    return bool(keeps(window_end)) if callable(keeps) else False


def check_strategy(strategy: object) -> Strategy:
    for name in ("window", "record_every", "mode", "estimate"):
        if not hasattr(strategy, name):
            raise TypeError(f"strategy: expected a glocal strategy (Fixed, Local, Glocal), got {strategy!r}")
    return strategy  # type: ignore[return-value]


class OnlineLoop:
    """Drives ``engine`` window by window and updates ``space`` with ``hyper_optimizer``."""

    def __init__(
        self,
        engine: Engine,
        space: HyperSpace,
        strategy: Strategy,
        hyper_optimizer: torch.optim.Optimizer | None = None,
        *,
        clip_norm: float | None = defaults.CLIP_NORM,
        divergence_factor: float | None = 100.0,
        hyper_lr: float = defaults.HYPER_LR,
        listeners: Sequence[Listener] = (),
    ) -> None:
        if divergence_factor is not None and not (divergence_factor > 1 and math.isfinite(divergence_factor)):
            raise ValueError(f"divergence_factor={divergence_factor!r}: expected a finite number > 1, or None")
        if clip_norm is not None and not (clip_norm > 0 and math.isfinite(clip_norm)):
            raise ValueError(f"clip_norm={clip_norm!r}: expected a finite number > 0, or None for no clipping")
        self.strategy = check_strategy(strategy)
        self.engine = engine
        self.space = space
        self.clip_norm = clip_norm
        self.divergence_factor = divergence_factor
        if strategy.window > 0:
            if hyper_optimizer is None:
                hyper_optimizer = defaults.hyper_optimizer(space.raw, lr=hyper_lr)
            if not any(p is space.raw for g in hyper_optimizer.param_groups for p in g["params"]):
                raise ValueError("hyper_optimizer: it must optimize space.raw, e.g. torch.optim.Adam([space.raw])")
        self.hyper_optimizer = hyper_optimizer
        self.history = History()
        #: called with a ``glocal.records.Record`` per step, record point and window (any logger)
        self.listeners: list[Listener] = list(listeners)
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
        #: window updates stopped at a hyperparameter's bound (the window's ``at_bound`` says which)
        self.bound_hits = 0
        #: times the model's parameters were found non-finite and returned to the last finite state
        self.restored_faults = 0
        self._started = False
        #: validation data for the records between window ends (None: the same as at window ends)
        self.record_val: Validation | None = None

    @property
    def hparams(self) -> dict[str, float | list[float]]:
        """Current constrained hyperparameter values."""
        return self.space.to_dict()

    @property
    def skipped_steps(self) -> int:
        """Training steps not applied because the loss or the new parameters were not finite."""
        return self.engine.skipped_steps

    @property
    def tunes(self) -> bool:
        return self.strategy.window > 0

    def run_step(self, train_batch: Any, val: Validation | None) -> dict[str, Any]:
        """Train on one batch; at record points and window ends also validate and update phi."""
        window = self.strategy.window
        if window > 0 and val is None:
            raise ValueError("val_batch: required (or pass val= to Tuner) when the strategy tunes")
        if not self._started:
            self._start()
        if window > 0 and self.steps_in_window == 0 and not self.buffer:  # a kept trajectory goes on
            self.engine.begin_window()
            self.buffer = [torch.zeros_like(self.space.raw, requires_grad=False)]
        skipped_before = self.engine.skipped_steps
        train_loss = self.engine.step(train_batch)
        self.step_count += 1
        self.history.train_loss.append(train_loss)
        record: dict[str, Any] = {"step": self.step_count, "train_loss": train_loss, "updated": False}
        if self.engine.skipped_steps > skipped_before:
            record["skipped"] = True
            emit(self.listeners, step_record(self.step_count, train_loss, skipped=True))
            if window > 0:
                self._recover()
            if not self.engine.parameters_finite():
                self._restore_finite(record)
            return record
        if window > 0 and self._diverged(train_loss):
            record["diverged"] = True
            self.divergences += 1
            emit(self.listeners, step_record(self.step_count, train_loss, diverged=True))
            self._recover()
            return record
        emit(self.listeners, step_record(self.step_count, train_loss))
        if window == 0:
            return record
        self.steps_in_window += 1
        at_end = self.steps_in_window == window
        if self.steps_in_window % self.strategy.record_every == 0 or at_end:
            source = val if at_end or self.record_val is None else self.record_val
            val_loss, h = self.engine.hypergradient(source)  # val is not None: checked above
            self.buffer.append(h.detach().clone())
            self.history.val_steps.append(self.step_count)
            self.history.val_loss.append(val_loss)
            record["val_loss"] = val_loss
            emit(self.listeners, val_record(self.step_count, val_loss))
        if self.steps_in_window == window:
            record["updated"] = self._end_window()
            emit(self.listeners, window_record(self.step_count, self.space, self.history.windows[-1]))
        return record

    def _diverged(self, train_loss: float) -> bool:
        """Training loss far above the mean of the window before the last update (or not finite).

        A NaN training loss means "unknown" (the drop-in optimizers without a closure): not judged.
        """
        if self.divergence_factor is None or self._reference_loss is None or math.isnan(train_loss):
            return False
        return not math.isfinite(train_loss) or abs(train_loss) > self.divergence_factor * max(
            abs(self._reference_loss), 1e-12)

    def _start(self) -> None:
        """Before the first step: the parameters must be finite, and become the first point to return to."""
        if not self.engine.parameters_finite():
            raise FloatingPointError("the model's parameters are not finite before the first step: there is no "
                                     "finite state to train from (check the initialisation or the loaded weights)")
        self.engine.snapshot()
        self._started = True

    def _restore_finite(self, record: dict[str, Any]) -> None:
        """The parameters became non-finite (not by a step: those are never applied, so from outside,
        e.g. a hook or a write into the weights): return to the last finite state, or stop."""
        if not self.engine.restore():
            raise FloatingPointError(
                f"the model's parameters are not finite at step {self.step_count} and there is no finite state "
                "to return to")
        self.engine.snapshot()  # the same state stays the point to return to
        self.steps_in_window = 0
        self.buffer = []
        self.restored_faults += 1
        record["restored"] = True

    def _recover(self) -> None:
        """After a non-finite or divergent step: undo the last hyperparameter update (once), restart the window.

        The non-finite step itself was never applied; the engine returns to its snapshot taken at the
        last update (the steps since were taken with the phi that is undone), so model and phi are
        back at the last state known to train. Everything is counted.
        """
        if self._raw_before_update is not None:
            with torch.no_grad():
                self.space.raw.copy_(self._raw_before_update)
            self._raw_before_update = None
            self.engine.restore()
            self.engine.snapshot()  # the restored state stays the point to return to
            self.reverted_updates += 1
            if self.history.windows:
                self.history.windows[-1]["reverted"] = True
            emit(self.listeners, revert_record(self.step_count))
        self.steps_in_window = 0
        self.buffer = []

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
        if keeps_trajectory(self.strategy, self.step_count) and torch.isfinite(trajectory[-1]).all():
            keep = getattr(self.strategy, "fit_rows", None)  # the next window goes on with tangents and rows
            self.buffer = self.buffer[-keep:] if keep else self.buffer
        else:
            self.buffer = []  # the next window starts a new trajectory (and resets the tangents)
        if not torch.isfinite(hypergradient).all():
            self.skipped_updates += 1
            entry.update(skipped=True, hparams=self.space.to_dict())
            self.history.windows.append(entry)
            self._check_ranks_agree()
            return False
        norm = float(hypergradient.norm())
        if self.clip_norm is not None and norm > self.clip_norm:
            hypergradient = hypergradient * (self.clip_norm / norm)
        previous = self.space.raw.detach().clone()
        if self.hyper_optimizer is None:
            raise RuntimeError("a tuning strategy needs a hyper_optimizer")
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
            hit = self.space.clamp_()  # bounded hyperparameters: project back, and say so
            if hit:
                entry["at_bound"] = hit
                self.bound_hits += 1
            entry["skipped"] = False
            self._raw_before_update = previous
            self.engine.snapshot()
        entry.update(used=hypergradient.tolist(), norm=norm, hparams=self.space.to_dict())
        self.history.windows.append(entry)
        self._check_ranks_agree()
        return not entry["skipped"]

    def _agreement_params(self) -> list[Tensor]:
        """The parameters whose fingerprint the per-window agreement check compares (the engine's
        ``params`` where it has them; ``Tuner`` gives the model's)."""
        return list(getattr(self.engine, "params", None) or [])

    def _check_ranks_agree(self) -> None:
        """Data-parallel: phi and the parameters must be bitwise equal on every rank (a clear error if not)."""
        check = getattr(self.engine.reducer, "check_agree", None)
        if check is not None:
            check(self.space.raw, self._agreement_params())

    # -- checkpointing -----------------------------------------------------------------------
    def loop_state_dict(self) -> dict[str, Any]:
        """The loop's and the engine's state (not the model): tangents, buffer, phi, hyper-optimizer,
        the divergence snapshot, counters and history."""
        if self.steps_in_window and not self.engine.checkpoints_mid_window:
            raise RuntimeError("a reverse-mode run can be checkpointed only at a window's end")
        state: dict[str, Any] = {
            "engine": self.engine.state_dict(),
            "space": self.space.state_dict(),
            "step_count": self.step_count,
            "steps_in_window": self.steps_in_window,
            "buffer": [b.clone() for b in self.buffer],
            "skipped_updates": self.skipped_updates,
            "fallbacks": self.fallbacks,
            "reverted_updates": self.reverted_updates,
            "divergences": self.divergences,
            "bound_hits": self.bound_hits,
            "restored_faults": self.restored_faults,
            "reference_loss": self._reference_loss,
            "raw_before_update": None if self._raw_before_update is None else self._raw_before_update.clone(),
            "history": self.history.state_dict(),
        }
        if self.hyper_optimizer is not None:
            state["hyper_optimizer"] = copy.deepcopy(self.hyper_optimizer.state_dict())
        return state

    def check_loop_state_dict(self, state: Any) -> None:
        """Raise ValueError (naming the entry) unless ``state`` fits this loop; changes nothing."""
        if not isinstance(state, dict):
            raise ValueError(f"state: expected a dict from state_dict(), got {type(state).__name__}")
        required = ("engine", "space", "step_count", "steps_in_window", "buffer", "skipped_updates", "fallbacks",
                    "reverted_updates", "divergences", "reference_loss", "raw_before_update", "history")
        missing = [k for k in required if k not in state]
        if missing:
            raise ValueError(f"state: missing {', '.join(missing)} (not a state_dict() of this kind of loop)")
        check_like(self.engine.state_dict(), state["engine"], "state['engine']")
        self.space.check_state_dict(state["space"])
        for key in ("step_count", "steps_in_window", "skipped_updates", "fallbacks", "reverted_updates",
                    "divergences"):
            if isinstance(state[key], bool) or not isinstance(state[key], int) or state[key] < 0:
                raise ValueError(f"state[{key!r}]={state[key]!r}: expected an integer >= 0")
        if self.strategy.window > 0 and state["steps_in_window"] >= self.strategy.window:
            raise ValueError(f"state['steps_in_window']={state['steps_in_window']}: expected < the window "
                             f"({self.strategy.window})")
        for i, b in enumerate([*state["buffer"], *([] if state["raw_before_update"] is None
                                                   else [state["raw_before_update"]])]):
            if not isinstance(b, Tensor) or b.shape != self.space.raw.shape:
                raise ValueError(f"state: buffer/raw_before_update entry {i}: expected a tensor of shape "
                                 f"{tuple(self.space.raw.shape)}")
        if not isinstance(state["history"], dict) or set(state["history"]) != set(History().__dict__):
            raise ValueError(f"state['history']: expected the keys {sorted(History().__dict__)}")
        if self.hyper_optimizer is not None and "hyper_optimizer" in state:
            hyper = state["hyper_optimizer"]
            groups = hyper.get("param_groups") if isinstance(hyper, dict) else None
            if not isinstance(groups, list) or len(groups) != len(self.hyper_optimizer.param_groups):
                raise ValueError("state['hyper_optimizer']: its parameter groups do not match this hyper_optimizer")

    def load_loop_state_dict(self, state: dict[str, Any]) -> None:
        """Load ``loop_state_dict()`` output; it is checked first, so a bad state changes nothing."""
        self.check_loop_state_dict(state)
        self.engine.load_state_dict(state["engine"])
        self.space.load_state_dict(state["space"])
        self.step_count = state["step_count"]
        self.steps_in_window = state["steps_in_window"]
        self.buffer = [b.clone() for b in state["buffer"]]
        self.skipped_updates = state["skipped_updates"]
        self.fallbacks = state["fallbacks"]
        self.reverted_updates = state["reverted_updates"]
        self.divergences = state["divergences"]
        self.bound_hits = state.get("bound_hits", 0)
        self.restored_faults = state.get("restored_faults", 0)
        self._started = True
        self._reference_loss = state["reference_loss"]
        before = state["raw_before_update"]
        self._raw_before_update = None if before is None else before.clone()
        self.history.load_state_dict(state["history"])
        if self.hyper_optimizer is not None and "hyper_optimizer" in state:
            self.hyper_optimizer.load_state_dict(state["hyper_optimizer"])
