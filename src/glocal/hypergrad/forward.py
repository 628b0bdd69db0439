"""Forward-mode hypergradients: the model-driven engine over ``tangents.py``.

Each step computes the training loss of a batch and its gradient with the gradient's graph (only
when the tangents are non-zero or the loss depends on phi), then lets the
:class:`~glocal.hypergrad.tangents.TangentPropagator` advance (theta, s) and their q tangents.
Memory is O(q p), constant in the number of steps, and h_t = d L_val(theta_t) / d raw =
grad L_val(theta_t) . Z_theta costs one validation gradient.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..optim.base import InnerOptimizer
from ..space import HyperSpace
from .engine import ModelEngine, Validation
from .functional import Batch, LossFn, call_loss, split_batch
from .tangents import Reducer, TangentPropagator


class ForwardEngine(ModelEngine):
    """Trains ``model`` in place with a differentiable ``optimizer`` and carries the tangents.

    The model's parameters and buffers are updated in place after every ``step``; the optimizer
    state, the step count and the tangents (``self.tangents``) live here.
    """

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
        super().__init__(model, optimizer, space, train_loss, val_loss, reducer=reducer)
        self.tangents = TangentPropagator(optimizer, space, self.fmodel.parameters(), self.state, reducer=reducer)

    @property
    def tangent_params(self) -> tuple[Tensor, ...]:
        """Z_theta: one (q, *shape) tensor per trainable parameter."""
        return self.tangents.tangent_params

    @property
    def tangent_state(self) -> tuple[Tensor, ...]:
        """Z_s: one (q, *shape) tensor per optimizer state tensor."""
        return self.tangents.tangent_state

    def begin_window(self) -> None:
        """Forget phi's past influence: from now on tangents measure phi's effect from this step."""
        self.tangents.reset()

    reset_tangents = begin_window

    # -- one training step -----------------------------------------------------------------
    def step(self, batch: Batch) -> float:
        """One optimizer step on ``batch`` with tangent propagation; returns the training loss."""
        x, rest = split_batch(batch, "train_batch")
        raw = self._raw().requires_grad_(self.loss_uses_hparams)
        params = tuple(p.detach().requires_grad_(True) for p in self.fmodel.parameters())
        buffers = tuple(b.detach().clone() for b in self.fmodel.buffers())
        with self.fmodel.mode(True):
            output = self.fmodel(params, buffers, x)
        if self.loss_uses_hparams:
            loss = call_loss(self.train_loss, output, rest, self.space.values(raw))
        else:
            loss = call_loss(self.train_loss, output, rest, None)
        need_tangent_grads = self.tangents.needs_graph(self.loss_uses_hparams)
        wrt = (*params, raw) if self.loss_uses_hparams else params
        grads = torch.autograd.grad(loss, wrt, create_graph=need_tangent_grads)
        n = len(params)
        grad_params = tuple(g.detach() for g in grads[:n])
        tangent_grads = None
        if need_tangent_grads:
            tangent_grads = self.tangents.gradient_tangents(
                params, grads[:n], grads[-1] if self.loss_uses_hparams else None)
        del grads, output
        loss = self._mean_loss(loss)
        self.step_count += 1
        detached = tuple(p.detach() for p in params)
        new_params, new_state, t_params, t_state = self.tangents.advance(
            detached, self.state, grad_params, tangent_grads, self.step_count)
        if not self._accept(loss, new_params):
            self.tangents.discard()
            return float(loss.detach())
        self.state = new_state
        self.tangents.commit(t_params, t_state)
        self.fmodel.write_back(new_params, buffers)
        return float(loss.detach())

    def hypergradient(self, val: Validation) -> tuple[float, Tensor]:
        """(L_val(theta_t), h_t) with h_t = d L_val(theta_t)/d raw since the last tangent reset."""
        loss, grads = self.validation_gradient(val)
        h = self.tangents.hypergradient(grads)
        loss, h = self._mean_validation(loss, h)
        return loss, h.to(self.space.raw.dtype)

    # -- checkpointing ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["tangent_params"] = [t.clone() for t in self.tangents.tangent_params]
        state["tangent_state"] = [t.clone() for t in self.tangents.tangent_state]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "tangent_params" in state:
            self.tangents.set(state["tangent_params"], state["tangent_state"])
        else:
            self.tangents.reset()
