"""The quadratic task's closed-form helpers agree with training its model (float64)."""

import math

import pytest
import torch

from glocal.hypergrad import ForwardEngine
from glocal_bench import tasks
from glocal_bench.tasks.quadratic import QuadraticProblem, gd_weights, ridge_solution, validation_loss


def train(task, steps, momentum=0.0):
    """Train the task's model with glocal.optim.SGD at its space's values (momentum constant)."""
    opt = task.optimizer
    params = tuple(p.detach() for p in task.model.parameters())
    hp = {**task.space.values(task.space.raw.detach()), "momentum": momentum}
    state = tuple(torch.zeros_like(p) for p in params) if momentum else ()
    for k, (x, y) in enumerate(task.batches()):
        if k == steps:
            break
        ps = tuple(p.requires_grad_(True) for p in params)
        loss = task.train_loss(torch.func.functional_call(task.model, {"weight": ps[0]}, (x,)), y)
        grads = torch.autograd.grad(loss, ps)
        params, state = opt.update(tuple(p.detach() for p in ps), state, grads, hp, k + 1)
    return params[0].reshape(-1)


@pytest.mark.parametrize("steps", [1, 7, 60])
def test_closed_form_gd_matches_training(steps):
    task = tasks.make("quadratic", seed=3, init={"lr": 0.3, "weight_decay": 0.05})
    problem = QuadraticProblem.of(task)
    exact = gd_weights(problem, 0.3, 0.05, steps)
    trained = train(task, steps)
    assert torch.allclose(trained, exact, rtol=0, atol=1e-10)


def test_closed_form_momentum_matches_training():
    task = tasks.make("quadratic", seed=1, momentum=0.8, init={"lr": 0.1, "weight_decay": 0.01, "momentum": 0.8})
    problem = QuadraticProblem.of(task)
    exact = gd_weights(problem, 0.1, 0.01, 40, momentum=0.8)
    trained = train(task, 40, momentum=0.8)
    assert torch.allclose(trained, exact, rtol=0, atol=1e-10)


def test_long_run_converges_to_ridge_and_optimal_weight_decay():
    task = tasks.make("quadratic")
    problem = QuadraticProblem.of(task)
    wd, loss = tasks.optimal_weight_decay(problem)
    ridge = ridge_solution(problem, wd)
    assert float(validation_loss(problem, ridge)) == pytest.approx(loss)
    for factor in (0.8, 1.25):  # a minimum in log weight decay
        assert float(validation_loss(problem, ridge_solution(problem, wd * factor))) > loss
    # the derivative of the ridge validation loss w.r.t. log wd vanishes there
    log_wd = torch.tensor(math.log(wd), dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(validation_loss(problem, ridge_solution(problem, log_wd.exp())), log_wd)
    assert abs(float(g)) < 1e-6
    w = gd_weights(problem, 0.5, wd, 100_000)
    assert torch.allclose(w, ridge, atol=1e-10)


def test_exact_hypergradient_matches_forward_engine():
    steps = 25
    task = tasks.make("quadratic", seed=0)
    hp = task.space.to_dict()
    exact = tasks.quadratic_exact(task, hp["lr"], hp["weight_decay"], steps)
    engine = ForwardEngine(task.model, task.optimizer, task.space, task.train_loss, task.val_loss)
    for _, batch in zip(range(steps), task.batches(), strict=False):
        engine.step(batch)
    loss, h = engine.hypergradient(task.val)
    assert loss == pytest.approx(exact.val_loss, rel=1e-12)
    assert torch.allclose(h, torch.tensor([exact.hypergradient["lr"], exact.hypergradient["weight_decay"]],
                                          dtype=h.dtype), rtol=1e-9, atol=1e-12)
    assert torch.allclose(next(task.model.parameters()).reshape(-1), exact.weights, atol=1e-10)
