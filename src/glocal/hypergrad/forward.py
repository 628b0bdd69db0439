"""Forward-mode hypergradients: tangents of (parameters, optimizer state) w.r.t. ``space.raw``.

The tangents Z_t = d(theta_t, s_t)/d raw (one per scalar hyperparameter, q in all) follow the
training step exactly: Z_{t+1} = A_t Z_t + B_t. Memory is O(q p), constant in the number of steps,
and h_t = d L_val(theta_t) / d raw = grad L_val(theta_t) . Z_theta costs one validation gradient.

How one step is linearised (the fastest eager variant measured, see DESIGN section 7):
* gradient tangents dg_i = H dtheta_i + d^2 L / d theta d raw_i come from ONE batched double
  backward through the training loss (``is_grads_batched`` over the q tangents);
* the optimizer update is elementwise, its tangents come from ``torch.func.jvp`` vmapped over q.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import jvp, vmap

from ..optim.base import InnerOptimizer
from ..space import HyperSpace
from .engine import Engine, Validation
from .functional import Batch, LossFn, call_loss, split_batch


class ForwardEngine(Engine):
    """Trains ``model`` in place with a differentiable ``optimizer`` and carries the tangents.

    The model's parameters and buffers are updated in place after every ``step``; the optimizer
    state, the step count and the tangents live here.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: InnerOptimizer,
        space: HyperSpace,
        train_loss: LossFn,
        val_loss: LossFn | None = None,
    ) -> None:
        super().__init__(model, optimizer, space, train_loss, val_loss)
        self.tangent_params: tuple[Tensor, ...] = ()
        self.tangent_state: tuple[Tensor, ...] = ()
        self.reset_tangents()

    def reset_tangents(self) -> None:
        """Forget phi's past influence: from now on tangents measure phi's effect from this step."""
        q = self.q
        self.tangent_params = tuple(torch.zeros((q, *p.shape), dtype=p.dtype, device=p.device)
                                    for p in self.fmodel.parameters())
        self.tangent_state = tuple(torch.zeros((q, *s.shape), dtype=s.dtype, device=s.device) for s in self.state)
        self._tangents_zero = True

    # -- one training step -----------------------------------------------------------------
    def step(self, batch: Batch) -> float:
        """One optimizer step on ``batch`` with tangent propagation; returns the training loss."""
        x, rest = split_batch(batch, "train_batch")
        raw = self._raw().requires_grad_(self.loss_uses_hparams)
        hparams = self.space.values(raw)
        params = tuple(p.detach().requires_grad_(True) for p in self.fmodel.parameters())
        buffers = tuple(b.detach().clone() for b in self.fmodel.buffers())
        with self.fmodel.mode(True):
            output = self.fmodel(params, buffers, x)
        loss = call_loss(self.train_loss, output, rest, hparams if self.loss_uses_hparams else None)
        need_tangent_grads = self.loss_uses_hparams or not self._tangents_zero
        wrt = (*params, raw) if self.loss_uses_hparams else params
        grads = torch.autograd.grad(loss, wrt, create_graph=need_tangent_grads)
        grad_params = grads[: len(params)]
        tangent_grads = self._gradient_tangents(params, grads, raw) if need_tangent_grads else None
        self.step_count += 1
        new_params, new_state, t_params, t_state = self._update(
            tuple(p.detach() for p in params), tuple(g.detach() for g in grad_params), tangent_grads
        )
        self.state = new_state
        self.tangent_params, self.tangent_state = t_params, t_state
        self._tangents_zero = False
        self.fmodel.write_back(new_params, buffers)
        return float(loss.detach())

    def _gradient_tangents(self, params: tuple[Tensor, ...], grads: tuple[Tensor, ...], raw: Tensor
                           ) -> tuple[Tensor, ...]:
        """dg_i = H Z_i + d^2 L/(d theta d raw_i) for all i at once (batched double backward)."""
        outputs = list(grads[: len(params)])
        grad_outputs = list(self.tangent_params)
        if self.loss_uses_hparams:
            outputs.append(grads[-1])
            grad_outputs.append(torch.eye(self.q, dtype=raw.dtype, device=raw.device))
        result = torch.autograd.grad(outputs, params, grad_outputs, is_grads_batched=True, allow_unused=True)
        return tuple(torch.zeros_like(t) if r is None else r.detach()
                     for r, t in zip(result, self.tangent_params, strict=True))

    def _update(self, params: tuple[Tensor, ...], grads: tuple[Tensor, ...],
                tangent_grads: tuple[Tensor, ...] | None):
        """Optimizer step and its tangents (jvp of the elementwise update, vmapped over q)."""
        step = self.step_count
        space, optimizer = self.space, self.optimizer
        raw = self._raw()

        def update(p, s, g, r):
            return optimizer.update(p, s, g, space.values(r), step)

        if tangent_grads is None:
            tangent_grads = tuple(torch.zeros_like(t) for t in self.tangent_params)
        eye = torch.eye(self.q, dtype=raw.dtype, device=raw.device)

        def linearised(tp, ts, tg, tr):
            return jvp(update, (params, self.state, grads, raw), (tp, ts, tg, tr))

        (new_params, new_state), (t_params, t_state) = vmap(linearised, out_dims=((None, None), (0, 0)))(
            self.tangent_params, self.tangent_state, tangent_grads, eye
        )
        return new_params, new_state, t_params, t_state

    def hypergradient(self, val: Validation) -> tuple[float, Tensor]:
        """(L_val(theta_t), h_t) with h_t = d L_val(theta_t)/d raw since the last tangent reset."""
        loss, grads = self.validation_gradient(val)
        h = torch.zeros(self.q, dtype=self.dtype, device=self.device)
        for g, z in zip(grads, self.tangent_params, strict=True):
            h = h + z.reshape(self.q, -1) @ g.reshape(-1)
        return loss, h.to(self.space.raw.dtype)
