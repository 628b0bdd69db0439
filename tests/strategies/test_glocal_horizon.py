"""Glocal's horizon and defaults against a trajectory whose future is known exactly.

A window records h every ``record_every`` training steps, so the rows are that many steps apart
and the end of training lies ``(total_steps - window_end) / record_every`` rows ahead. The local
trajectory here is h(s) = c1 (1 - 0.98^s) + c2 (1 - 0.9^s) in training steps s since the window's
start: the exact global hypergradient at a window ending at step E of T is h(window + T - E).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import glocal
from glocal.koopman import extrapolate
from glocal.strategies.glocal import DEFAULT_KOOPMAN

C1 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
C2 = torch.tensor([-0.3, 0.4, 1.5], dtype=torch.float64)


def h(s: float) -> torch.Tensor:
    return C1 * (1 - 0.98**s) + C2 * (1 - 0.9**s)


def window_trajectory(window: int, record_every: int) -> torch.Tensor:
    """Rows h_0 = 0, h_k, h_2k, ..., h_window, as the Tuner records them."""
    return torch.stack([h(s) for s in range(0, window + 1, record_every)])


@pytest.mark.parametrize("record_every", [1, 2, 5])
@pytest.mark.parametrize(("total_steps", "window_end"), [(300, 100), (300, 50), (200, 150)])
def test_estimate_is_the_value_at_the_end_of_training(record_every, total_steps, window_end):
    window = 50
    strategy = glocal.Glocal(window=window, total_steps=total_steps, record_every=record_every)
    trajectory = window_trajectory(window, record_every)
    est = strategy.estimate(trajectory, window_end)
    remaining = total_steps - window_end
    assert est.diagnostics["rows_ahead"] == remaining // record_every
    assert not est.fell_back, est.reason
    torch.testing.assert_close(est.local, trajectory[-1], rtol=0, atol=0)
    truth = h(window + remaining)
    torch.testing.assert_close(est.hypergradient, truth, rtol=1e-7, atol=1e-9)
    # the local value is visibly wrong, so a wrong horizon could not pass by accident
    assert (trajectory[-1] - truth).norm() > 1e3 * (est.hypergradient - truth).norm()
    if record_every > 1:  # a horizon counted in training steps instead of rows lands elsewhere
        far = h(window + remaining * record_every)
        assert (far - truth).norm() > 1e-3


def test_last_window_has_no_horizon_left():
    strategy = glocal.Glocal(window=50, total_steps=300, record_every=5)
    trajectory = window_trajectory(50, 5)
    est = strategy.estimate(trajectory, 300)
    assert est.diagnostics["rows_ahead"] == 0
    torch.testing.assert_close(est.hypergradient, trajectory[-1], rtol=1e-9, atol=1e-12)


def test_default_record_every_is_a_quarter_of_the_window():
    assert glocal.Glocal(total_steps=1000).record_every == 5  # the default window of 20 steps
    assert glocal.Glocal(window=100, total_steps=1000).record_every == 25
    assert glocal.Glocal(window=50, total_steps=1000).record_every == 10  # largest divisor of 50 <= 12
    assert glocal.Glocal(window=35, total_steps=1000).record_every == 7  # largest divisor of 35 <= 8
    assert glocal.Glocal(window=36, total_steps=1000).record_every == 9


def test_default_estimator_is_affine_dmd_blended_by_held_out_errors():
    """Glocal uses fallback="weighted" (docs/koopman.md), not extrapolate's own default "holdout"."""
    assert DEFAULT_KOOPMAN == {"model": "affine", "fallback": "weighted"}
    strategy = glocal.Glocal(window=40, total_steps=400, record_every=1, untrusted="guard", max_ratio=None)  # as is
    assert strategy.koopman == DEFAULT_KOOPMAN
    # on a random walk the hold-out check rejects the fit; the weighted estimator blends instead
    walk = torch.tensor(np.random.default_rng(3).normal(size=(41, 2)).cumsum(0))
    walk[0] = 0.0
    est = strategy.estimate(walk, 40)
    assert extrapolate(walk, 360).fell_back
    assert not est.fell_back and 0.0 < est.diagnostics["weight"] < 1.0
    blended = extrapolate(walk, 360, fallback="weighted")
    torch.testing.assert_close(est.hypergradient, blended.value, rtol=0, atol=0)
    model = extrapolate(walk, 360, fallback="never").value
    w = est.diagnostics["weight"]
    torch.testing.assert_close(est.hypergradient, walk[-1] + w * (model - walk[-1]), rtol=1e-9, atol=1e-12)


def test_user_koopman_options_are_merged_over_the_defaults():
    strategy = glocal.Glocal(window=40, total_steps=400, koopman={"max_modulus": 0.99})
    assert strategy.koopman == {"model": "affine", "fallback": "weighted", "max_modulus": 0.99}
    strategy = glocal.Glocal(window=40, total_steps=400, koopman={"fallback": "holdout"})
    assert strategy.koopman["fallback"] == "holdout" and strategy.koopman["model"] == "affine"
    assert glocal.Glocal(window=40, total_steps=400).koopman is not DEFAULT_KOOPMAN  # never shared
