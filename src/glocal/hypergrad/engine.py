"""What the forward and reverse engines share: the functional model, optimizer state, validation."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..optim.base import InnerOptimizer
from ..space import HyperSpace
from .functional import Batch, FunctionalModel, LossFn, accepts_hparams, call_loss, split_batch

#: a validation batch ``(x, y, ...)`` or a callable returning one (e.g. a random minibatch)
Validation = Batch | Callable[[], Batch]


class Engine:
    """Trains ``model`` in place with a differentiable inner optimizer; subclasses add hypergradients."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: InnerOptimizer,
        space: HyperSpace,
        train_loss: LossFn,
        val_loss: LossFn | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(space, HyperSpace):
            raise ValueError(f"space: expected a glocal.HyperSpace, got {type(space).__name__}")
        for name in ("init", "update", "defaults"):
            if not callable(getattr(optimizer, name, None)):
                raise ValueError(
                    f"optimizer: expected a differentiable glocal.optim optimizer (glocal.optim.SGD, "
                    f"glocal.optim.AdamW), got {type(optimizer).__name__}"
                )
        self.fmodel = FunctionalModel(model)
        self.optimizer = optimizer
        self.space = space
        self.train_loss = train_loss
        self.val_loss = val_loss if val_loss is not None else train_loss
        self.loss_uses_hparams = accepts_hparams(train_loss)
        params = self.fmodel.parameters()
        self.dtype = params[0].dtype
        self.device = params[0].device
        self.state: tuple[Tensor, ...] = optimizer.init(params, tuned=space.names)
        self.step_count = 0
        #: steps not applied because the loss or the new parameters were not finite
        self.skipped_steps = 0

    def _accept(self, loss: Tensor, new_params: tuple[Tensor, ...]) -> bool:
        """Whether a step may be applied: a non-finite loss or parameter is never written into the model.

        A rejected step leaves parameters, optimizer state and tangents as they were, undoes the step
        count and is counted in ``skipped_steps`` (one reduction, no per-tensor synchronisation).
        """
        total = loss.detach().reshape(()) + sum(p.detach().sum() for p in new_params)
        if bool(torch.isfinite(total)):
            return True
        self.step_count -= 1
        self.skipped_steps += 1
        return False

    @property
    def q(self) -> int:
        return len(self.space)

    def _raw(self) -> Tensor:
        """The current raw hyperparameters, detached, in the model's dtype and device."""
        return self.space.raw.detach().to(dtype=self.dtype, device=self.device)

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
