"""The record of each window and what the loop hands the hyper-optimizer: the entry's fields, the
reference for scale-free steps, skipped windows, and checkpoints that do not move with the run."""

from __future__ import annotations

import math

import pytest
import torch
from tuner_helpers import tuner_for

import glocal
from glocal.strategies import WindowEstimate


class Times:
    """Follows ``factor`` x the local hypergradient, returned as a plain list (any array-like is accepted);
    a factor of nan gives a non-finite estimate."""

    name, record_every, mode = "times", 2, "forward"

    def __init__(self, window: int, factor: float) -> None:
        self.window, self.factor = window, factor

    def estimate(self, trajectory, window_end):
        value = [self.factor * float(v) for v in trajectory[-1]]
        return WindowEstimate(hypergradient=value, local=trajectory[-1], diagnostics={"end": window_end})


def with_relative_sgd(strategy):
    tuner, batches = tuner_for(strategy, clip_norm=None)
    tuner.hyper_optimizer = glocal.RelativeSGD([tuner.space.raw], lr=0.1, max_step=1.0)
    return tuner, batches


def test_the_window_entry_records_its_span_estimate_and_diagnostics():
    tuner, batches = with_relative_sgd(Times(4, 2.0))
    records = [tuner.step(batches[i % len(batches)]) for i in range(8)]
    assert [r["updated"] for r in records] == [False, False, False, True] * 2
    first, second = tuner.history.windows
    assert (first["start"], first["end"], second["start"], second["end"]) == (0, 4, 4, 8)
    assert first["diagnostics"] == {"end": 4} and second["diagnostics"] == {"end": 8}
    assert first["estimate"] == pytest.approx([2.0 * v for v in first["local"]], rel=1e-15)
    assert first["skipped"] is False and second["skipped"] is False
    # the divergence reference: the mean training loss of the window just ended
    assert tuner.state_dict()["reference_loss"] == pytest.approx(sum(tuner.history.train_loss[4:]) / 4, rel=1e-15)


def test_scale_free_steps_are_measured_in_units_of_the_local_hypergradient():
    """RelativeSGD gets the window's last local value as its reference: following twice the local value
    moves raw by 2 x lr per coordinate on the first update (not lr, as the estimate's own scale would give)."""
    tuner, batches = with_relative_sgd(Times(4, 2.0))
    raw0 = tuner.space.raw.detach().clone()
    for i in range(4):
        tuner.step(batches[i])
    local = torch.tensor(tuner.history.windows[0]["local"], dtype=torch.float64)
    torch.testing.assert_close(tuner.space.raw.detach() - raw0, -0.2 * torch.sign(local), rtol=1e-12, atol=0)


def test_non_finite_estimates_are_skipped_counted_and_recorded_with_phi():
    tuner, batches = tuner_for(Times(2, math.nan))
    raw0 = tuner.space.raw.detach().clone()
    records = [tuner.step(batches[i]) for i in range(4)]
    assert [r["updated"] for r in records] == [False, False, False, False]
    assert tuner.skipped_updates == 2 and torch.equal(tuner.space.raw, raw0)
    for window in tuner.history.windows:
        assert window["skipped"] is True and window["hparams"] == tuner.space.to_dict()


def test_a_tuning_loop_without_a_hyper_optimizer_says_so():
    tuner, batches = tuner_for(glocal.Local(window=2))
    tuner.hyper_optimizer = None
    tuner.step(batches[0])
    with pytest.raises(RuntimeError, match=r"^a tuning strategy needs a hyper_optimizer$"):
        tuner.step(batches[1])


def test_a_checkpoint_does_not_move_with_the_run():
    """The hyper-optimizer's state (Adam's moments, updated in place) is copied into the checkpoint."""
    tuner, batches = tuner_for(glocal.Local(window=2))
    tuner.hyper_optimizer = torch.optim.Adam([tuner.space.raw], lr=0.01)
    for i in range(2):
        tuner.step(batches[i])
    state = tuner.state_dict()
    moments = state["hyper_optimizer"]["state"][0]["exp_avg"].clone()
    for i in range(2, 6):
        tuner.step(batches[i])
    assert not torch.equal(tuner.hyper_optimizer.state[tuner.space.raw]["exp_avg"], moments)
    assert torch.equal(state["hyper_optimizer"]["state"][0]["exp_avg"], moments)


def test_every_hyper_step_that_makes_phi_non_finite_is_undone_and_counted():
    tuner, batches = tuner_for(glocal.Local(window=2))
    tuner.hyper_optimizer = torch.optim.SGD([tuner.space.raw], lr=math.inf)
    raw0 = tuner.space.raw.detach().clone()
    for i in range(4):
        tuner.step(batches[i])
    assert tuner.skipped_updates == 2 and torch.equal(tuner.space.raw, raw0)
    assert [w["skipped"] for w in tuner.history.windows] == [True, True]
