"""Baselines: hypergradient descent against a hand-written reference, schedule-free and Prodigy runs."""

import sys

import pytest
import torch

from glocal import HyperSpace, Log
from glocal_bench import baselines, experiment, tasks
from glocal_bench.baselines import HypergradientDescent, MissingExtra, refresh_batchnorm

SHORT = experiment.Settings(steps=30, window=10, curve_points=3)


def test_sgd_hd_matches_a_hand_written_reference_in_float64():
    """Plain SGD (no momentum, no wd) with HD: lr_t = lr_{t-1} + beta g_t . g_{t-1} (Baydin et al. eq. 6)."""
    task = tasks.make("quadratic", seed=0, total_steps=20)
    params = [p for p in task.model.parameters() if p.requires_grad]
    reference = [p.detach().clone() for p in params]
    hd = HypergradientDescent(task, beta=1e-2)
    hd.hparams["weight_decay"] = 0.0
    lr, beta, previous = hd.lr, 1e-2, None
    batches = task.batches(0)
    for _ in range(10):
        x, y = next(batches)
        loss = task.train_loss(task.model(x), y)
        grads = torch.autograd.grad(loss, params)
        hd.step(list(grads))
        if previous is not None:
            lr = lr + beta * sum(float((g * u).sum()) for g, u in zip(grads, previous, strict=True))
        reference = [r - lr * g for r, g in zip(reference, grads, strict=True)]
        previous = [g.clone() for g in grads]
        for p, r in zip(params, reference, strict=True):
            torch.testing.assert_close(p.detach(), r, rtol=1e-12, atol=1e-12)
    assert hd.lr == pytest.approx(lr, rel=1e-12)
    assert hd.lr != pytest.approx(task.space.to_dict()["lr"])


def test_hd_keeps_the_learning_rate_positive():
    task = tasks.make("quadratic", seed=0, total_steps=5)
    hd = HypergradientDescent(task, beta=1e6)
    params = [p for p in task.model.parameters() if p.requires_grad]
    for _ in range(3):
        hd.step([torch.ones_like(p) for p in params])
        hd.step([-torch.ones_like(p) for p in params])  # anti-aligned: a huge negative lr step
    assert hd.lr >= hd.min_lr > 0


@pytest.mark.parametrize("strategy", ["hd", "schedulefree", "prodigy"])
@pytest.mark.parametrize("task", ["logistic-digits", "logistic-digits-adamw"])
def test_baseline_records_like_the_other_strategies(task, strategy):
    record = experiment.run(task, strategy, 0, SHORT)
    assert record["strategy"] == strategy and record["inner_steps"] == 30
    assert len(record["curve"]) == 3 and all(v == v for _, v in record["curve"])
    fixed = experiment.run(task, "fixed", 0, SHORT)
    assert record["final_val_loss"] != fixed["final_val_loss"]  # it trained differently from the fixed run
    assert record["final_val_loss"] < 2.3  # and it trained (ln 10 = 2.30 at chance)
    assert "lr" in record["hparams"]


def test_hd_chooses_the_variant_of_the_task_optimizer():
    assert HypergradientDescent(tasks.make("logistic-digits")).beta == baselines.HD_BETA["sgd"]
    assert HypergradientDescent(tasks.make("logistic-digits-adamw")).beta == baselines.HD_BETA["adamw"]


def test_schedulefree_is_evaluated_at_its_averaged_weights_with_batchnorm_refreshed():
    record = experiment.run("digits-cnn-bn", "schedulefree", 0, SHORT)
    assert record["final_val_loss"] < 2.3


def test_refresh_batchnorm_recomputes_running_statistics():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    x = torch.randn(100, 3) * 5 + 2
    refresh_batchnorm(model, x, chunk=100)
    with torch.no_grad():
        h = model[0](x)
    torch.testing.assert_close(model[1].running_mean, h.mean(0))
    assert model[1].momentum == 0.1 and model.training


def test_missing_extra_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "prodigyopt", None)  # makes `import prodigyopt` raise ImportError
    with pytest.raises(MissingExtra, match=r"pip install 'glocal\[baselines\]'") as info:
        baselines.check_available("prodigy")
    assert "\n" not in str(info.value)


def test_vector_hyperparameters_are_rejected():
    task = tasks.make("logistic-digits", seed=0, total_steps=5)
    task.space = HyperSpace(lr=Log(0.05), class_weights=Log(torch.ones(10)))  # as the reweighting tasks
    with pytest.raises(ValueError, match="vector"):
        baselines.run_baseline(task, "hd", 0, 5, experiment.validation_loss)
