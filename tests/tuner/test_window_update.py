"""What the Tuner does with a window's estimate: clip only large ones, count fallbacks, survive errors.

With a plain SGD hyper-optimizer of learning rate 1, phi moves by exactly minus the hypergradient
that was applied, so every test below reads the applied step off phi itself.
"""

from __future__ import annotations

import pytest
import torch
from tuner_helpers import Scripted, tuner_for

import glocal


def run_windows(tuner, batches, windows):
    steps = []
    for i in range(windows * tuner.strategy.window):
        raw = tuner.space.raw.detach().clone()
        record = tuner.step(batches[i % len(batches)])
        if tuner.history.windows and tuner.history.windows[-1]["end"] == record["step"]:  # a window ended
            steps.append(tuner.space.raw.detach() - raw)
    return steps


@pytest.mark.parametrize("clip_norm", [1.0, 10.0, None])
def test_hypergradients_below_the_clip_norm_are_applied_unchanged(clip_norm):
    small = [0.3, -0.4]  # norm 0.5
    tuner, batches = tuner_for(Scripted(2, [(small, False)] * 3), clip_norm=clip_norm)
    for step in run_windows(tuner, batches, 3):
        torch.testing.assert_close(step, -torch.tensor(small, dtype=torch.float64), rtol=1e-15, atol=0)
    for window in tuner.history.windows:
        assert window["used"] == window["estimate"] == pytest.approx(small, rel=1e-15)
        assert window["norm"] == pytest.approx(0.5, rel=1e-15)


def test_only_hypergradients_above_the_clip_norm_are_rescaled_to_it():
    big, small, boundary = [3.0, -4.0], [0.03, 0.04], [0.6, 0.8]  # norms 5, 0.05, exactly the clip norm 1
    tuner, batches = tuner_for(Scripted(2, [(big, False), (small, False), (boundary, False)]), clip_norm=1.0)
    steps = run_windows(tuner, batches, 3)
    torch.testing.assert_close(steps[0], -torch.tensor([0.6, -0.8], dtype=torch.float64), rtol=1e-14, atol=0)
    torch.testing.assert_close(steps[1], -torch.tensor(small, dtype=torch.float64), rtol=1e-14, atol=0)
    torch.testing.assert_close(steps[2], -torch.tensor(boundary, dtype=torch.float64), rtol=1e-14, atol=0)
    first = tuner.history.windows[0]
    assert first["norm"] == pytest.approx(5.0) and first["estimate"] == pytest.approx(big)
    assert first["used"] == pytest.approx([0.6, -0.8])


def test_fallbacks_are_counted_per_window():
    script = [([0.1, 0.0], True), ([0.1, 0.0], False), ([0.1, 0.0], True), ([0.1, 0.0], True)]
    tuner, batches = tuner_for(Scripted(2, script))
    counts = []
    for i in range(8):
        tuner.step(batches[i % len(batches)])
        counts.append(tuner.fallbacks)
    assert counts == [0, 1, 1, 1, 1, 2, 2, 3]
    assert [w["fell_back"] for w in tuner.history.windows] == [True, False, True, True]
    assert [w["reason"] for w in tuner.history.windows] == ["scripted", None, "scripted", "scripted"]
    assert tuner.state_dict()["fallbacks"] == 3


def test_glocal_fallbacks_are_counted():
    """Real Glocal windows whose fit cannot be made (5 rows, delay 3: 3 snapshots, rank 0) are counted."""
    strategy = glocal.Glocal(window=4, total_steps=40, record_every=1, koopman={"delay": 3}, anchor="window")
    tuner, batches = tuner_for(strategy, clip_norm=None, hyper_lr=1e-3)
    for i in range(12):
        tuner.step(batches[i % len(batches)])
    windows = tuner.history.windows
    assert all(w["fell_back"] and w["reason"].startswith("rank 0") for w in windows)
    assert tuner.fallbacks == len(windows) == 3
    for w in windows:
        assert w["estimate"] == w["local"]


class Raising:
    """A strategy whose estimator raises (a failed fit must not stop training)."""

    name, window, record_every, mode = "raising", 3, 1, "forward"

    def __init__(self, error: Exception) -> None:
        self.error = error

    def estimate(self, trajectory, window_end):
        raise self.error


@pytest.mark.parametrize("error", [ValueError("bad fit"), RuntimeError("no convergence"),
                                   FloatingPointError("overflow")])
def test_an_estimator_error_falls_back_to_the_local_value(error):
    tuner, batches = tuner_for(Raising(error), clip_norm=None)
    raw0 = tuner.space.raw.detach().clone()
    for i in range(6):
        tuner.step(batches[i])
    assert tuner.fallbacks == 2 and tuner.skipped_updates == 0
    for w in tuner.history.windows:
        assert w["fell_back"] and w["reason"] == f"estimator error: {error}"
        assert w["estimate"] == w["local"]
    local = torch.tensor([w["local"] for w in tuner.history.windows], dtype=torch.float64).sum(0)
    torch.testing.assert_close(tuner.space.raw.detach(), raw0 - local, rtol=1e-12, atol=1e-15)


def test_other_estimator_errors_propagate():
    """Only numerical failures are absorbed; a programming error (TypeError) is not hidden."""
    tuner, batches = tuner_for(Raising(TypeError("bug")))
    for i in range(2):
        tuner.step(batches[i])
    with pytest.raises(TypeError, match="bug"):
        tuner.step(batches[2])
