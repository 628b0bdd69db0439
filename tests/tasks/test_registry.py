"""The task registry: names, descriptions, reproducibility from the seed, RNG hygiene, evaluation."""

import itertools
import random

import numpy as np
import pytest
import torch

import glocal
from glocal_bench import tasks
from glocal_bench.tasks.reweighting import REWEIGHTING_TASKS
from glocal_bench.tasks.suite import SUITE_TASKS

#: small overrides so every task builds and evaluates quickly
SMALL = {"mnist1d-mlp-large": {"num_train": 3000}, "mnist1d-mlp-large-adamw": {"num_train": 3000}}


def build(name, seed=0, **kw):
    return tasks.make(name, seed=seed, **{**SMALL.get(name, {}), **kw})


def test_names_and_describe():
    names = tasks.names()
    for expected in ("quadratic", "logistic-digits", "mnist1d-mlp", "mnist1d-cnn", "mnist1d-mlp-large"):
        assert expected in names and f"{expected}-adamw" in names
    described = tasks.describe()
    assert list(described) == names
    assert all(isinstance(v, str) and v and "\n" not in v for v in described.values())


def test_unknown_name_lists_known_tasks():
    with pytest.raises(ValueError, match=r"known tasks:.*quadratic.*mnist1d-mlp"):
        tasks.make("no-such-task")


def test_unknown_override_is_an_error():
    with pytest.raises(ValueError, match="unknown override"):
        tasks.make("quadratic", learning_rate=0.1)


def _snapshot(task):
    params = [p.detach().clone() for p in task.model.parameters()]
    data = [t.clone() for split in (task.train, task.val, task.test) for t in split]
    order = [b[1].clone() for b in itertools.islice(task.batches(), 3)]
    return params, data, order


def _equal(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("name", tasks.names())
def test_builds_reproducibly(name):
    rngs = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    t0, t0b, t1 = build(name, 0), build(name, 0), build(name, 1)
    assert torch.equal(torch.get_rng_state(), rngs[0])
    assert np.array_equal(np.random.get_state()[1], rngs[1])
    assert random.getstate() == rngs[2]

    assert isinstance(t0.space, glocal.HyperSpace)
    assert isinstance(t0.optimizer, glocal.optim.SGD | glocal.optim.AdamW)
    expected = {"lr", "weight_decay"} | ({"momentum"} if name.startswith(("logistic", "mnist1d", "digits", "diabetes"))
                                         and not name.endswith("adamw") else set())
    if name in REWEIGHTING_TASKS:  # loss weights, not optimizer hyperparameters (tests/reweighting)
        expected = {"class_weights"} if name == "mnist1d-imbalanced" else {"sample_weights"}
    assert set(t0.space.names) == expected
    p0, d0, o0 = _snapshot(t0)
    p0b, d0b, o0b = _snapshot(t0b)
    p1, _, o1 = _snapshot(t1)
    assert _equal(p0, p0b) and _equal(d0, d0b) and _equal(o0, o0b)
    assert not _equal(p0, p1)
    if not t0.full_batch:
        assert not _equal(o0, o1)
        # batches(seed) depends only on the seed given, not on the task's
        assert _equal([b[1] for b in itertools.islice(t0.batches(5), 3)],
                      [b[1] for b in itertools.islice(t1.batches(5), 3)])

    grid = t0.default_grid()
    if name in SUITE_TASKS:  # the no-regret suite's oracle: a small grid (lr x weight decay)
        assert set(grid) == {"lr", "weight_decay"} and len(t0.grid_configurations()) == 6
    elif name not in REWEIGHTING_TASKS:  # no grid over thousands of weights
        assert set(grid) == set(t0.space.names)
        assert 12 <= len(t0.grid_configurations()) <= 20
    assert all(v > 0 for values in grid.values() for v in values)

    metrics = t0.evaluate()
    keys = {"train_loss", "val_loss", "test_loss"}
    if t0.num_classes is not None:
        keys |= {"val_accuracy", "test_accuracy", "balanced_test_accuracy"}
    assert set(metrics) == keys
    assert all(np.isfinite(v) for v in metrics.values())
    assert t0.model.training  # evaluate restores the mode


def test_batches_cover_each_epoch_once():
    task = tasks.make("logistic-digits", batch_size=100)
    n, b = task.num_train, 100
    epoch = list(itertools.islice(task.batches(3), n // b))
    assert all(x.shape[0] == b for x, _ in epoch)
    rows = torch.cat([x for x, _ in epoch])
    assert torch.unique(rows, dim=0).shape[0] == rows.shape[0]  # no sample twice within an epoch


def test_generic_overrides():
    task = tasks.make("mnist1d-mlp", seed=2, total_steps=17, batch_size=32, init={"lr": 1e-3},
                      dtype=torch.float64, activation="tanh", num_train=500)
    assert task.total_steps == 17 and task.batch_size == 32
    assert task.space.to_dict()["lr"] == pytest.approx(1e-3)
    assert task.train[0].dtype == torch.float64 and task.num_train == 500
    assert all(p.dtype == torch.float64 for p in task.model.parameters())
    assert any(isinstance(m, torch.nn.Tanh) for m in task.model.modules())
    x, y = next(task.batches())
    assert x.shape == (32, 40) and y.dtype == torch.int64
    full = tasks.make("logistic-digits", batch_size=None)
    assert full.full_batch and next(full.batches())[0].shape[0] == full.num_train


def test_float32_and_float64_start_from_the_same_point():
    a = tasks.make("mnist1d-cnn", dtype=torch.float32)
    b = tasks.make("mnist1d-cnn", dtype=torch.float64)
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p.to(torch.float64), q)
