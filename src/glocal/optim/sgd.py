"""SGD with momentum, dampening, Nesterov and L2 weight decay, as ``torch.optim.SGD``."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import torch
from torch import Tensor

from .base import HparamTangent, Params, State, add_row, check_nonnegative, resolve


class SGD:
    """Differentiable ``torch.optim.SGD`` (same update for the same hyperparameter values).

    ``lr``, ``momentum``, ``weight_decay`` and ``dampening`` may be overridden per step by
    hyperparameters of the same name (tensors, differentiated through).
    """

    hyperparameter_names = ("lr", "momentum", "weight_decay", "dampening")

    def __init__(
        self,
        lr: float = 1e-3,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        dampening: float = 0.0,
    ) -> None:
        self.lr = check_nonnegative("lr", lr)
        self.momentum = check_nonnegative("momentum", momentum, upper=1.0)
        self.weight_decay = check_nonnegative("weight_decay", weight_decay)
        self.dampening = check_nonnegative("dampening", dampening, upper=1.0 + 1e-12)
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov=True requires momentum > 0 and dampening = 0 (as torch.optim.SGD)")

    def uses_momentum(self, tuned: Collection[str] = ()) -> bool:
        return self.momentum != 0 or "momentum" in tuned

    def defaults(self) -> dict[str, float]:
        return {"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay,
                "dampening": self.dampening}

    def init(self, params: Sequence[Tensor], tuned: Collection[str] = ()) -> State:
        """Momentum buffers (zeros) when momentum is used, else an empty state."""
        if not self.uses_momentum(tuned):
            return ()
        return tuple(torch.zeros_like(p) for p in params)

    def update(
        self, params: Params, state: State, grads: Params, hparams: Mapping[str, Tensor | float], step: int
    ) -> tuple[Params, State]:
        h = resolve(self, hparams)
        lr, momentum, wd, dampening = h["lr"], h["momentum"], h["weight_decay"], h["dampening"]
        new_params: list[Tensor] = []
        new_state: list[Tensor] = []
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            if not (isinstance(wd, float) and wd == 0.0):
                g = g + wd * p
            if state:
                # torch.optim initialises the buffer with the first gradient (no dampening).
                buf = g if step == 1 else momentum * state[i] + (1 - dampening) * g
                new_state.append(buf)
                g = g + momentum * buf if self.nesterov else buf
            new_params.append(p - lr * g)
        return tuple(new_params), tuple(new_state)

    def linearized_update(
        self, params: Tensor, state: State, grads: Tensor, hparams: Mapping[str, Tensor | float], step: int,
        t_params: Tensor, t_state: State, t_grads: Tensor | None, slopes: Mapping[str, HparamTangent],
    ) -> tuple[Tensor, State, Tensor, State]:
        """``update`` on flat tensors and its exact tangents, derived by hand (see ``base.linearized``).

        The product rule written out: about ten (q, p) tensor operations, where forward-mode AD of
        ``update`` costs several times that on the CPU (dual-tensor bookkeeping, broadcast (q, 1)
        duals). Checked against forward-mode AD of ``update`` in tests/optim.
        """
        h = resolve(self, hparams)
        lr, momentum, wd, dampening = h["lr"], h["momentum"], h["weight_decay"], h["dampening"]
        g, dg = grads, t_grads
        if not (isinstance(wd, float) and wd == 0.0):
            g = g + wd * params
            dg = t_params * wd if dg is None else torch.add(dg, t_params * wd)
            add_row(dg, slopes, "weight_decay", params)
        elif dg is None:
            dg = torch.zeros_like(t_params)
        new_state: tuple[Tensor, ...] = ()
        new_t_state: tuple[Tensor, ...] = ()
        if state:
            if step == 1:  # (never hand an input tensor back as state: the caller may reuse it)
                buf, dbuf = g, (dg.clone() if dg is t_grads else dg)
            else:
                buf = momentum * state[0] + (1 - dampening) * g
                dbuf = torch.add(t_state[0] * momentum, dg * (1 - dampening))
                add_row(dbuf, slopes, "momentum", state[0])
                add_row(dbuf, slopes, "dampening", -g)
            new_state, new_t_state = (buf,), (dbuf,)
            if self.nesterov:
                g, dg = g + momentum * buf, torch.add(dg, dbuf * momentum)
                add_row(dg, slopes, "momentum", buf)
            else:
                g, dg = buf, dbuf
        new_t_params = torch.sub(t_params, dg * lr)
        add_row(new_t_params, slopes, "lr", -g)
        return params - lr * g, new_state, new_t_params, new_t_state

    def __repr__(self) -> str:
        return (f"SGD(lr={self.lr:g}, momentum={self.momentum:g}, weight_decay={self.weight_decay:g}, "
                f"nesterov={self.nesterov}, dampening={self.dampening:g})")
