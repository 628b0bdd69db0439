"""Batch-free tangent propagation: how one optimizer step moves (theta, s) and their q tangents.

The tangents Z_t = d(theta_t, s_t)/d raw (one per scalar hyperparameter, q in all) follow the
training step exactly: Z_{t+1} = A_t Z_t + B_t. This module holds them and advances them, given
the parameters, their gradients *with the gradient's graph* (``create_graph=True``), the optimizer
state and the step count. It never sees data or calls a model: the forward engine computes the
gradient from a batch, the drop-in ``torch.optim`` optimizers take it from ``p.grad``.

How one step is linearised (measured in benchmarks/bench_step.py, docs/benchmarks.md):

* gradient tangents dg_i = H Z_i + d^2 L / (d theta d raw_i) come from q double backwards
  (reverse-over-reverse) through the ONE graph of the training gradient (``retain_graph``). A
  loop is faster than one ``is_grads_batched`` call: the batched version runs through the legacy
  vmap fallback and materialises large intermediate tensors. The double backward is skipped
  entirely when the tangents are zero (first step after a reset) and the training loss does not
  depend on the hyperparameters.
* the optimizer update's tangents: for an elementwise optimizer that has a hand-written
  ``linearized_update`` (``glocal.optim.SGD`` / ``AdamW``) that method, on all parameters
  concatenated into one flat tensor with the q tangents stacked along a leading axis: about ten
  (q, p) tensor operations, about 10x cheaper on the CPU than forward-mode AD of the same update
  (exact; checked against forward-mode AD in tests/optim). Other elementwise optimizers
  (``elementwise = True``) get ONE forward-mode (``torch.autograd.forward_ad``) pass of
  ``optimizer.update`` over the same flat tensors (primal broadcast to (q, p), hyperparameters as
  dual tensors whose tangent is the derivative of the value along raw_i in row i); any other
  optimizer takes the generic path: ``torch.func.jvp`` of the update, vmapped over q.

The tangents live in flat (q, p) tensors; ``tangent_params`` / ``tangent_state`` are tuples of
views into them with the per-tensor shapes (q, *shape).

Per-group hyperparameters (the drop-in optimizers' param groups): with ``groups`` (one group index
per parameter) a tuned entry is a vector with one value per group, expanded to one value per
element of the flat parameter vector; this needs the elementwise path.

Data-parallel hook: ``reducer`` (default None, the identity) is applied to the training gradient
and to the q gradient tangents before the update, the two places where ranks must average.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor
from torch.func import jvp, vmap

from ..optim.adamw import AdamW
from ..optim.base import InnerOptimizer
from ..optim.sgd import SGD
from ..space import HyperSpace

#: all-reduce (mean over ranks) of one tensor; None is the identity (one process)
Reducer = Callable[[Tensor], Tensor]

#: optimizers whose update is elementwise in (params, state, grads) with scalar hyperparameters and
#: whose state is k groups of one tensor per parameter (k = 0, 1, 2, ...): the flat fast path is exact.
_ELEMENTWISE = (SGD, AdamW)

Tangents4 = tuple[tuple[Tensor, ...], tuple[Tensor, ...], tuple[Tensor, ...], tuple[Tensor, ...]]


def is_elementwise(optimizer: InnerOptimizer) -> bool:
    flag = getattr(optimizer, "elementwise", None)
    if flag is not None:
        return bool(flag)
    return type(optimizer) in _ELEMENTWISE


def flatten(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors]) if len(tensors) > 1 else tensors[0].reshape(-1)


def _flatten_q(tensors: Sequence[Tensor], q: int) -> Tensor:
    return torch.cat([t.reshape(q, -1) for t in tensors], dim=1) if len(tensors) > 1 else tensors[0].reshape(q, -1)


def reduce_all(reducer: Reducer | None, tensors: tuple[Tensor, ...], what: str = "tensors") -> tuple[Tensor, ...]:
    """``reducer`` applied to each tensor (identity when None); in one collective where the reducer
    offers ``mean_all`` (``glocal.distributed.Reducer`` does), ``what`` naming them in its errors."""
    if reducer is None:
        return tensors
    batched = getattr(reducer, "mean_all", None)
    if batched is not None:
        return tuple(batched(tensors, what))
    return tuple(reducer(t) for t in tensors)


class TangentPropagator:
    """The q tangents of (parameters, optimizer state) with respect to ``space.raw``, and their step.

    ``names`` maps the optimizer's hyperparameter names to the space's entry names (default: the
    space entries whose name the optimizer knows). ``params`` and ``state`` give shapes, dtype and
    device only; values are passed to each call.
    """

    def __init__(
        self,
        optimizer: InnerOptimizer,
        space: HyperSpace,
        params: Sequence[Tensor],
        state: Sequence[Tensor],
        *,
        names: Mapping[str, str] | None = None,
        groups: Sequence[int] | None = None,
        reducer: Reducer | None = None,
    ) -> None:
        self.optimizer = optimizer
        self.space = space
        known = tuple(getattr(optimizer, "hyperparameter_names", ()))
        self.names: dict[str, str] = dict(names) if names is not None else {n: n for n in space.names if n in known}
        self.reducer = reducer
        self.dtype, self.device = params[0].dtype, params[0].device
        self._shapes = tuple(p.shape for p in params)
        self._sizes = tuple(p.numel() for p in params)
        self._state_like = tuple((s.shape, s.dtype, s.device) for s in state)
        self._uniform = len({p.dtype for p in params}) == 1 and len({p.device for p in params}) == 1
        self._groups = None if groups is None else tuple(groups)
        self._fast = self._uniform and self._fast_path_applies(params, state)
        if self._groups is not None and not self._fast:
            raise ValueError("per-group hyperparameters need an elementwise optimizer (glocal.optim.SGD / AdamW) "
                             "over parameters of one dtype and device")
        self._element_group: Tensor | None = None
        if self._groups is not None:
            self._element_group = torch.cat([torch.full((size,), g, dtype=torch.long, device=self.device)
                                             for g, size in zip(self._groups, self._sizes, strict=True)])
        self.tangent_params: tuple[Tensor, ...] = ()
        self.tangent_state: tuple[Tensor, ...] = ()
        # (tuple of views, flat (q, p) tensor) last produced here, to skip re-packing
        self._packed_params: tuple[tuple[Tensor, ...], Tensor] | None = None
        self._packed_state: tuple[tuple[Tensor, ...], Tensor] | None = None
        self._packed_grads: tuple[tuple[Tensor, ...], Tensor] | None = None
        self._slopes_key: tuple[int, int, int] | None = None
        self._slopes: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
        self._tangents_cache: tuple[dict, tuple[dict[str, Tensor], dict[str, Any]]] | None = None
        self.reset()

    @property
    def q(self) -> int:
        return len(self.space)

    def _fast_path_applies(self, params: Sequence[Tensor], state: Sequence[Tensor]) -> bool:
        """The flat forward-AD update is used for elementwise optimizers with scalar (or per-group) values."""
        if not is_elementwise(self.optimizer):
            return False
        expected = 1 if self._groups is None else max(self._groups) + 1
        if any(len(range(*self.space.slice_of(s).indices(len(self.space)))) != expected for s in self.names.values()):
            return False
        n = len(params)
        if len(state) % n:
            return False
        return all(s.shape == params[i % n].shape for i, s in enumerate(state))

    # -- the tangents themselves -----------------------------------------------------------
    @property
    def zero(self) -> bool:
        """Whether all tangents are exactly zero (right after a reset): the double backward is skipped."""
        return self._zero

    def reset(self) -> None:
        """Forget phi's past influence: from now on tangents measure phi's effect from this step."""
        q = self.q
        self.tangent_params = tuple(torch.zeros((q, *shape), dtype=self.dtype, device=self.device)
                                    for shape in self._shapes)
        self.tangent_state = tuple(torch.zeros((q, *shape), dtype=dtype, device=device)
                                   for shape, dtype, device in self._state_like)
        self._packed_params = self._packed_state = None
        self._zero = True

    def set(self, tangent_params: Sequence[Tensor], tangent_state: Sequence[Tensor]) -> None:
        """Restore tangents (e.g. from a checkpoint); shapes (q, *parameter shape) and (q, *state shape)."""
        self.tangent_params = tuple(t.clone() for t in tangent_params)
        self.tangent_state = tuple(t.clone() for t in tangent_state)
        self._packed_params = self._packed_state = None
        self._zero = not any(bool(t.any()) for t in self.tangent_params + self.tangent_state)

    def commit(self, tangent_params: tuple[Tensor, ...], tangent_state: tuple[Tensor, ...]) -> None:
        """Adopt the tangents returned by ``advance`` (the step was applied)."""
        self.tangent_params, self.tangent_state = tangent_params, tangent_state
        self._zero = False

    def discard(self) -> None:
        """The step returned by ``advance`` was not applied: keep the old tangents."""
        self._packed_params = self._packed_state = self._packed_grads = None

    def needs_graph(self, loss_uses_hparams: bool = False) -> bool:
        """Whether this step needs the gradient's graph (``create_graph=True``)."""
        return loss_uses_hparams or not self._zero

    def hypergradient(self, val_grads: Sequence[Tensor]) -> Tensor:
        """h = d L_val / d raw = sum over parameters of Z_theta . grad L_val (shape (q,), tangents' dtype)."""
        h = torch.zeros(self.q, dtype=self.dtype, device=self.device)
        for g, z in zip(val_grads, self.tangent_params, strict=True):
            h = h + z.reshape(self.q, -1) @ g.reshape(-1)
        return h

    # -- gradient tangents: H Z (+ the loss's own dependence on phi) ----------------------------
    def gradient_tangents(self, params: Sequence[Tensor], grads: Sequence[Tensor],
                          hparam_grad: Tensor | None = None) -> tuple[Tensor, ...]:
        """dg_i = H Z_i + d^2 L/(d theta d raw_i), one double backward per i through one graph.

        ``grads``: the training gradient w.r.t. ``params`` with its graph; ``hparam_grad``: the
        gradient w.r.t. raw when the training loss depends on phi (else None).
        """
        q = self.q
        outputs: list[Tensor] = []
        used: list[int] = []
        if not self._zero:
            for j, g in enumerate(grads):
                if g.requires_grad:  # a gradient constant in theta (e.g. of a linear output) has no graph
                    outputs.append(g)
                    used.append(j)
        if hparam_grad is not None:
            outputs.append(hparam_grad)
            eye = torch.eye(q, dtype=hparam_grad.dtype, device=hparam_grad.device)
        if self._uniform:  # one flat (q, p) buffer, per-parameter views (no concatenation later)
            flat = torch.empty((q, sum(self._sizes)), dtype=params[0].dtype, device=params[0].device)
            result = self._split(flat, q)
        else:
            flat, result = None, tuple(torch.empty((q, *p.shape), dtype=p.dtype, device=p.device) for p in params)
        if not outputs:
            for r in result:
                r.zero_()
        for i in range(q if outputs else 0):
            grad_outputs = [self.tangent_params[j][i] for j in used]
            if hparam_grad is not None:
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
    def advance(
        self,
        params: tuple[Tensor, ...],
        state: tuple[Tensor, ...],
        grads: tuple[Tensor, ...],
        tangent_grads: tuple[Tensor, ...] | None,
        step: int,
        constants: Mapping[str, Tensor | float] | None = None,
    ) -> Tangents4:
        """(new params, new state, their tangents) of one update; nothing is stored (see ``commit``).

        ``params``/``grads`` detached; ``tangent_grads`` from ``gradient_tangents`` or None (zero);
        ``constants``: untuned hyperparameter values overriding the optimizer's (floats, or per-element
        flat tensors with ``groups``). The training gradient and its tangents pass ``reducer`` here.
        """
        if self.reducer is not None:  # one collective for the gradient and its q tangents: (q + 1) p numbers
            n = len(grads)
            both = reduce_all(self.reducer, (*grads, *(tangent_grads or ())), "training gradient and its tangents")
            grads, tangent_grads = both[:n], (both[n:] if tangent_grads is not None else None)
            self._packed_grads = None
        if self._fast and callable(getattr(self.optimizer, "linearized_update", None)):
            return self._update_linearized(params, state, grads, tangent_grads, step, constants or {})
        if self._fast:
            return self._update_flat(params, state, grads, tangent_grads, step, constants or {})
        return self._update_vmap(params, state, grads, tangent_grads, step, constants or {})

    def _raw(self) -> Tensor:
        return self.space.raw.detach().to(dtype=self.dtype, device=self.device)

    def _update_vmap(self, params, state, grads, tangent_grads, step, constants):
        """Generic path: jvp of the update, vmapped over the q tangents (any InnerOptimizer)."""
        space, optimizer, names = self.space, self.optimizer, self.names
        raw = self._raw()

        def update(p, s, g, r):
            values = space.values(r)
            hparams = {**constants, **{opt: values[entry] for opt, entry in names.items()}}
            return optimizer.update(p, s, g, hparams, step)

        if tangent_grads is None:
            tangent_grads = tuple(torch.zeros_like(t) for t in self.tangent_params)
        eye = torch.eye(self.q, dtype=raw.dtype, device=raw.device)

        def linearised(tp, ts, tg, tr):
            return jvp(update, (params, state, grads, raw), (tp, ts, tg, tr))

        (new_params, new_state), (t_params, t_state) = vmap(linearised, out_dims=((None, None), (0, 0)))(
            self.tangent_params, self.tangent_state, tangent_grads, eye
        )
        self._packed_params = self._packed_state = None
        return new_params, new_state, t_params, t_state

    def _hparam_slopes(self) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
        """For each tuned optimizer hyperparameter: (its indices in raw, its values, d value / d raw there)."""
        source = self.space.raw
        key = (id(source), source.data_ptr(), source._version)
        if key == self._slopes_key:  # raw unchanged since the last step (it changes once per window)
            return self._slopes
        raw = self._raw().requires_grad_(True)
        with torch.enable_grad():
            values = self.space.values(raw)
            entries = list(self.names.values())
            # transforms are elementwise on disjoint slices: one gradient of the sum gives every slope
            (slopes,) = torch.autograd.grad(sum(values[e].sum() for e in entries), raw) if entries else (raw,)
        self._slopes = {}
        for opt, entry in self.names.items():
            index = torch.arange(*self.space.slice_of(entry).indices(self.q), device=self.device)
            self._slopes[opt] = (index, values[entry].detach().reshape(-1), slopes[index].detach())
        self._slopes_key = key
        return self._slopes

    def _hparam_duals(self, slopes: dict[str, tuple[Tensor, Tensor, Tensor]]) -> dict[str, Tensor]:
        """The tuned hyperparameters as dual tensors, (q, 1) or per group (q, p): row i carries d value / d raw_i."""
        q = self.q
        duals: dict[str, Tensor] = {}
        for name, (index, value, slope) in slopes.items():
            if self._element_group is None:
                tangent = torch.zeros((q, 1), dtype=value.dtype, device=value.device)
                tangent[index[0], 0] = slope[0]
                duals[name] = fwAD.make_dual(value.reshape(1, 1).expand(q, 1).clone(), tangent)
            else:  # value g of entry index[g] applies to the elements of group g
                group = self._element_group
                size = group.numel()
                tangent = torch.zeros((q, size), dtype=value.dtype, device=value.device)
                tangent[index[group], torch.arange(size, device=value.device)] = slope[group]
                duals[name] = fwAD.make_dual(value[group].unsqueeze(0).expand(q, size).clone(), tangent)
        return duals

    def _hparam_tangents(self) -> tuple[dict[str, Tensor], dict[str, tuple[int, Tensor] | Tensor]]:
        """The tuned hyperparameters' values and tangents for ``linearized_update``.

        Scalar entries: value (0-d) and (row k of raw, d value / d raw_k); per-group entries: the
        value of each element's group (p,) and the dense (q, p) tangent (row i: d value / d raw_i).
        Cached until raw changes (once per window).
        """
        slopes = self._hparam_slopes()
        if self._tangents_cache is not None and self._tangents_cache[0] is slopes:
            return self._tangents_cache[1]
        values: dict[str, Tensor] = {}
        tangents: dict[str, tuple[int, Tensor] | Tensor] = {}
        for name, (index, value, slope) in slopes.items():
            if self._element_group is None:
                values[name] = value.reshape(())
                tangents[name] = (int(index[0]), slope[0])
            else:
                group = self._element_group
                size = group.numel()
                dense = torch.zeros((self.q, size), dtype=value.dtype, device=value.device)
                dense[index[group], torch.arange(size, device=value.device)] = slope[group]
                values[name], tangents[name] = value[group], dense
        self._tangents_cache = (slopes, (values, tangents))
        return values, tangents

    def _update_linearized(self, params, state, grads, tangent_grads, step, constants):
        """Elementwise path with the optimizer's hand-written ``linearized_update`` on flat (q, p) tensors."""
        n = len(params)
        k = len(state) // n
        flat_p, flat_g = flatten(params), flatten(grads)
        size = flat_p.numel()
        flat_s = tuple(flatten(state[j * n:(j + 1) * n]) for j in range(k))
        z_p = self._packed(self.tangent_params, self._packed_params)
        z_s_all = self._packed(self.tangent_state, self._packed_state) if k else None
        z_s = tuple(z_s_all[:, j * size:(j + 1) * size] for j in range(k)) if z_s_all is not None else ()
        z_g = None if tangent_grads is None else self._packed(tangent_grads, self._packed_grads)
        values, tangents = self._hparam_tangents()
        with torch.no_grad():
            new_flat_p, new_flat_s, new_z_p, new_z_s = self.optimizer.linearized_update(  # type: ignore[attr-defined]
                flat_p, flat_s, flat_g, {**constants, **values}, step, z_p, z_s, z_g, tangents)
        return self._unflatten(new_flat_p, new_flat_s, new_z_p, new_z_s)

    def _unflatten(self, flat_p: Tensor, flat_s: Sequence[Tensor], z_p: Tensor, z_s: Sequence[Tensor]):
        """Per-tensor views of the flat results (params, k state groups, their (q, p) tangents); the
        flat tangent tensors are kept so the next step need not re-pack them."""
        q, k, size = self.q, len(flat_s), flat_p.numel()
        new_params = self._split(flat_p, None)
        new_state = tuple(t for j in range(k) for t in self._split(flat_s[j], None))
        t_params = self._split(z_p, q)
        self._packed_params = (t_params, z_p)
        if not k:
            self._packed_state = None
            return new_params, new_state, t_params, ()
        z_state = torch.cat(list(z_s), dim=1) if k > 1 else z_s[0]
        t_state = tuple(t for j in range(k) for t in self._split(z_state[:, j * size:(j + 1) * size], q))
        self._packed_state = (t_state, z_state)
        return new_params, new_state, t_params, t_state

    def _packed(self, views: tuple[Tensor, ...], cache: tuple[tuple[Tensor, ...], Tensor] | None) -> Tensor:
        if cache is not None and cache[0] is views:
            return cache[1]
        return _flatten_q(views, self.q)

    def _update_flat(self, params, state, grads, tangent_grads, step, constants):
        """Elementwise path: one forward-AD pass over flat (q, p) tensors for all tangents at once."""
        q, n = self.q, len(params)
        k = len(state) // n
        flat_p, flat_g = flatten(params), flatten(grads)
        flat_s = [flatten(state[j * n:(j + 1) * n]) for j in range(k)]
        z_p = self._packed(self.tangent_params, self._packed_params)
        z_s_all = self._packed(self.tangent_state, self._packed_state) if k else None
        size = flat_p.numel()

        def broadcast(t: Tensor) -> Tensor:
            return t.unsqueeze(0).expand(q, size).clone()

        slopes = self._hparam_slopes()
        with torch.no_grad(), fwAD.dual_level():
            hparams: dict[str, Tensor | float] = dict(constants)
            hparams.update(self._hparam_duals(slopes))
            p = fwAD.make_dual(broadcast(flat_p), z_p)
            s = tuple(fwAD.make_dual(broadcast(flat_s[j]), z_s_all[:, j * size:(j + 1) * size]) for j in range(k))
            if tangent_grads is None:
                g = flat_g  # zero tangent: a plain tensor broadcasts against the duals
            else:
                g = fwAD.make_dual(broadcast(flat_g), self._packed(tangent_grads, self._packed_grads))
            new_p, new_s = self.optimizer.update((p,), s, (g,), hparams, step)
            out_p = fwAD.unpack_dual(new_p[0])
            out_s = [fwAD.unpack_dual(t) for t in new_s]
            new_flat_p = out_p.primal.reshape(-1, size)[0].clone()
            new_z_p = self._tangent_or_zeros(out_p.tangent, q, size, flat_p)
            new_flat_s = [u.primal.reshape(-1, size)[0].clone() for u in out_s]
            new_z_s = [self._tangent_or_zeros(u.tangent, q, size, flat_p) for u in out_s]

        return self._unflatten(new_flat_p, new_flat_s, new_z_p, new_z_s)

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
