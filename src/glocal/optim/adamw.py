"""AdamW (decoupled weight decay), as ``torch.optim.AdamW``."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import torch
from torch import Tensor

from .base import Params, State, check_nonnegative, resolve


def safe_sqrt(x: Tensor) -> Tensor:
    """sqrt(x) for x >= 0 whose derivatives are zero (not NaN/inf) where x == 0.

    Adam's second moment is exactly zero for parameters that never received a gradient; the
    plain square root has an infinite derivative there, which poisons tangents and second
    derivatives with NaN. The double ``where`` keeps both branches finite.
    """
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))


class AdamW:
    """Differentiable ``torch.optim.AdamW`` (same update for the same hyperparameter values).

    Tunable by name: ``lr``, ``weight_decay``, ``beta1``, ``beta2``, ``eps``.
    """

    hyperparameter_names = ("lr", "weight_decay", "beta1", "beta2", "eps")

    def __init__(
        self,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        self.lr = check_nonnegative("lr", lr)
        if len(betas) != 2:
            raise ValueError(f"betas={betas!r}: expected a pair (beta1, beta2) with 0 <= beta < 1")
        self.beta1 = check_nonnegative("betas[0]", betas[0], upper=1.0)
        self.beta2 = check_nonnegative("betas[1]", betas[1], upper=1.0)
        self.eps = check_nonnegative("eps", eps)
        self.weight_decay = check_nonnegative("weight_decay", weight_decay)

    def defaults(self) -> dict[str, float]:
        return {"lr": self.lr, "weight_decay": self.weight_decay, "beta1": self.beta1, "beta2": self.beta2,
                "eps": self.eps}

    def init(self, params: Sequence[Tensor], tuned: Collection[str] = ()) -> State:
        """First moments then second moments, zeros."""
        return tuple(torch.zeros_like(p) for p in params) + tuple(torch.zeros_like(p) for p in params)

    def update(
        self, params: Params, state: State, grads: Params, hparams: Mapping[str, Tensor | float], step: int
    ) -> tuple[Params, State]:
        h = resolve(self, hparams)
        lr, wd, beta1, beta2, eps = h["lr"], h["weight_decay"], h["beta1"], h["beta2"], h["eps"]
        n = len(params)
        exp_avgs, exp_avg_sqs = state[:n], state[n:]
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        step_size = lr / bias_correction1
        new_params, new_m, new_v = [], [], []
        for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs, strict=True):
            p = p * (1 - lr * wd)
            m = m + (1 - beta1) * (g - m)  # torch's lerp
            v = beta2 * v + (1 - beta2) * g * g
            denom = safe_sqrt(v) / bias_correction2_sqrt + eps
            new_params.append(p - step_size * m / denom)
            new_m.append(m)
            new_v.append(v)
        return tuple(new_params), tuple(new_m) + tuple(new_v)

    def __repr__(self) -> str:
        return (f"AdamW(lr={self.lr:g}, betas=({self.beta1:g}, {self.beta2:g}), eps={self.eps:g}, "
                f"weight_decay={self.weight_decay:g})")
