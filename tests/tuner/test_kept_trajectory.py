"""A strategy that keeps its trajectory across windows (Glocal's ``anchor="run"``).

The rows are then realised hypergradients of the validation loss with respect to a shift of raw phi
applied since the trajectory's start, through every phi update in between; the reference is a
central finite difference in float64 over whole runs whose phi schedule is shifted by +-eps.
"""

from __future__ import annotations

import io

import pytest
import torch
from tuner_helpers import Scripted, tuner_for

import glocal


class Kept(Scripted):
    """Scripted phi steps (so the phi schedule does not depend on h); the trajectory is kept and recorded."""

    def __init__(self, window, estimates, keep=lambda end: True):
        super().__init__(window, estimates)
        self.keep = keep
        self.seen = []

    def keeps_trajectory(self, window_end):
        return self.keep(window_end)

    def estimate(self, trajectory, window_end):
        self.seen.append(trajectory.clone())
        return super().estimate(trajectory, window_end)


STEPS = [([0.05, -0.1], False), ([-0.02, 0.04], False), ([0.03, 0.02], False)]


def run(shift=None, keep=lambda end: True, windows=3):
    strategy = Kept(4, list(STEPS), keep)
    tuner, batches = tuner_for(strategy, clip_norm=None, hyper_lr=1.0)
    if shift is not None:
        with torch.no_grad():
            tuner.space.raw += shift
    for i in range(4 * windows):
        tuner.step(batches[i % len(batches)])
    return tuner, strategy


def test_kept_rows_are_the_realised_hypergradients_since_the_start_through_phi_updates():
    _, strategy = run()
    rows = strategy.seen[-1]
    assert rows.shape == (1 + 3 * 2, 2) and torch.equal(rows[0], torch.zeros(2, dtype=torch.float64))
    assert torch.equal(strategy.seen[1][:3], strategy.seen[0])  # each window goes on from the last one
    eps = 1e-6
    for i in range(2):
        e = torch.zeros(2, dtype=torch.float64)
        e[i] = eps
        plus, minus = run(e)[0], run(-e)[0]
        fd = (torch.tensor(plus.history.val_loss, dtype=torch.float64)
              - torch.tensor(minus.history.val_loss, dtype=torch.float64)) / (2 * eps)
        # history.val_loss holds L_val at every recorded step: rows 1.. of the kept trajectory
        torch.testing.assert_close(rows[1:, i], fd, rtol=1e-6, atol=1e-9)


def test_a_strategy_that_does_not_keep_starts_each_window_from_zero():
    _, strategy = run(keep=lambda end: end != 8)  # keeps after window 1, starts anew after window 2
    assert [len(t) for t in strategy.seen] == [3, 5, 3]
    assert torch.equal(strategy.seen[2][0], torch.zeros(2, dtype=torch.float64))
    _, plain = run(keep=lambda end: False)
    assert [len(t) for t in plain.seen] == [3, 3, 3]


def test_glocal_anchor_defaults_and_reanchoring():
    strategy = glocal.Glocal(window=10, total_steps=100, reanchor_every=2)
    assert strategy.anchor == glocal.defaults.ANCHOR == "run"
    assert [strategy.keeps_trajectory(end) for end in (10, 20, 30, 40)] == [True, False, True, False]
    assert glocal.Glocal(window=10, total_steps=100, reanchor_every=None).keeps_trajectory(20)
    assert not glocal.Glocal(window=10, total_steps=100, anchor="window").keeps_trajectory(10)
    assert glocal.Glocal(window=10, total_steps=100, mode="reverse").anchor == "window"


@pytest.mark.parametrize("kwargs, match", [
    ({"anchor": "start"}, "anchor"),
    ({"anchor": "run", "mode": "reverse"}, "anchor='run' needs mode='forward'"),
    ({"reanchor_every": 0}, "reanchor_every"),
    ({"fit_rows": 10}, "fit_rows"),  # fewer rows than one window records (11)
])
def test_bad_anchor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        glocal.Glocal(window=100, total_steps=1000, record_every=10, **kwargs)


def test_the_kept_trajectory_is_trimmed_to_fit_rows():
    strategy = glocal.Glocal(window=4, total_steps=40, record_every=1, fit_rows=7, reanchor_every=None)
    seen = []
    original = strategy.estimate
    strategy.estimate = lambda trajectory, end: seen.append(len(trajectory)) or original(trajectory, end)
    tuner, batches = tuner_for(strategy, clip_norm=1.0, hyper_lr=1e-3)
    for i in range(16):
        tuner.step(batches[i % len(batches)])
    assert seen == [5, 9, 11, 11]  # 5 rows, 5 + 4, then at most 7 kept + 4 new ones


def test_resuming_mid_trajectory_is_bit_identical():
    def make():
        return tuner_for(glocal.Glocal(window=4, total_steps=40, record_every=1, reanchor_every=None),
                         clip_norm=1.0, hyper_lr=1e-2)

    straight, batches = make()
    for i in range(14):
        straight.step(batches[i % len(batches)])
    first, _ = make()
    for i in range(6):  # mid window 2, with window 1's rows kept
        first.step(batches[i % len(batches)])
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed, _ = make()
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for i in range(6, 14):
        resumed.step(batches[i % len(batches)])
    assert torch.equal(resumed.space.raw, straight.space.raw)
    for a, b in zip(resumed.model.parameters(), straight.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert [w["estimate"] for w in resumed.history.windows] == [w["estimate"] for w in straight.history.windows]


def test_local_anchored_at_the_run_follows_the_realised_hypergradient_and_reanchors():
    strategy = glocal.Local(window=4, anchor="run", reanchor_every=2)
    seen = []
    original = strategy.estimate
    strategy.estimate = lambda trajectory, end: seen.append(trajectory.clone()) or original(trajectory, end)
    tuner, batches = tuner_for(strategy, clip_norm=None, hyper_lr=1e-3)
    for i in range(16):
        tuner.step(batches[i % len(batches)])
    assert [len(t) for t in seen] == [2, 3, 2, 3]  # kept (last 2 rows), re-anchored after window 2, kept
    assert torch.equal(seen[1][:2], seen[0][-2:])
    for window, rows in zip(tuner.history.windows, seen, strict=True):
        assert window["estimate"] == window["local"] == rows[-1].tolist()
    assert not glocal.Local(window=4).keeps_trajectory(4)
    with pytest.raises(ValueError, match="anchor='run' needs mode='forward'"):
        glocal.Local(window=4, anchor="run", mode="reverse")
