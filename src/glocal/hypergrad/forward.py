"""Forward-mode hypergradients: tangents of (parameters, optimizer state) w.r.t. ``space.raw``.

The tangents Z_t = d(theta_t, s_t)/d raw (one per scalar hyperparameter, q in all) follow the
training step exactly: Z_{t+1} = A_t Z_t + B_t. Memory is O(q p), constant in the number of steps,
and h_t = d L_val(theta_t) / d raw = grad L_val(theta_t) . Z_theta costs one validation gradient.

How one step is linearised (measured in benchmarks/bench_step.py, docs/benchmarks.md):

* gradient tangents dg_i = H Z_i + d^2 L / (d theta d raw_i) come from q double backwards
  (reverse-over-reverse) through the ONE graph of the training gradient (``retain_graph``). A
  loop is faster than one ``is_grads_batched`` call: the batched version runs through the legacy
  vmap fallback and materialises large intermediate tensors (1.2-1.8x slower at batch 128-1024).
  The double backward is skipped entirely when the tangents are zero (first step after a reset)
  and the training loss does not depend on the hyperparameters.
* the optimizer update's tangents: for an elementwise optimizer (``glocal.optim.SGD``/``AdamW``,
  or any optimizer with ``elementwise = True``) ONE forward-mode (``torch.autograd.forward_ad``)
  pass of ``optimizer.update`` over all parameters concatenated into a single flat tensor, with
  the q tangents stacked along a leading axis (primal broadcast to (q, p), hyperparameters as
  (q, 1) dual tensors whose tangent is the derivative of the value along raw_i in row i). That is
  about 10 tensor ops in all instead of ~10 per parameter tensor under ``vmap(jvp)``. Any other
  optimizer takes the generic path: ``torch.func.jvp`` of the update, vmapped over q.

The tangents live in flat (q, p) tensors; ``tangent_params`` / ``tangent_state`` are tuples of
views into them with the per-tensor shapes (q, *shape). Assigning new tuples is allowed (they are
re-packed on the next step).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from torch.func import jvp, vmap

from ..optim.adamw import AdamW
from ..optim.base import InnerOptimizer
from ..optim.sgd import SGD
from ..space import HyperSpace
from .engine import Engine, Validation
from .functional import Batch, LossFn, call_loss, split_batch

#: optimizers whose update is elementwise in (params, state, grads) with scalar hyperparameters and
#: whose state is k groups of one tensor per parameter (k = 0, 1, 2, ...): the flat fast path is exact.
_ELEMENTWISE = (SGD, AdamW)


def _is_elementwise(optimizer: InnerOptimizer) -> bool:
    flag = getattr(optimizer, "elementwise", None)
    if flag is not None:
        return bool(flag)
    return type(optimizer) in _ELEMENTWISE


def _flatten(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors]) if len(tensors) > 1 else tensors[0].reshape(-1)


def _flatten_q(tensors: Sequence[Tensor], q: int) -> Tensor:
    return torch.cat([t.reshape(q, -1) for t in tensors], dim=1) if len(tensors) > 1 else tensors[0].reshape(q, -1)


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
        params = self.fmodel.parameters()
        self._shapes = tuple(p.shape for p in params)
        self._sizes = tuple(p.numel() for p in params)
        self._uniform = len({p.dtype for p in params}) == 1 and len({p.device for p in params}) == 1
        self._fast = self._uniform and self._fast_path_applies(params)
        self.tangent_params: tuple[Tensor, ...] = ()
        self.tangent_state: tuple[Tensor, ...] = ()
        # (tuple of views, flat (q, p) tensor) last produced by this engine, to skip re-packing
        self._packed_params: tuple[tuple[Tensor, ...], Tensor] | None = None
        self._packed_state: tuple[tuple[Tensor, ...], Tensor] | None = None
        self._packed_grads: tuple[tuple[Tensor, ...], Tensor] | None = None
        self._slopes_key: tuple[int, int, int] | None = None
        self._slopes: dict[str, tuple[int, Tensor, Tensor]] = {}
        self.reset_tangents()

    def _fast_path_applies(self, params: tuple[Tensor, ...]) -> bool:
        """The flat forward-AD update is used for elementwise optimizers with scalar hyperparameters."""
        if not _is_elementwise(self.optimizer):
            return False
        names = set(getattr(self.optimizer, "hyperparameter_names", ()))
        if any(len(range(*self.space.slice_of(n).indices(len(self.space)))) != 1
               for n in self.space.names if n in names):
            return False
        n = len(params)
        if len(self.state) % n:
            return False
        return all(s.shape == params[i % n].shape for i, s in enumerate(self.state))

    def reset_tangents(self) -> None:
        """Forget phi's past influence: from now on tangents measure phi's effect from this step."""
        q = self.q
        self.tangent_params = tuple(torch.zeros((q, *p.shape), dtype=p.dtype, device=p.device)
                                    for p in self.fmodel.parameters())
        self.tangent_state = tuple(torch.zeros((q, *s.shape), dtype=s.dtype, device=s.device) for s in self.state)
        self._packed_params = self._packed_state = None
        self._tangents_zero = True

    def set_tangents(self, tangent_params: tuple[Tensor, ...], tangent_state: tuple[Tensor, ...]) -> None:
        """Restore tangents (e.g. from a checkpoint); shapes (q, *parameter shape) and (q, *state shape)."""
        self.tangent_params = tuple(t.clone() for t in tangent_params)
        self.tangent_state = tuple(t.clone() for t in tangent_state)
        self._packed_params = self._packed_state = None
        self._tangents_zero = not any(bool(t.any()) for t in self.tangent_params + self.tangent_state)

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
        need_tangent_grads = self.loss_uses_hparams or not self._tangents_zero
        wrt = (*params, raw) if self.loss_uses_hparams else params
        grads = torch.autograd.grad(loss, wrt, create_graph=need_tangent_grads)
        grad_params = tuple(g.detach() for g in grads[: len(params)])
        tangent_grads = self._gradient_tangents(params, grads) if need_tangent_grads else None
        del grads, output
        self.step_count += 1
        detached = tuple(p.detach() for p in params)
        if self._fast:
            new_params, new_state, t_params, t_state = self._update_flat(detached, grad_params, tangent_grads)
        else:
            new_params, new_state, t_params, t_state = self._update_vmap(detached, grad_params, tangent_grads)
        if not self._accept(loss, new_params):
            self._packed_params = self._packed_state = None
            return float(loss.detach())
        self.state = new_state
        self.tangent_params, self.tangent_state = t_params, t_state
        self._tangents_zero = False
        self.fmodel.write_back(new_params, buffers)
        return float(loss.detach())

    def _gradient_tangents(self, params: tuple[Tensor, ...], grads: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """dg_i = H Z_i + d^2 L/(d theta d raw_i), one double backward per i through one graph."""
        q, n = self.q, len(params)
        outputs = list(grads[:n]) if not self._tangents_zero else []
        if self.loss_uses_hparams:
            outputs.append(grads[-1])
            eye = torch.eye(q, dtype=grads[-1].dtype, device=grads[-1].device)
        if self._uniform:  # one flat (q, p) buffer, per-parameter views (no concatenation later)
            flat = torch.empty((q, sum(self._sizes)), dtype=params[0].dtype, device=params[0].device)
            result = self._split(flat, q)
        else:
            flat, result = None, tuple(torch.empty((q, *p.shape), dtype=p.dtype, device=p.device) for p in params)
        for i in range(q):
            grad_outputs = [t[i] for t in self.tangent_params] if not self._tangents_zero else []
            if self.loss_uses_hparams:
                grad_outputs.append(eye[i])
            parts = torch.autograd.grad(outputs, params, grad_outputs, retain_graph=i < q - 1, allow_unused=True)
            for r, part in zip(result, parts, strict=True):
                if part is None:
                    r[i].zero_()
                else:
                    r[i].copy_(part)
        self._packed_grads = (result, flat) if flat is not None else None
        return result

    # -- the optimizer update and its tangents ---------------------------------------------
    def _update_vmap(self, params: tuple[Tensor, ...], grads: tuple[Tensor, ...],
                     tangent_grads: tuple[Tensor, ...] | None):
        """Generic path: jvp of the update, vmapped over the q tangents (any InnerOptimizer)."""
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
        self._packed_params = self._packed_state = None
        return new_params, new_state, t_params, t_state

    def _hparam_slopes(self) -> dict[str, tuple[int, Tensor, Tensor]]:
        """For each tuned optimizer hyperparameter: (its index k in raw, its value, d value / d raw_k)."""
        source = self.space.raw
        key = (id(source), source.data_ptr(), source._version)
        if key == self._slopes_key:  # raw unchanged since the last step (it changes once per window)
            return self._slopes
        known = set(getattr(self.optimizer, "hyperparameter_names", ()))
        names = [n for n in self.space.names if n in known]
        raw = self._raw().requires_grad_(True)
        with torch.enable_grad():
            values = self.space.values(raw)
            # transforms are elementwise on disjoint slices: one gradient of the sum gives every slope
            (slopes,) = torch.autograd.grad(sum(values[n].sum() for n in names), raw) if names else (raw,)
        index = {n: range(*self.space.slice_of(n).indices(self.q))[0] for n in names}
        self._slopes = {n: (index[n], values[n].detach(), slopes[index[n]].detach()) for n in names}
        self._slopes_key = key
        return self._slopes

    def _hparam_duals(self, slopes: dict[str, tuple[int, Tensor, Tensor]]) -> dict[str, Tensor]:
        """The tuned hyperparameters as (q, 1) dual tensors: row i carries d value / d raw_i."""
        q = self.q
        duals: dict[str, Tensor] = {}
        for name, (k, value, slope) in slopes.items():
            tangent = torch.zeros((q, 1), dtype=value.dtype, device=value.device)
            tangent[k, 0] = slope
            duals[name] = fwAD.make_dual(value.reshape(1, 1).expand(q, 1).clone(), tangent)
        return duals

    def _packed(self, views: tuple[Tensor, ...], cache: tuple[tuple[Tensor, ...], Tensor] | None) -> Tensor:
        if cache is not None and cache[0] is views:
            return cache[1]
        return _flatten_q(views, self.q)

    def _update_flat(self, params: tuple[Tensor, ...], grads: tuple[Tensor, ...],
                     tangent_grads: tuple[Tensor, ...] | None):
        """Elementwise path: one forward-AD pass over flat (q, p) tensors for all tangents at once."""
        q, n = self.q, len(params)
        k = len(self.state) // n
        flat_p, flat_g = _flatten(params), _flatten(grads)
        flat_s = [_flatten(self.state[j * n:(j + 1) * n]) for j in range(k)]
        z_p = self._packed(self.tangent_params, self._packed_params)
        z_s_all = self._packed(self.tangent_state, self._packed_state) if k else None
        size = flat_p.numel()

        def broadcast(t: Tensor) -> Tensor:
            return t.unsqueeze(0).expand(q, size).clone()

        slopes = self._hparam_slopes()
        with torch.no_grad(), fwAD.dual_level():
            hparams = self._hparam_duals(slopes)
            p = fwAD.make_dual(broadcast(flat_p), z_p)
            s = tuple(fwAD.make_dual(broadcast(flat_s[j]), z_s_all[:, j * size:(j + 1) * size]) for j in range(k))
            if tangent_grads is None:
                g = flat_g  # zero tangent: a plain tensor broadcasts against the duals
            else:
                g = fwAD.make_dual(broadcast(flat_g), self._packed(tangent_grads, self._packed_grads))
            new_p, new_s = self.optimizer.update((p,), s, (g,), hparams, self.step_count)
            out_p = fwAD.unpack_dual(new_p[0])
            out_s = [fwAD.unpack_dual(t) for t in new_s]
            new_flat_p = out_p.primal.reshape(-1, size)[0].clone()
            new_z_p = self._tangent_or_zeros(out_p.tangent, q, size, flat_p)
            new_flat_s = [u.primal.reshape(-1, size)[0].clone() for u in out_s]
            new_z_s = [self._tangent_or_zeros(u.tangent, q, size, flat_p) for u in out_s]

        new_params = self._split(new_flat_p, None)
        new_state = tuple(t for j in range(k) for t in self._split(new_flat_s[j], None))
        t_params = self._split(new_z_p, q)
        self._packed_params = (t_params, new_z_p)
        if k:
            z_s = torch.cat(new_z_s, dim=1) if k > 1 else new_z_s[0]
            t_state = tuple(t for j in range(k) for t in self._split(z_s[:, j * size:(j + 1) * size], q))
            self._packed_state = (t_state, z_s)
        else:
            t_state = ()
            self._packed_state = None
        return new_params, new_state, t_params, t_state

    @staticmethod
    def _tangent_or_zeros(tangent: Tensor | None, q: int, size: int, like: Tensor) -> Tensor:
        if tangent is None:
            return torch.zeros((q, size), dtype=like.dtype, device=like.device)
        return tangent.expand(q, size) if tangent.shape != (q, size) else tangent

    def _split(self, flat: Tensor, q: int | None) -> tuple[Tensor, ...]:
        """Per-parameter views of a flat (p,) or (q, p) tensor."""
        if q is None:
            return tuple(t.view(shape) for t, shape in zip(flat.split(self._sizes), self._shapes, strict=True))
        return tuple(t.view(q, *shape) for t, shape in zip(flat.split(self._sizes, dim=1), self._shapes, strict=True))

    def hypergradient(self, val: Validation) -> tuple[float, Tensor]:
        """(L_val(theta_t), h_t) with h_t = d L_val(theta_t)/d raw since the last tangent reset."""
        loss, grads = self.validation_gradient(val)
        h = torch.zeros(self.q, dtype=self.dtype, device=self.device)
        for g, z in zip(grads, self.tangent_params, strict=True):
            h = h + z.reshape(self.q, -1) @ g.reshape(-1)
        return loss, h.to(self.space.raw.dtype)
