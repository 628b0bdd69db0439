"""The outer step on phi: :class:`RelativeSGD`, a per-coordinate, scale-free step with a trust region.

Hyperparameters live on very different scales: in log space the weight-decay coordinate of a
hypergradient is often 30-100x smaller than the learning-rate one, so one learning rate on raw phi
with a joint norm clip moves the learning rate and never the weight decay. Adam-like normalisation
by the followed hypergradient's own RMS fixes the scales but throws the estimate's magnitude away
(a Glocal estimate 3x its local value then steps exactly like Local).

``RelativeSGD`` measures each coordinate in units of its *local* hypergradient: the step is

    delta_i = -lr * g_i / rms_i,   clipped to |delta_i| <= max_step,

where g is the hypergradient being followed (``p.grad``: the local value for Local, the
extrapolated one for Glocal) and rms_i a running RMS (decay ``beta`` per update, bias-corrected)
of the local hypergradients ``set_reference`` was given. A local step is thus about ``lr`` in
every coordinate, and a Glocal estimate r times its local value moves r times as far, up to the
trust region ``max_step``. Without a reference (``set_reference`` never called: a plain
``torch.optim`` user) the followed hypergradient is its own reference (RMSprop without momentum).

Optionally (``etas=(grow, shrink)``) ``lr`` becomes a per-coordinate rate adapted as in iRprop-
(``torch.optim.Rprop``): it grows while the coordinate's hypergradient keeps its sign and shrinks,
with no step, when the sign flips, up to ``max_rate`` (default ``2 * lr``); the trust region scales
with it. Off by
default (measured in docs/benchmarks.md: it travels far along a consistent direction, which helps
and can also drive a learning rate into instability).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["RelativeSGD"]


class RelativeSGD(torch.optim.Optimizer):
    """Scale-free SGD on phi: steps of ``lr`` local-hypergradient RMS units, at most ``max_step`` each."""

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float = 0.1, beta: float = 0.9,
                 max_step: float = 0.3, eps: float = 1e-30,
                 etas: tuple[float, float] | None = None, max_rate: float | None = None) -> None:
        for name, value, low, high in (("lr", lr, 0.0, math.inf), ("max_step", max_step, 0.0, math.inf),
                                       ("eps", eps, 0.0, math.inf)):
            if not (low < value < high):
                raise ValueError(f"{name}={value!r}: expected a finite number > 0")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta={beta!r}: expected a number in [0, 1)")
        if etas is not None and not (0.0 < etas[1] <= 1.0 <= etas[0] < math.inf):
            raise ValueError(f"etas={etas!r}: expected (grow, shrink) with grow >= 1 and 0 < shrink <= 1")
        max_rate = 2.0 * lr if max_rate is None else max_rate  # by default a rate at most doubles
        if etas is not None and not lr <= max_rate < math.inf:
            raise ValueError(f"max_rate={max_rate!r}: expected a finite number >= lr={lr!r}")
        super().__init__(params, {"lr": lr, "beta": beta, "max_step": max_step, "eps": eps,
                                  "etas": None if etas is None else tuple(etas), "max_rate": max_rate})

    @torch.no_grad()
    def set_reference(self, param: Tensor, local: Tensor) -> None:
        """The local hypergradient of this update for ``param`` (scales the coordinates of the next step)."""
        if not any(p is param for g in self.param_groups for p in g["params"]):
            raise ValueError("param: expected a tensor this optimizer updates")
        local = torch.as_tensor(local, dtype=param.dtype, device=param.device).reshape(param.shape)
        self.state[param]["reference"] = local.clone()

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, beta, max_step, eps = group["lr"], group["beta"], group["max_step"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                reference = state.pop("reference", None)
                reference = g if reference is None else reference
                if "square" not in state:
                    state["square"] = torch.zeros_like(p)
                    state["count"] = 0
                state["count"] += 1
                state["square"] = beta * state["square"] + (1 - beta) * reference * reference  # not in place:
                # a loaded state_dict may share its tensors with another optimizer
                rms = (state["square"] / (1 - beta ** state["count"])).sqrt()
                ratio = torch.where(rms > eps, g / rms.clamp_min(eps), torch.zeros_like(g))
                etas = group.get("etas")
                if etas is None:
                    p.sub_((lr * ratio).clamp(-max_step, max_step))
                    continue
                rate = state.get("rate")
                rate = torch.full_like(p, lr) if rate is None else rate
                sign = torch.sign(g)
                previous = state.get("sign")
                if previous is not None:
                    agreement = sign * previous
                    rate = torch.where(agreement > 0, rate * etas[0], torch.where(agreement < 0, rate * etas[1], rate))
                    rate = rate.clamp(lr * etas[1] ** 8, group["max_rate"])
                    sign = torch.where(agreement < 0, torch.zeros_like(sign), sign)  # a flip: shrink, do not step
                state["rate"], state["sign"] = rate, sign
                step = rate * ratio.clamp(-max_step / lr, max_step / lr)
                p.sub_(torch.where(sign == 0, torch.zeros_like(step), step))
        return loss
