"""AdamW (decoupled weight decay), as ``torch.optim.AdamW``."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import torch
from torch import Tensor

from .base import HparamTangent, Params, State, add_row, check_nonnegative, resolve


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

    def linearized_update(
        self, params: Tensor, state: State, grads: Tensor, hparams: Mapping[str, Tensor | float], step: int,
        t_params: Tensor, t_state: State, t_grads: Tensor | None, slopes: Mapping[str, HparamTangent],
    ) -> tuple[Tensor, State, Tensor, State]:
        """``update`` on flat tensors and its exact tangents, derived by hand (see ``SGD.linearized_update``).

        Checked against forward-mode AD of ``update`` in tests/optim (every hyperparameter tuned).
        """
        h = resolve(self, hparams)
        lr, wd, beta1, beta2, eps = h["lr"], h["weight_decay"], h["beta1"], h["beta2"], h["eps"]
        m, v = state
        dm, dv = t_state
        g, dg = grads, t_grads
        # p1 = p (1 - lr wd)
        decay = 1 - lr * wd
        p1 = params * decay
        dp1 = t_params * decay
        add_row(dp1, slopes, "lr", -wd * params)
        add_row(dp1, slopes, "weight_decay", -lr * params)
        # m1 = m + (1 - b1)(g - m), v1 = b2 v + (1 - b2) g^2
        m1 = m + (1 - beta1) * (g - m)
        dm1 = dm * beta1 if dg is None else torch.add(dm * beta1, dg * (1 - beta1))
        add_row(dm1, slopes, "beta1", m - g)
        g2 = g * g
        v1 = beta2 * v + (1 - beta2) * g * g
        dv1 = dv * beta2 if dg is None else torch.add(dv * beta2, dg * (2 * (1 - beta2) * g))
        add_row(dv1, slopes, "beta2", v - g2)
        # bias corrections (scalars) and their derivatives along beta1 / beta2
        bc1 = 1 - beta1**step
        bc2_sqrt = (1 - beta2**step) ** 0.5
        step_size = lr / bc1
        root = safe_sqrt(v1)
        denom = root / bc2_sqrt + eps
        update = m1 / denom
        # d denom = d root / bc2_sqrt - root d bc2_sqrt / bc2_sqrt^2 + d eps, d root = d v1 / (2 root) (0 at v1 = 0)
        inv_two_root = torch.where(root > 0, 0.5 / torch.where(root > 0, root, torch.ones_like(root)),
                                   torch.zeros_like(root))
        ddenom = dv1 * (inv_two_root / bc2_sqrt)
        if "beta2" in slopes:  # d bc2_sqrt / d beta2 = -step beta2^(step-1) / (2 bc2_sqrt)
            dbc2 = -step * beta2 ** (step - 1) / (2 * bc2_sqrt)
            add_row(ddenom, slopes, "beta2", -root * (dbc2 / bc2_sqrt**2))
        if "eps" in slopes:
            add_row(ddenom, slopes, "eps", torch.ones_like(root))
        # p2 = p1 - step_size m1 / denom
        dupdate = torch.sub(dm1, ddenom * update) / denom
        dp2 = torch.sub(dp1, dupdate * step_size)
        add_row(dp2, slopes, "lr", -update / bc1)
        if "beta1" in slopes:  # d step_size / d beta1 = lr step beta1^(step-1) / bc1^2
            add_row(dp2, slopes, "beta1", -update * (lr * step * beta1 ** (step - 1) / bc1**2))
        return p1 - step_size * m1 / denom, (m1, v1), dp2, (dm1, dv1)

    def __repr__(self) -> str:
        return (f"AdamW(lr={self.lr:g}, betas=({self.beta1:g}, {self.beta2:g}), eps={self.eps:g}, "
                f"weight_decay={self.weight_decay:g})")
