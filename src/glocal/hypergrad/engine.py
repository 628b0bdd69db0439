"""The Engine protocol, and the base the model-driven engines (plain, forward, reverse) share.

An engine owns its state: the inner optimizer state, the step count, the tangents (forward mode)
or the unrolled graph (reverse mode), the count of skipped steps and a divergence snapshot. The
online loop (``glocal.loop.OnlineLoop``, behind ``Tuner`` and the drop-in optimizers) drives an
engine only through this protocol.

Data-parallel hook: ``reducer`` (default None, the identity) is an all-reduce (mean over ranks)
applied to the training gradient and the q gradient tangents (in ``tangents.py``) and to the
validation loss and h (in ``hypergradient``); with it every rank applies the same update.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ..optim.base import InnerOptimizer
from ..space import HyperSpace
from .functional import Batch, FunctionalModel, LossFn, accepts_hparams, call_loss, split_batch
from .tangents import Reducer, reduce_all

#: a validation batch ``(x, y, ...)`` or a callable returning one (e.g. a random minibatch)
Validation = Batch | Callable[[], Batch]


@runtime_checkable
class Engine(Protocol):
    """What the online loop needs from an engine."""

    #: whether ``state_dict`` inside a window (between ``begin_window`` and the window's end) resumes
    #: exactly; reverse mode cannot (its unrolled graph is not saved)
    checkpoints_mid_window: bool
    #: all-reduce hook (None: one process)
    reducer: Reducer | None

    def begin_window(self) -> None:
        """From now on hypergradients measure phi's effect from this step (tangents reset / graph cut)."""

    def step(self, batch: Batch | None) -> float:
        """One training step; returns the training loss (NaN when unknown). A non-finite step is not
        applied and counted in ``skipped_steps``."""
        ...

    def hypergradient(self, val: Validation) -> tuple[float, Tensor]:
        """(L_val at the current parameters, h = d L_val / d raw since ``begin_window``), h of shape (q,)."""
        ...

    @property
    def skipped_steps(self) -> int:
        """Steps not applied because the loss or the new parameters were not finite."""
        ...

    def parameters_finite(self) -> bool:
        """Whether every trained parameter is finite (checked by the loop after a skipped step)."""
        ...

    def snapshot(self) -> None:
        """Remember the parameters, buffers and optimizer state (a point to return to on divergence)."""

    def restore(self) -> bool:
        """Return to the snapshot (then forget it); False when there is none."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Inner optimizer state, step count, tangents, skipped count and the snapshot (not the model)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def clone_all(tensors: tuple[Tensor, ...] | list[Tensor]) -> list[Tensor]:
    return [t.detach().clone() for t in tensors]


def all_finite(tensors: tuple[Tensor, ...] | list[Tensor]) -> bool:
    """One reduction: whether every element of every tensor is finite."""
    return bool(torch.isfinite(sum(t.detach().sum() for t in tensors)))


def check_names(space: HyperSpace, optimizer: InnerOptimizer, loss_uses_hparams: bool) -> None:
    """Every space entry must be a hyperparameter of the optimizer, unless the training loss takes
    ``hparams`` (then the other entries are the loss's, e.g. per-class weights)."""
    if loss_uses_hparams:
        return
    accepted = tuple(getattr(optimizer, "hyperparameter_names", ()))
    unknown = [n for n in space.names if n not in accepted]
    if unknown:
        raise ValueError(
            f"space: unknown hyperparameter(s) {unknown} for {type(optimizer).__name__}; it accepts "
            f"{', '.join(accepted)} (or give the training loss a 'hparams' keyword to use other entries)")


class ModelEngine:
    """Trains ``model`` in place with a differentiable inner optimizer; subclasses add hypergradients."""

    checkpoints_mid_window = True

    def __init__(
        self,
        model: nn.Module,
        optimizer: InnerOptimizer,
        space: HyperSpace,
        train_loss: LossFn,
        val_loss: LossFn | None = None,
        *,
        reducer: Reducer | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(space, HyperSpace):
            raise TypeError(f"space: expected a glocal.HyperSpace, got {type(space).__name__}")
        for name in ("init", "update", "defaults"):
            if not callable(getattr(optimizer, name, None)):
                raise TypeError(
                    f"optimizer: expected a differentiable glocal.optim optimizer (glocal.optim.SGD, "
                    f"glocal.optim.AdamW), got {type(optimizer).__name__}"
                )
        self.loss_uses_hparams = accepts_hparams(train_loss)
        check_names(space, optimizer, self.loss_uses_hparams)
        self.fmodel = FunctionalModel(model)
        self.optimizer = optimizer
        self.space = space
        self.train_loss = train_loss
        self.val_loss = val_loss if val_loss is not None else train_loss
        self.reducer = reducer
        params = self.fmodel.parameters()
        self.dtype = params[0].dtype
        self.device = params[0].device
        self.state: tuple[Tensor, ...] = optimizer.init(params, tuned=space.names)
        self.step_count = 0
        self._skipped_steps = 0
        self._snapshot: dict[str, Any] | None = None

    @property
    def skipped_steps(self) -> int:
        return self._skipped_steps

    def _accept(self, loss: Tensor, new_params: tuple[Tensor, ...]) -> bool:
        """Whether a step may be applied: a non-finite loss or parameter is never written into the model.

        A rejected step leaves parameters, optimizer state and tangents as they were, undoes the step
        count and is counted in ``skipped_steps`` (one reduction, no per-tensor synchronisation).
        """
        total = loss.detach().reshape(()) + sum(p.detach().sum() for p in new_params)
        if bool(torch.isfinite(total)):
            return True
        self.step_count -= 1
        self._skipped_steps += 1
        return False

    @property
    def q(self) -> int:
        return len(self.space)

    def _raw(self) -> Tensor:
        """The current raw hyperparameters, detached, in the model's dtype and device."""
        return self.space.raw.detach().to(dtype=self.dtype, device=self.device)

    def _reduce(self, tensor: Tensor) -> Tensor:
        return tensor if self.reducer is None else self.reducer(tensor)

    def _mean_loss(self, loss: Tensor) -> Tensor:
        """The training loss averaged over the ranks (detached; itself without a reducer), so that
        every rank judges finiteness and divergence on the same number."""
        if self.reducer is None:
            return loss.detach()
        return reduce_all(self.reducer, (loss.detach().reshape(()),), "training loss")[0]

    def _mean_validation(self, loss: float, h: Tensor) -> tuple[float, Tensor]:
        """L_val and h averaged over the ranks in one collective (unchanged without a reducer)."""
        if self.reducer is None:
            return loss, h
        value = torch.tensor([loss], dtype=h.dtype, device=h.device)
        value, h = reduce_all(self.reducer, (value, h.detach()), "validation loss and hypergradient")
        return float(value[0]), h

    # -- the window -------------------------------------------------------------------------
    def begin_window(self) -> None:
        """Nothing to reset in a plain engine; subclasses reset tangents or cut the graph."""

    # -- validation -------------------------------------------------------------------------
    def validation_objective(self, val: Validation, params: tuple[Tensor, ...]) -> Tensor:
        """L_val at ``params`` (eval mode, buffers copied), as a graph-carrying scalar tensor."""
        batch = val() if callable(val) else val
        x, rest = split_batch(batch, "val_batch")
        buffers = tuple(b.detach().clone() for b in self.fmodel.buffers())
        with self.fmodel.mode(False):
            output = self.fmodel(params, buffers, x)
        return call_loss(self.val_loss, output, rest, None)

    def validation_gradient(self, val: Validation) -> tuple[float, tuple[Tensor, ...]]:
        """Validation loss at the model's current parameters (eval mode) and its gradient."""
        params = tuple(p.detach().requires_grad_(True) for p in self.fmodel.parameters())
        loss = self.validation_objective(val, params)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = tuple(torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True))
        return float(loss.detach()), grads

    def validation_loss(self, val: Validation) -> float:
        """Validation loss at the model's current parameters (eval mode, no gradient)."""
        with torch.no_grad():
            return float(self.validation_objective(val, self.fmodel.parameters()))

    def hypergradient(self, val: Validation) -> tuple[float, Tensor]:
        """A plain engine carries no derivatives: L_val and a zero h."""
        loss = self.validation_loss(val)
        return loss, torch.zeros_like(self.space.raw, requires_grad=False)

    # -- rollback ---------------------------------------------------------------------------
    def parameters_finite(self) -> bool:
        return all_finite(self.fmodel.parameters())

    def snapshot(self) -> None:
        self._snapshot = {"params": clone_all(self.fmodel.parameters()), "buffers": clone_all(self.fmodel.buffers()),
                          "state": clone_all(self.state), "step": self.step_count}

    def restore(self) -> bool:
        if self._snapshot is None:
            return False
        snap, self._snapshot = self._snapshot, None
        self.fmodel.write_back(tuple(snap["params"]), tuple(snap["buffers"]))
        self.state = tuple(t.clone() for t in snap["state"])
        self.step_count = snap["step"]
        self.begin_window()
        return True

    # -- checkpointing ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        snap = None if self._snapshot is None else {
            k: (clone_all(v) if isinstance(v, list) else v) for k, v in self._snapshot.items()}
        return {"inner_state": clone_all(self.state), "inner_step": self.step_count,
                "skipped_steps": self._skipped_steps, "snapshot": snap}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = tuple(s.clone() for s in state["inner_state"])
        self.step_count = state["inner_step"]
        self._skipped_steps = state.get("skipped_steps", 0)
        snap = state.get("snapshot")
        self._snapshot = None if snap is None else {
            k: (clone_all(v) if isinstance(v, list) else v) for k, v in snap.items()}
