"""A plain training step with a glocal inner optimizer: no tangents, no graph kept.

Used where hyperparameters are not being differentiated (the Fixed strategy, the final run of
Global, the grid baseline), so those baselines pay only what an ordinary training step costs.
"""

from __future__ import annotations

import torch

from .engine import ModelEngine
from .functional import Batch, call_loss, split_batch
from .tangents import reduce_all


class PlainEngine(ModelEngine):
    """Trains ``model`` in place with the current hyperparameters held constant."""

    def step(self, batch: Batch) -> float:
        x, rest = split_batch(batch, "train_batch")
        with torch.no_grad():
            hparams = self.space.values(self._raw())
        params = tuple(p.detach().requires_grad_(True) for p in self.fmodel.parameters())
        buffers = tuple(b.detach().clone() for b in self.fmodel.buffers())
        with self.fmodel.mode(True):
            output = self.fmodel(params, buffers, x)
        loss = call_loss(self.train_loss, output, rest, hparams if self.loss_uses_hparams else None)
        grads = torch.autograd.grad(loss, params)
        if self.reducer is not None:  # the gradient and the loss, averaged in one collective
            *grads, loss = reduce_all(self.reducer, (*grads, loss.detach().reshape(())), "training gradient and loss")
            grads = tuple(grads)
        self.step_count += 1
        with torch.no_grad():
            new_params, new_state = self.optimizer.update(
                tuple(p.detach() for p in params), self.state, grads, hparams, self.step_count
            )
        if not self._accept(loss, new_params):
            return float(loss.detach())
        self.state = new_state
        self.fmodel.write_back(new_params, buffers)
        return float(loss.detach())
