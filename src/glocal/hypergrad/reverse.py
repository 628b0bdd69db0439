"""Reverse-mode hypergradients: unroll the steps with an autograd graph and back-propagate.

Memory grows with the number of unrolled steps (O(window * p)) but not with q, so this is the
engine for many hyperparameters (per-sample loss weights). ``begin_window`` cuts the graph.
The ``reducer`` hook is applied to the validation loss and h only: the unrolled training gradient
is not all-reduced (reverse mode is not data-parallel yet).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..optim.base import InnerOptimizer
from ..space import HyperSpace
from .engine import ModelEngine, Validation
from .functional import Batch, LossFn, call_loss, split_batch
from .tangents import Reducer


class ReverseEngine(ModelEngine):
    """Trains ``model`` in place while keeping the graph of the steps since ``begin_window``."""

    #: the unrolled graph is not saved: checkpoint at window ends only
    checkpoints_mid_window = False

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
        self.raw_leaf: Tensor = self._raw().requires_grad_(True)
        self.params: tuple[Tensor, ...] = ()
        self.begin_window()

    def begin_window(self) -> None:
        """Drop the graph: hypergradients from now on measure phi's effect from this step."""
        self.raw_leaf = self._raw().requires_grad_(True)
        self.params = tuple(p.detach().clone().requires_grad_(True) for p in self.fmodel.parameters())
        self.state = tuple(s.detach() for s in self.state)
        self.unrolled = 0

    def step(self, batch: Batch) -> float:
        """One optimizer step on ``batch``, recorded in the graph; returns the training loss."""
        x, rest = split_batch(batch, "train_batch")
        hparams = self.space.values(self.raw_leaf)
        buffers = tuple(b.detach().clone() for b in self.fmodel.buffers())
        with self.fmodel.mode(True):
            output = self.fmodel(self.params, buffers, x)
        loss = call_loss(self.train_loss, output, rest, hparams if self.loss_uses_hparams else None)
        grads = torch.autograd.grad(loss, self.params, create_graph=True)
        self.step_count += 1
        new_params, new_state = self.optimizer.update(self.params, self.state, grads, hparams, self.step_count)
        if not self._accept(loss, new_params):
            return float(loss.detach())
        self.params, self.state = new_params, new_state
        self.unrolled += 1
        self.fmodel.write_back(tuple(p.detach() for p in self.params), buffers)
        return float(loss.detach())

    def hypergradient(self, val: Validation, retain_graph: bool = True) -> tuple[float, Tensor]:
        """(L_val(theta_t), d L_val(theta_t)/d raw since ``begin_window``), by back-propagation."""
        loss = self.validation_objective(val, self.params)
        value = float(self._reduce(loss.detach()))
        if self.unrolled == 0:
            return value, torch.zeros_like(self.space.raw, requires_grad=False)
        (h,) = torch.autograd.grad(loss, self.raw_leaf, retain_graph=retain_graph, allow_unused=True)
        h = torch.zeros_like(self.raw_leaf) if h is None else h
        return value, self._reduce(h.detach()).to(self.space.raw.dtype)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the optimizer state; the window restarts here (the unrolled graph is not saved)."""
        super().load_state_dict(state)
        self.begin_window()
