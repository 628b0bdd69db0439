"""``quadratic``: a linear-regression bilevel problem with exact (closed-form) answers.

Inner problem: minimise the mean squared error of a bias-free linear model on an ill-conditioned
synthetic training set (condition number ~1e3, so gradient descent converges slowly and the step
budget matters) plus L2 weight decay; outer problem: the MSE on a separate validation set.
Full batch, float64 by default. The helpers below compute in float64 closed form what training
the task's model with ``glocal.optim.SGD`` produces, so tests can check engines and strategies:

* gradient of the training objective: ``A w - b`` with ``A = 2/n X^T X + wd I``, ``b = 2/n X^T y``;
* plain GD: ``w_k = w* + (I - lr A)^k (w_0 - w*)`` with ``w* = A^{-1} b`` (the ridge solution);
* heavy ball (torch's momentum SGD): the linear recurrence on (w, buffer), by a matrix power;
* the exact hypergradient of the final validation loss w.r.t. (log lr, log wd[, logit momentum]);
* the validation-optimal ridge weight decay (the T -> infinity answer for weight decay).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .base import Split, Task, log_grid, mse, optimizer_and_space, seeded_init, to_split

__all__ = [
    "QuadraticExact",
    "QuadraticProblem",
    "gd_weights",
    "make_quadratic",
    "optimal_weight_decay",
    "quadratic_exact",
    "ridge_solution",
    "validation_loss",
]

F64 = torch.float64


@dataclass
class QuadraticProblem:
    """The float64 data of a quadratic task and its model's initial weight ``w0`` (shape (d,))."""

    x: Tensor
    y: Tensor
    x_val: Tensor
    y_val: Tensor
    w0: Tensor

    @classmethod
    def of(cls, task: Task) -> QuadraticProblem:
        """The problem of a ``quadratic`` task (reads the model's current weight as ``w0``)."""
        weight = next(iter(task.model.parameters())).detach()
        return cls(task.train[0].detach().cpu().to(F64), task.train[1].detach().cpu().to(F64),
                   task.val[0].detach().cpu().to(F64), task.val[1].detach().cpu().to(F64),
                   weight.reshape(-1).cpu().to(F64))

    def system(self, weight_decay: Tensor | float) -> tuple[Tensor, Tensor]:
        """(A, b): the training gradient at w is ``A w - b``."""
        n, d = self.x.shape
        a = (2.0 / n) * self.x.T @ self.x + weight_decay * torch.eye(d, dtype=F64)
        b = (2.0 / n) * self.x.T @ self.y
        return a, b


def ridge_solution(problem: QuadraticProblem, weight_decay: Tensor | float) -> Tensor:
    """w* = A^{-1} b: the limit of gradient descent (any stable lr) with this weight decay."""
    a, b = problem.system(weight_decay)
    return torch.linalg.solve(a, b)


def validation_loss(problem: QuadraticProblem, w: Tensor) -> Tensor:
    """Mean squared error of weight ``w`` on the validation split."""
    return ((problem.x_val @ w - problem.y_val) ** 2).mean()


def gd_weights(problem: QuadraticProblem, lr: Tensor | float, weight_decay: Tensor | float, steps: int,
               momentum: Tensor | float = 0.0) -> Tensor:
    """Weights after ``steps`` steps of full-batch ``torch.optim.SGD`` from ``problem.w0``, closed form.

    Plain GD uses the eigendecomposition of ``X^T X`` (weight decay only shifts its eigenvalues);
    with momentum the first step is plain (torch initialises the buffer with the gradient) and the
    rest is a matrix power of the 2d x 2d recurrence on (w, buffer). Differentiable in lr, wd, momentum.
    """
    lr, wd, mom = (torch.as_tensor(v, dtype=F64) for v in (lr, weight_decay, momentum))
    if steps == 0:
        return problem.w0.clone()
    n, d = problem.x.shape
    a, b = problem.system(wd)
    if not (isinstance(momentum, float) and momentum == 0.0):
        buf = a @ problem.w0 - b
        w = problem.w0 - lr * buf
        eye = torch.eye(d, dtype=F64)
        # state (w, buf): buf' = m buf + A w - b ; w' = w - lr buf'
        top = torch.cat([eye - lr * a, -lr * mom * eye], dim=1)
        bottom = torch.cat([a, mom * eye], dim=1)
        m = torch.cat([top, bottom], dim=0)
        c = torch.cat([lr * b, -b])
        # z_k = M^k z_0 + (I - M)^{-1} (I - M^k) c
        mk = torch.linalg.matrix_power(m, steps - 1)
        z0 = torch.cat([w, buf])
        eye2 = torch.eye(2 * d, dtype=F64)
        z = mk @ z0 + torch.linalg.solve(eye2 - m, (eye2 - mk) @ c)
        return z[:d]
    evals, evecs = torch.linalg.eigh((2.0 / n) * problem.x.T @ problem.x)
    lam = evals + wd
    proj_b = evecs.T @ b
    star = proj_b / lam
    start = evecs.T @ problem.w0
    return evecs @ (star + (1 - lr * lam) ** steps * (start - star))


@dataclass
class QuadraticExact:
    """Closed-form results of one fixed-hyperparameter GD run on a quadratic problem."""

    weights: Tensor                  # w_T, shape (d,)
    val_loss: float                  # L_val(w_T)
    hypergradient: dict[str, float]  # d L_val(w_T) / d raw, by name: log lr, log wd[, logit momentum]
    ridge: Tensor                    # w* for this weight decay (the T -> infinity limit)
    ridge_val_loss: float


