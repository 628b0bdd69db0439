"""An opt-in ``torch.compile``d forward-mode step (experimental; see docs/benchmarks.md, "Cost of one step").

One training step and its tangents as ONE pure ``torch.func`` function, compiled with
``torch.compile(fullgraph=True, dynamic=False)``::

    step(params, state, raw) = optimizer.update(params, state, grad(loss)(params, x, y), space.values(raw), t)
    (new params, new state), (tangents) = vmap over q of jvp(step, primals, (Z_params_i, Z_state_i, e_i))

(forward-over-reverse). The step counter does not cause recompiles: the first step after construction
runs the eager :class:`ForwardEngine` step (zero tangents, SGD's "first step" branch); later steps pass
``t`` as a 0-d tensor (``glocal.optim.AdamW``, whose update uses ``beta ** t``) or as the constant 2
(``glocal.optim.SGD``, whose update only asks ``t == 1``).

Limitations (a ``ValueError`` names them): ``glocal.optim.SGD`` / ``AdamW`` only, models without buffers,
training losses without ``hparams``.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, jvp, vmap

from ..optim.adamw import AdamW
from ..optim.base import InnerOptimizer
from ..optim.sgd import SGD
from ..space import HyperSpace
from .forward import ForwardEngine
from .functional import Batch, LossFn, call_loss, split_batch


class CompiledForwardEngine(ForwardEngine):
    """:class:`ForwardEngine` whose step (after the first) is one compiled forward-over-reverse function."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: InnerOptimizer,
        space: HyperSpace,
        train_loss: LossFn,
        val_loss: LossFn | None = None,
        **compile_options: Any,
    ) -> None:
        super().__init__(model, optimizer, space, train_loss, val_loss)
        if type(optimizer) not in (SGD, AdamW):
            raise ValueError(f"CompiledForwardEngine supports glocal.optim.SGD and glocal.optim.AdamW only, "
                             f"got {type(optimizer).__name__}; use ForwardEngine")
        if self.fmodel.buffer_names:
            raise ValueError(f"CompiledForwardEngine supports models without buffers only (this one has "
                             f"{', '.join(self.fmodel.buffer_names)}); use ForwardEngine")
        if self.loss_uses_hparams:
            raise ValueError("CompiledForwardEngine supports training losses without an 'hparams' argument "
                             "only; use ForwardEngine")
        options = {"fullgraph": True, "dynamic": False, **compile_options}
        # dynamo keeps its compiled graphs (and its recompile limit, 8) per code object and guards on this
        # engine: a fresh copy of the code per engine keeps engines from using up each other's limit
        pure = CompiledForwardEngine._pure_step
        fresh = types.FunctionType(pure.__code__.replace(), pure.__globals__, pure.__name__)
        self._compiled = torch.compile(types.MethodType(fresh, self), **options)
        self._tensor_step = isinstance(optimizer, AdamW)

    def _pure_step(self, params, state, t_params, t_state, raw, eye, step, frozen, x, rest):
        model, names, frozen_names = self.fmodel.model, self.fmodel.param_names, self.fmodel.frozen_names
        space, optimizer, train_loss = self.space, self.optimizer, self.train_loss

        def loss_fn(p):
            tensors = dict(zip(names, p, strict=True))
            tensors.update(zip(frozen_names, frozen, strict=True))
            return call_loss(train_loss, functional_call(model, tensors, (x,), strict=True), rest, None)

        def update(p, s, r):
            g, loss = grad_and_value(loss_fn)(p)
            new_p, new_s = optimizer.update(p, s, g, space.values(r), step)
            return new_p, new_s, loss

        def linearised(tp, ts, tr):
            return jvp(update, (params, state, raw), (tp, ts, tr))

        (new_p, new_s, loss), (tp, ts, _) = vmap(linearised, out_dims=((None, None, None), (0, 0, 0)))(
            t_params, t_state, eye)
        return new_p, new_s, tp, ts, loss

    def step(self, batch: Batch) -> float:
        """One optimizer step on ``batch`` with tangent propagation; returns the training loss."""
        if self.step_count == 0:  # step 1: zero tangents, SGD's first-step branch: the eager step
            return super().step(batch)
        x, rest = split_batch(batch, "train_batch")
        if self.fmodel.autocast_dtype is not None:
            raise ValueError("compile=True: the compiled step does not run under torch.autocast; use compile=False "
                             "for bfloat16 mixed precision")
        self.step_count += 1
        raw = self._raw()
        if self._tensor_step:
            step: Tensor | int = torch.tensor(float(self.step_count), dtype=self.dtype, device=self.device)
        else:
            step = 2  # SGD's update only asks step == 1
        eye = torch.eye(self.q, dtype=raw.dtype, device=raw.device)
        params = tuple(p.detach() for p in self.fmodel.parameters())
        lookup = dict(self.fmodel.model.named_parameters())
        frozen = tuple(lookup[n].detach() for n in self.fmodel.frozen_names)
        with self.fmodel.mode(True):
            new_p, new_s, tp, ts, loss = self._compiled(
                params, tuple(self.state), tuple(self.tangent_params), tuple(self.tangent_state), raw, eye, step,
                frozen, x, tuple(rest))
        if not self._accept(loss, tuple(new_p)):
            return float(loss)
        self.state = tuple(new_s)
        self.tangents.discard()  # the propagator's packed caches do not describe these tensors
        self.tangents.commit(tuple(tp), tuple(ts))
        self.fmodel.write_back(new_p, ())
        return float(loss)
