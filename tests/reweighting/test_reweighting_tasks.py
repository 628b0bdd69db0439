"""The reweighting tasks: data profile, reproducibility, indexed batches, metrics, experiment records."""

import itertools
import json
import random

import numpy as np
import pytest
import torch

from glocal_bench import experiment, tasks
from glocal_bench.tasks.reweighting import (
    REWEIGHTING_TASKS,
    corrupted_mask,
    long_tail_counts,
    noisy_weight_metrics,
)


def test_registered():
    assert set(REWEIGHTING_TASKS) <= set(tasks.names())
    assert tasks.make("mnist1d-noisy").mode == "reverse"
    assert tasks.make("mnist1d-imbalanced").mode == "forward"


def test_imbalanced_profile_and_balanced_evaluation_sets():
    rngs = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    task = tasks.make("mnist1d-imbalanced", seed=0)
    assert torch.equal(torch.get_rng_state(), rngs[0]) and random.getstate() == rngs[2]
    assert np.array_equal(np.random.get_state()[1], rngs[1])
    counts = torch.bincount(task.train[1], minlength=10).tolist()
    assert counts == long_tail_counts(600, 50.0) and counts[0] / counts[-1] == pytest.approx(50, rel=0.05)
    assert torch.bincount(task.val[1]).tolist() == [50] * 10
    assert torch.bincount(task.test[1]).tolist() == [100] * 10
    assert task.space.names == ("class_weights",) and len(task.space) == 10
    # splits disjoint: no training row appears in val or test
    rows = torch.cat([task.train[0], task.val[0], task.test[0]])
    assert torch.unique(rows, dim=0).shape[0] == rows.shape[0]
    again, other = tasks.make("mnist1d-imbalanced", seed=1), tasks.make("mnist1d-imbalanced", data_seed=1)
    assert torch.equal(again.train[0], task.train[0]) and not torch.equal(other.train[0], task.train[0])
    assert torch.equal(other.test[0], task.test[0])  # evaluation sets do not depend on the data seed
    metrics = task.evaluate()
    assert {"test_accuracy", "balanced_test_accuracy", "train_loss"} <= set(metrics)
    extra = task.extra_metrics()
    assert len(extra["test_recall_per_class"]) == 10 and 0 <= extra["tail_test_accuracy"] <= 1


def test_noisy_labels_and_indexed_batches():
    task = tasks.make("mnist1d-noisy", seed=0)
    bad = corrupted_mask(task)
    assert int(bad.sum()) == round(0.4 * task.num_train)
    assert tasks.make("mnist1d-noisy", seed=1).train[1].equal(task.train[1])
    assert not tasks.make("mnist1d-noisy", data_seed=1).train[1].equal(task.train[1])
    assert len(task.space) == task.num_train and task.indexed_batches
    for x, y, idx in itertools.islice(task.batches(3), 3):
        assert torch.equal(x, task.train[0][idx]) and torch.equal(y, task.train[1][idx])
    metrics = task.evaluate()  # the weighted train loss is evaluated as plain cross entropy
    assert np.isfinite(metrics["train_loss"])
    extra = task.extra_metrics()
    assert extra["weight_auc"] == pytest.approx(0.5) and extra["clean_weight_mean"] == pytest.approx(1.0)
    # weights that mark every corrupted sample: perfect separation
    task.space.set(sample_weights=torch.where(bad, 0.1, 2.0).to(torch.float64))
    extra = task.extra_metrics()
    assert extra["weight_auc"] == pytest.approx(1.0) and extra["corrupted_fraction_lowest40"] == pytest.approx(1.0)
    assert extra["clean_weight_mean"] == pytest.approx(2.0) and extra["corrupted_weight_mean"] == pytest.approx(0.1)


def test_weight_metrics_ranks():
    w = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5])
    bad = torch.tensor([False, True, False, True, False])
    m = noisy_weight_metrics(w, bad)
    # AUC: P(clean > corrupted) over the 6 pairs: (0.3>0.2), (0.5>0.2), (0.5>0.4) -> 3/6
    assert m["weight_auc"] == pytest.approx(0.5)
    assert m["corrupted_fraction_lowest40"] == pytest.approx(0.5)  # lowest two: 0.1 (clean), 0.2 (bad)


def test_experiment_record_carries_task_metrics_and_stays_small(tmp_path):
    settings = experiment.Settings(window=5, record_every=1, steps=10, hyper_optimizer="adam", hyper_lr=0.1)
    record = experiment.run("mnist1d-noisy", "glocal", 0, settings)
    assert {"clean_weight_mean", "corrupted_weight_mean", "corrupted_fraction_lowest40", "weight_auc"} <= set(record)
    assert record["inner_steps"] == 10 and len(record["windows"]) == 2
    window = record["windows"][0]
    assert "local" not in window and window["local_norm"] > 0  # 3000-vectors summarised
    assert isinstance(record["hparam_trajectory"][-1]["sample_weights"], dict)
    assert len(record["hparams"]["sample_weights"]) == 3000
    text = json.dumps(record)
    assert len(text) < 200_000
    from glocal_bench import report

    report.write_report(tmp_path, [record], "noisy")  # the plots cope with q = 3000
    assert (tmp_path / "report.md").exists()
