"""Failures inside the online loop never corrupt phi or the model, and are counted.

Paths: a hyper-optimizer step that makes phi non-finite, divergence detection switched off
(``divergence_factor=None``), bad ``divergence_factor`` values.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.nn import functional as F
from tuner_helpers import Scripted, problem, tuner_for

import glocal
from glocal.strategies import WindowEstimate


def finite_model(model) -> bool:
    return all(torch.isfinite(p).all() for p in model.state_dict().values())


def test_a_hyper_step_that_makes_phi_non_finite_is_undone_and_counted():
    tuner, batches = tuner_for(Scripted(2, [([1.0, -1.0], False), ([0.1, 0.2], False)]), clip_norm=None)
    tuner.hyper_optimizer.param_groups[0]["lr"] = math.inf  # raw - inf * g: +-inf
    raw0 = tuner.space.raw.detach().clone()
    records = [tuner.step(batches[i]) for i in range(2)]
    assert not records[-1]["updated"]
    assert torch.equal(tuner.space.raw.detach(), raw0)  # phi kept
    assert tuner.skipped_updates == 1 and tuner.history.windows[-1]["skipped"]
    assert tuner.history.windows[-1]["hparams"] == tuner.space.to_dict()
    # the skipped update leaves nothing to revert: training goes on with the old phi, model finite
    tuner.hyper_optimizer.param_groups[0]["lr"] = 1.0
    for i in range(2, 4):
        tuner.step(batches[i])
    assert tuner.skipped_updates == 1 and tuner.reverted_updates == 0
    torch.testing.assert_close(tuner.space.raw.detach(), raw0 - torch.tensor([0.1, 0.2], dtype=torch.float64),
                               rtol=1e-15, atol=0)
    assert finite_model(tuner.model)


class Reckless:
    """Asks for lr x e^40 at the first window's end, then nothing."""

    name, window, record_every, mode = "reckless", 2, 2, "forward"

    def estimate(self, trajectory, window_end):
        value = -40.0 if window_end == self.window else 0.0
        return WindowEstimate(hypergradient=torch.full_like(trajectory[-1], value), local=trajectory[-1])


def reckless_tuner(divergence_factor):
    model, batches, val = problem()
    space = glocal.HyperSpace(dtype=torch.float64, lr=glocal.Log(0.05, high=1e30))  # bounds wide enough to diverge
    tuner = glocal.Tuner(model, glocal.optim.SGD(), space, F.cross_entropy, F.cross_entropy, Reckless(),
                         torch.optim.SGD([space.raw], lr=1.0), val=val, clip_norm=None,
                         divergence_factor=divergence_factor)
    return tuner, batches


def test_without_divergence_detection_only_non_finite_steps_are_guarded():
    tuner, batches = reckless_tuner(None)
    records = []
    for i in range(12):
        records.append(tuner.step(batches[i % len(batches)]))
        assert finite_model(tuner.model)  # a non-finite step is never applied
    assert tuner.divergences == 0 and not any(r.get("diverged") for r in records)
    assert records[3]["train_loss"] > 1e6  # far above 100x the previous window: not acted on
    assert max(p.abs().max().item() for p in tuner.model.parameters()) > 1e15
    assert tuner.reverted_updates == 0 and tuner.space.to_dict()["lr"] > 1e15
    # a non-finite step is still never applied, and it still undoes the last phi update (made at step 12
    # with a zero hypergradient: phi and the model stay as they are)
    before, lr = copy.deepcopy(tuner.model.state_dict()), tuner.space.to_dict()["lr"]
    x, y = batches[0]
    record = tuner.step((torch.full_like(x, math.nan), y))
    assert record.get("skipped") and tuner.skipped_steps == 1 and tuner.reverted_updates == 1
    assert tuner.space.to_dict()["lr"] == lr and tuner.divergences == 0
    for k, v in tuner.model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_with_divergence_detection_the_same_run_is_caught_at_once():
    tuner, batches = reckless_tuner(100.0)
    good = None
    for i in range(6):
        record = tuner.step(batches[i])
        if i == 1:
            good = copy.deepcopy(tuner.model.state_dict())
        if i == 3:
            assert record.get("diverged")
            for k, v in tuner.model.state_dict().items():
                torch.testing.assert_close(v, good[k], rtol=0, atol=0)
    assert tuner.divergences == 1 and tuner.reverted_updates == 1 and tuner.skipped_steps == 0
    assert tuner.space.to_dict()["lr"] == pytest.approx(0.05, rel=1e-12)
    assert max(p.abs().max().item() for p in tuner.model.parameters()) < 10


@pytest.mark.parametrize("factor", [1.0, 0.5, -3.0, math.inf, math.nan])
def test_bad_divergence_factor(factor):
    with pytest.raises(ValueError, match="divergence_factor"):
        reckless_tuner(factor)


@pytest.mark.parametrize("clip_norm", [0.0, -1.0, math.inf, math.nan])
def test_bad_clip_norm(clip_norm):
    with pytest.raises(ValueError, match="clip_norm"):
        tuner_for(Scripted(2, []), clip_norm=clip_norm)
