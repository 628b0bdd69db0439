"""The Tuner's records: one per step, record point and window, with the values the Tuner used."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import glocal
from glocal.records import KINDS, Record, window_record
from glocal.strategies import WindowEstimate


def _problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(224, 6, generator=g)
    y = (x[:, :3] + 0.3 * torch.randn(224, 3, generator=g)).argmax(1)
    return model, [(x[i:i + 32], y[i:i + 32]) for i in range(0, 192, 32)], (x[192:], y[192:])


def _tuner(strategy, listeners, space=None):
    model, batches, val = _problem()
    space = space or glocal.HyperSpace(lr=glocal.Log(0.05), momentum=glocal.Logit(0.5))
    tuner = glocal.Tuner(model, glocal.optim.SGD(momentum=0.5), space, F.cross_entropy, F.cross_entropy, strategy,
                         torch.optim.SGD([space.raw], lr=1.0), val=val, listeners=listeners)
    return tuner, batches


def test_records_follow_steps_record_points_and_windows():
    seen: list[Record] = []
    tuner, batches = _tuner(glocal.Glocal(window=10, total_steps=30, record_every=2), [seen.append])
    for i in range(30):
        tuner.step(batches[i % len(batches)])
    assert {r.kind for r in seen} <= set(KINDS)
    steps = [r for r in seen if r.kind == "step"]
    assert [r.step for r in steps] == list(range(1, 31))
    assert [r.scalars["train/loss"] for r in steps] == tuner.history.train_loss
    vals = [r for r in seen if r.kind == "val"]
    assert [r.step for r in vals] == tuner.history.val_steps
    assert [r.scalars["val/loss"] for r in vals] == tuner.history.val_loss
    windows = [r for r in seen if r.kind == "window"]
    assert [r.step for r in windows] == [10, 20, 30]
    for record, entry in zip(windows, tuner.history.windows, strict=True):
        assert record.scalars["hparams/lr"] == pytest.approx(entry["hparams"]["lr"], rel=1e-12)
        assert record.scalars["hparams/momentum"] == pytest.approx(entry["hparams"]["momentum"], rel=1e-12)
        assert [record.scalars["hypergrad_local/lr"], record.scalars["hypergrad_local/momentum"]] == pytest.approx(
            entry["local"], rel=1e-12)
        assert [record.scalars["hypergrad_used/lr"], record.scalars["hypergrad_used/momentum"]] == pytest.approx(
            entry["used"], rel=1e-12)
        assert record.scalars["hypergrad/norm"] == pytest.approx(entry["norm"])
        assert record.scalars["window/fell_back"] == float(entry["fell_back"])
        assert "estimator/rank" in record.scalars and "estimator/rows_ahead" in record.scalars
        assert all(math.isfinite(v) for v in record.scalars.values())
    # the last record's hyperparameters are the tuner's current ones
    assert windows[-1].scalars["hparams/lr"] == pytest.approx(tuner.hparams["lr"], rel=1e-12)


def test_vector_hyperparameters_are_per_element_or_summarised():
    space = glocal.HyperSpace(lr=glocal.Log(0.05), class_weights=glocal.Log(torch.ones(3)))
    seen: list[Record] = []

    def loss(output, target, hparams=None):
        w = hparams["class_weights"] if hparams is not None else torch.ones(3)
        return (F.cross_entropy(output, target, reduction="none") * w[target]).mean()

    model, batches, val = _problem()
    tuner = glocal.Tuner(model, glocal.optim.SGD(), space, loss, F.cross_entropy, glocal.Local(window=3),
                         torch.optim.SGD([space.raw], lr=1.0), val=val, listeners=[seen.append])
    for b in batches[:3]:
        tuner.step(b)
    (window,) = [r for r in seen if r.kind == "window"]
    assert {"hparams/class_weights[0]", "hparams/class_weights[2]", "hypergrad_used/class_weights[1]"} <= set(
        window.scalars)
    long = glocal.HyperSpace(dtype=torch.float64, lr=glocal.Log(0.1), w=glocal.Log(torch.arange(1.0, 101.0)))
    entry = {"hparams": long.to_dict(), "local": list(range(101)), "fell_back": False}
    record = window_record(7, long, entry)
    assert record.step == 7 and record.scalars["hparams/lr"] == pytest.approx(0.1)
    assert record.scalars["hparams/w/mean"] == pytest.approx(50.5)
    assert record.scalars["hparams/w/max"] == pytest.approx(100.0)
    assert record.scalars["hypergrad_local/lr"] == 0.0 and record.scalars["hypergrad_local/w/min"] == 1.0
    assert not any("[" in tag for tag in record.scalars)


class _Reckless:
    """A strategy that asks for an absurd learning rate (log lr + 40) at its first window end."""

    name, window, record_every, mode = "reckless", 2, 2, "forward"

    def estimate(self, trajectory, window_end):
        return WindowEstimate(hypergradient=torch.full_like(trajectory[-1], -40.0), local=trajectory[-1])


def test_a_divergence_and_its_reverted_update_are_recorded():
    seen: list[Record] = []
    model, batches, val = _problem()
    space = glocal.HyperSpace(lr=glocal.Log(0.05, high=1e30))  # bounds wide enough to let it diverge
    tuner = glocal.Tuner(model, glocal.optim.SGD(), space, F.cross_entropy, F.cross_entropy, _Reckless(),
                         torch.optim.SGD([space.raw], lr=1.0), val=val, clip_norm=None, listeners=[seen.append])
    for b in batches[:4]:  # the update at step 2 blows the model up; step 4's loss diverges
        tuner.step(b)
    assert tuner.divergences == 1
    diverged = [r for r in seen if r.kind == "step" and "train/diverged" in r.scalars]
    assert [r.step for r in diverged] == [4]
    (revert,) = [r for r in seen if r.kind == "revert"]
    assert revert.step == 4 and revert.scalars == {"window/reverted": 1.0}