def quadratic_exact(problem: QuadraticProblem | Task, lr: float, weight_decay: float, steps: int,
                    momentum: float = 0.0) -> QuadraticExact:
    """Exact final weights, validation loss and hypergradient (w.r.t. the raw, i.e. log/logit, values)."""
    if isinstance(problem, Task):
        problem = QuadraticProblem.of(problem)
    log_lr = torch.tensor(math.log(lr), dtype=F64, requires_grad=True)
    log_wd = torch.tensor(math.log(weight_decay), dtype=F64, requires_grad=True)
    leaves = {"lr": log_lr, "weight_decay": log_wd}
    mom: Tensor | float = 0.0
    if momentum != 0.0:
        logit_m = torch.tensor(math.log(momentum / (1 - momentum)), dtype=F64, requires_grad=True)
        leaves["momentum"] = logit_m
        mom = torch.sigmoid(logit_m)
    w = gd_weights(problem, log_lr.exp(), log_wd.exp(), steps, mom)
    loss = validation_loss(problem, w)
    grads = torch.autograd.grad(loss, list(leaves.values()))
    ridge = ridge_solution(problem, weight_decay)
    return QuadraticExact(
        weights=w.detach(), val_loss=float(loss.detach()),
        hypergradient={k: float(g) for k, g in zip(leaves, grads, strict=True)},
        ridge=ridge, ridge_val_loss=float(validation_loss(problem, ridge)),
    )


def optimal_weight_decay(problem: QuadraticProblem | Task, low: float = 1e-8, high: float = 1e2
                         ) -> tuple[float, float]:
    """(wd, val loss) of the validation-optimal ridge solution, by a log grid then golden section."""
    if isinstance(problem, Task):
        problem = QuadraticProblem.of(problem)

    def f(log_wd: float) -> float:
        return float(validation_loss(problem, ridge_solution(problem, math.exp(log_wd))))

    grid = torch.linspace(math.log(low), math.log(high), 201, dtype=F64).tolist()
    values = [f(g) for g in grid]
    i = min(range(len(values)), key=values.__getitem__)
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(80):
        c, d = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if f(c) < f(d):
            hi = d
        else:
            lo = c
    best = (lo + hi) / 2
    return math.exp(best), f(best)


def _data(dim: int, num_train: int, num_val: int, num_test: int, condition: float, noise: float,
          data_seed: int) -> tuple[Split, Split, Split]:
    """Gaussian inputs with covariance eigenvalues log-spaced in [1/condition, 1] (random rotation)."""
    gen = torch.Generator().manual_seed(data_seed)
    scales = torch.logspace(0, -math.log10(condition), dim, dtype=F64).sqrt()
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=F64))
    w_true = torch.randn(dim, generator=gen, dtype=F64)

    def sample(n: int) -> Split:
        x = (torch.randn(n, dim, generator=gen, dtype=F64) * scales) @ rotation.T
        return x, x @ w_true + noise * torch.randn(n, generator=gen, dtype=F64)

    return sample(num_train), sample(num_val), sample(num_test)


def make_quadratic(seed: int = 0, *, optimizer: str = "sgd", dtype: torch.dtype = F64,
                   device: torch.device | str | None = None, dim: int = 20, num_train: int = 200,
                   num_val: int = 200, num_test: int = 1000, condition: float = 1e3, noise: float = 1.0,
                   data_seed: int = 0, momentum: float | None = None) -> Task:
    """The quadratic task; the data depend on ``data_seed`` only, the model's init on ``seed``.

    SGD: plain full-batch GD tuning log lr and log weight decay (pass ``momentum`` to also tune
    it). AdamW: tunes log lr and log weight decay.
    """
    train, val, test = _data(dim, num_train, num_val, num_test, condition, noise, data_seed)
    with seeded_init(seed):
        model = nn.Linear(dim, 1, bias=False)
    model = model.to(dtype=dtype, device=device)
    if optimizer == "sgd":
        lr, wd = 0.1, 1e-2
        grid = {"lr": log_grid(0.1, 2.0, 4), "weight_decay": log_grid(1e-2, 10.0, 4)}
        if momentum is not None:
            grid = {"lr": log_grid(0.25, 2.0, 4), "weight_decay": log_grid(1e-3, 10.0, 2),
                    "momentum": [0.5, 0.9]}
    else:
        lr, wd = 0.03, 0.1
        grid = {"lr": log_grid(0.03, 3.0, 4), "weight_decay": log_grid(0.1, 10.0, 4)}
    opt, space = optimizer_and_space(optimizer, lr, wd, momentum, dtype, device)
    return Task(
        name="quadratic" if optimizer == "sgd" else "quadratic-adamw",
        model=model, optimizer=opt, space=space,
        train=to_split(*train, dtype, device, regression=True),
        val=to_split(*val, dtype, device, regression=True),
        test=to_split(*test, dtype, device, regression=True),
        batch_size=None, total_steps=200, train_loss=mse, val_loss=mse, num_classes=None, seed=seed,
        description=f"linear regression {num_train}x{dim}, condition {condition:g}, full-batch GD, MSE",
        grid=grid,
    )
