"""Every documented fallback reason of ``extrapolate`` (docs/koopman.md), each from real data.

A fallback returns the last row exactly, reports ``fell_back``, weight 0 and a reason naming the
cause, and never raises. The hold-out check is skipped (both errors NaN) when fewer than 3 rows
would remain to fit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glocal.koopman import extrapolate

T = np.arange(30.0)


def _assert_fell_back(est, x, fragment):
    assert est.fell_back, est
    assert est.reason.startswith(fragment), est.reason
    assert est.weight == 0.0
    np.testing.assert_array_equal(np.asarray(est.value), np.asarray(x)[-1])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("as_torch", [False, True])
def test_non_finite_values(bad, as_torch):
    x = np.stack([0.9**T, 1.0 - 0.8**T], 1)
    x[4, 0] = bad
    x[-1, 1] = 7.0  # the last row itself stays finite: that is what comes back
    data = torch.tensor(x) if as_torch else x
    est = extrapolate(data, 10)
    _assert_fell_back(est, x, "non-finite values (NaN or inf) in the trajectory")
    assert est.rank == 0 and est.delay == 0 and np.isnan(est.residual)


def test_too_few_rows_for_the_delay():
    x = np.stack([0.9**T[:7], 0.8**T[:7]], 1)
    _assert_fell_back(extrapolate(x, 5, delay=6), x, "too few rows for the delay: n=7 < delay + 2 = 8")
    assert not extrapolate(x, 5, delay=5, rank=1, fallback="never").fell_back  # n = d + 2 is enough


@pytest.mark.parametrize(("model", "x", "fragment"), [
    ("affine", np.full((12, 3), -2.5), "rank 0: the trajectory is constant"),
    ("plain", np.zeros((12, 3)), "rank 0: all zero"),
])
def test_rank_zero_returns_the_exact_last_row(model, x, fragment):
    _assert_fell_back(extrapolate(x, 40, model=model), x, fragment)


def test_no_dynamics_above_the_floor():
    """Equal singular values: the Gavish-Donoho threshold (2.86 x median) keeps none."""
    x = np.zeros((8, 4))
    x[np.arange(4), np.arange(4)] = 1.0
    _assert_fell_back(extrapolate(x, 3, model="plain", delay=1), x, "rank 0: no dynamics above")


def test_defective_fit():
    """A nilpotent shift (x_t = e_t, then zero) is a Jordan block: its eigenvectors are parallel."""
    x = np.zeros((8, 4))
    x[np.arange(4), np.arange(4)] = 1.0
    est = extrapolate(x, 3, model="plain", delay=1, rank=3)
    _assert_fell_back(est, x, "defective reduced operator (singular eigenvector matrix)")


@pytest.mark.parametrize("trajectory", ["drift", "growth"])
def test_no_finite_affine_limit(trajectory):
    """A drift (eigenvalue 1) or a growing mode clipped to modulus 1 has no limit: fall back."""
    x = np.stack([T, 2 * T + 1], 1) if trajectory == "drift" else np.stack([1.05**T, 0.3 - 0.5 * 1.05**T], 1)
    est = extrapolate(x, None)
    _assert_fell_back(est, x, "no finite limit: an eigenvalue is 1 after clipping to max_modulus=1.0")
    assert est.rank == 1 and np.abs(est.eigenvalues) == pytest.approx([1.0])  # reported after clipping
    # a finite horizon is fine: the drift continues at its measured velocity
    np.testing.assert_allclose(extrapolate(np.stack([T, 2 * T + 1], 1), 10).value, [39.0, 79.0], rtol=1e-9)
    # and so is a modulus below 1
    assert not extrapolate(x, None, max_modulus=0.99).fell_back


def test_non_finite_prediction():
    """Eigenvalues 2 and 3 kept (max_modulus 1e6) over 3000 steps overflow float64."""
    x = np.stack([2.0**T, 3.0**T], 1)
    with np.errstate(over="ignore", invalid="ignore"):
        est = extrapolate(x, 3000, max_modulus=1e6, fallback="never")
    _assert_fell_back(est, x, "non-finite prediction")


def test_held_out_rows_predicted_worse_than_the_last_value():
    x = np.random.default_rng(3).normal(size=(40, 2)).cumsum(0)  # a random walk: nothing to predict
    est = extrapolate(x, 100)
    _assert_fell_back(est, x, "held-out rows predicted worse than by the last value")
    assert est.holdout_error > est.holdout_last_value_error  # the rule the reason states
    assert f"({est.holdout_error:.3g} > {est.holdout_last_value_error:.3g})" in est.reason
    assert not extrapolate(x, 100, fallback="never").fell_back


@pytest.mark.parametrize("fallback", ["holdout", "weighted"])
def test_hold_out_check_skipped_when_fewer_than_3_rows_remain(fallback):
    """n = 6 with 60 % held out leaves 2 rows to fit: no hold-out check, the full fit is used."""
    t = np.arange(6.0)
    x = np.stack([1.0 - 0.8**t, 0.5 + 0.8**t], 1)
    est = extrapolate(x, 4, holdout_fraction=0.6, fallback=fallback, rank=1)
    assert not est.fell_back and est.reason is None and est.weight == 1.0
    assert np.isnan(est.holdout_error) and np.isnan(est.holdout_last_value_error)
    np.testing.assert_allclose(est.value, [1.0 - 0.8**9, 0.5 + 0.8**9], rtol=1e-10)
    # with 40 % held out 4 rows remain and the check runs
    checked = extrapolate(x, 4, holdout_fraction=0.4, fallback=fallback, rank=1)
    assert np.isfinite(checked.holdout_error) and checked.holdout_error < 1e-8
