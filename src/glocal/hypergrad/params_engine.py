"""An engine over live parameters whose gradients the user's own backward pass produced.

The drop-in optimizers (``glocal.GlocalSGD`` / ``GlocalAdamW``) run on it: the user calls
``loss.backward(create_graph=True)``, so each ``p.grad`` carries the gradient's graph, and
``step`` advances the parameters (in place), the optimizer state and the q tangents with
:class:`~glocal.hypergrad.tangents.TangentPropagator`. It never calls the model: validation is the
user's ``val_closure`` (a callable returning the validation loss).

Forward mode only: reverse mode would need the graph of every step of the window, which the
user's loop (``zero_grad`` each step) does not keep.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ..optim.base import InnerOptimizer
from ..space import HyperSpace
from .engine import all_finite, clone_all
from .tangents import Reducer, TangentPropagator, flatten, reduce_all

CREATE_GRAPH_MESSAGE = (
    "glocal: the gradients have no graph. Call loss.backward(create_graph=True) before opt.step(): "
    "forward-mode hypergradients need the Hessian-vector products of the training loss"
)


class ParamEngine:
    """Steps ``params`` (in place) from their ``.grad``; ``groups[i]`` is parameter i's group index.

    ``tuned``: whether hypergradients are wanted (tangents carried, ``create_graph`` required).
    ``names`` maps the optimizer's hyperparameter names to the space's entries (one value per group).
    ``step(loss)`` takes the training loss the caller already computed (a float, or None when
    unknown) in place of a batch, and returns it (NaN when unknown).
    """

    checkpoints_mid_window = True

    def __init__(
        self,
        params: Sequence[Tensor],
        groups: Sequence[int],
        optimizer: InnerOptimizer,
        space: HyperSpace,
        names: Mapping[str, str],
        *,
        tuned: bool,
        model: nn.Module | None = None,
        reducer: Reducer | None = None,
    ) -> None:
        self.params = list(params)
        self.groups = list(groups)
        self.optimizer = optimizer
        self.space = space
        self.names = dict(names)
        self.tuned = tuned
        self.model = model
        self.reducer = reducer
        self.n_groups = max(self.groups) + 1
        self.dtype, self.device = self.params[0].dtype, self.params[0].device
        self.state: tuple[Tensor, ...] = optimizer.init(self.params, tuned=tuple(self.names))
        self.step_count = 0
        self._skipped_steps = 0
        self._snapshot: dict[str, Any] | None = None
        self.tangents: TangentPropagator | None = None
        if tuned:
            self.tangents = TangentPropagator(optimizer, space, self.params, self.state, names=self.names,
                                              groups=self.groups if self.n_groups > 1 else None, reducer=reducer)
        self._element_group = torch.cat([torch.full((p.numel(),), g, dtype=torch.long, device=self.device)
                                         for p, g in zip(self.params, self.groups, strict=True)])
        #: untuned hyperparameter values, one per group (set by the optimizer before each step)
        self.constants: dict[str, list[float]] = {}

    @property
    def skipped_steps(self) -> int:
        return self._skipped_steps

    def begin_window(self) -> None:
        if self.tangents is not None:
            self.tangents.reset()

    # -- one step ---------------------------------------------------------------------------
    def _constant_values(self) -> dict[str, Tensor | float]:
        """Untuned values: a float when all groups agree, else one value per flat element."""
        out: dict[str, Tensor | float] = {}
        for name, values in self.constants.items():
            if all(v == values[0] for v in values):
                out[name] = float(values[0])
            else:
                table = torch.tensor(values, dtype=self.dtype, device=self.device)
                out[name] = table[self._element_group]
        return out

    def _gradients(self) -> tuple[Tensor, ...]:
        grads = []
        for p in self.params:
            grads.append(torch.zeros_like(p) if p.grad is None else p.grad)
        if self.tangents is not None and not any(g.requires_grad for g in grads):
            raise RuntimeError(CREATE_GRAPH_MESSAGE)
        return tuple(grads)

    def step(self, batch: float | None = None) -> float:
        """One optimizer step from the parameters' ``.grad``; ``batch``: the training loss, if known."""
        loss = math.nan if batch is None else float(batch)
        grads = self._gradients()
        values = tuple(g.detach() for g in grads)
        detached = tuple(p.detach() for p in self.params)
        constants = self._constant_values()
        step = self.step_count + 1
        if self.tangents is None:
            values = reduce_all(self.reducer, values, "training gradient")
            with torch.no_grad():
                new_params, new_state = self._plain_update(detached, values, constants, step)
            t_params = t_state = None
        else:
            tangent_grads = self.tangents.gradient_tangents(self.params, grads) if self.tangents.needs_graph() else None
            new_params, new_state, t_params, t_state = self.tangents.advance(
                detached, self.state, values, tangent_grads, step, constants)
        if self.reducer is not None and batch is not None:  # every rank judges the same number
            loss = float(reduce_all(self.reducer, (torch.tensor([loss], dtype=torch.float64),), "training loss")[0])
        total = sum(p.sum() for p in new_params) + (0.0 if math.isnan(loss) else loss)
        if not bool(torch.isfinite(torch.as_tensor(total))):
            self._skipped_steps += 1
            if self.tangents is not None:
                self.tangents.discard()
            return loss
        self.step_count = step
        self.state = tuple(new_state)
        if self.tangents is not None:
            self.tangents.commit(t_params, t_state)
        with torch.no_grad():
            for p, new in zip(self.params, new_params, strict=True):
                p.copy_(new)
        return loss

    def _plain_update(self, params, grads, constants, step):
        """The update without tangents (strategy "fixed"): the same flat, elementwise update."""
        values = self.space.values()
        hparams: dict[str, Tensor | float] = dict(constants)
        for opt, entry in self.names.items():
            v = values[entry].detach().reshape(-1).to(self.dtype)
            hparams[opt] = v[0] if self.n_groups == 1 else v[self._element_group]
        n = len(params)
        k = len(self.state) // n
        flat_state = tuple(flatten(self.state[j * n:(j + 1) * n]) for j in range(k))
        (new_flat,), new_flat_state = self.optimizer.update(
            (flatten(params),), flat_state, (flatten(grads),), hparams, step)
        sizes = [p.numel() for p in params]
        new_params = tuple(t.view_as(p) for t, p in zip(new_flat.split(sizes), params, strict=True))
        new_state = tuple(t.view_as(params[i % n]) for j in range(k)
                          for i, t in enumerate(new_flat_state[j].split(sizes)))
        return new_params, new_state

    # -- validation -------------------------------------------------------------------------
    @contextmanager
    def _eval_mode(self) -> Iterator[None]:
        if self.model is None:
            yield
            return
        was = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was)

    def hypergradient(self, val: Callable[[], Tensor]) -> tuple[float, Tensor]:
        """(L_val, h) with L_val = ``val()`` (eval mode when the model is known) and h = grad L_val . Z."""
        with torch.enable_grad(), self._eval_mode():
            loss = val()
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise TypeError(f"val_closure: expected it to return a scalar loss tensor, got {type(loss).__name__}")
        if self.tangents is None:
            return float(loss.detach()), torch.zeros_like(self.space.raw, requires_grad=False)
        if not loss.requires_grad:
            raise RuntimeError("val_closure: the loss it returned has no graph to the parameters (computed "
                               "under torch.no_grad() or detached?); glocal differentiates it")
        grads = torch.autograd.grad(loss.reshape(()), self.params, allow_unused=True)
        grads = tuple(torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads, strict=True))
        h = self.tangents.hypergradient(grads)
        value = loss.detach().reshape(1).to(h.dtype)
        if self.reducer is not None:
            value, h = reduce_all(self.reducer, (value, h), "validation loss and hypergradient")
        return float(value[0]), h.to(self.space.raw.dtype)

    # -- rollback and checkpointing ---------------------------------------------------------
    def parameters_finite(self) -> bool:
        return all_finite(self.params)

    def snapshot(self) -> None:
        self._snapshot = {"params": clone_all(self.params), "state": clone_all(self.state), "step": self.step_count}

    def restore(self) -> bool:
        if self._snapshot is None:
            return False
        snap, self._snapshot = self._snapshot, None
        with torch.no_grad():
            for p, v in zip(self.params, snap["params"], strict=True):
                p.copy_(v)
        self.state = tuple(t.clone() for t in snap["state"])
        self.step_count = snap["step"]
        self.begin_window()
        return True

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"inner_state": clone_all(self.state), "inner_step": self.step_count,
                                 "skipped_steps": self._skipped_steps,
                                 "snapshot": None if self._snapshot is None else {
                                     "params": clone_all(self._snapshot["params"]),
                                     "state": clone_all(self._snapshot["state"]), "step": self._snapshot["step"]}}
        if self.tangents is not None:
            state["tangent_params"] = clone_all(self.tangents.tangent_params)
            state["tangent_state"] = clone_all(self.tangents.tangent_state)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = tuple(t.clone() for t in state["inner_state"])
        self.step_count = state["inner_step"]
        self._skipped_steps = state["skipped_steps"]
        snap = state["snapshot"]
        self._snapshot = None if snap is None else {"params": clone_all(snap["params"]),
                                                    "state": clone_all(snap["state"]), "step": snap["step"]}
        if self.tangents is not None:
            if "tangent_params" in state:
                self.tangents.set(state["tangent_params"], state["tangent_state"])
            else:
                self.tangents.reset()
