"""Exact recovery of noise-free modal trajectories and of a gradient-descent hypergradient."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from koopman_systems import modal_system, ridge_hypergradient

from glocal.koopman import extrapolate

STEPS = st.sampled_from([0, 1, 7, 60, 1000, None])


def _rel_err(value, truth, traj):
    scale = max(np.linalg.norm(truth), np.sqrt(np.mean(traj**2)) * np.sqrt(truth.size))
    return np.linalg.norm(value - truth) / scale


@settings(max_examples=30, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), q=st.sampled_from([1, 3, 16]), constant=st.booleans(), steps=STEPS)
def test_affine_exact_recovery(seed, q, constant, steps):
    n = 60
    x, exact, c = modal_system(seed, q, n, constant)
    est = extrapolate(x, steps)
    truth = c if steps is None else exact(n - 1 + steps)
    assert not est.fell_back, est.reason
    assert est.rank == 4
    assert _rel_err(est.value, truth, x) < 1e-8


@settings(max_examples=20, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), q=st.sampled_from([1, 3, 16]), steps=STEPS)
def test_plain_exact_recovery_zero_limit(seed, q, steps):
    n = 60
    x, exact, c = modal_system(seed, q, n, constant=False)
    est = extrapolate(x, steps, model="plain")
    truth = c if steps is None else exact(n - 1 + steps)
    assert not est.fell_back, est.reason
    assert _rel_err(est.value, truth, x) < 1e-8


@pytest.mark.parametrize("q", [3, 16])
def test_plain_limit_with_constant(q):
    """With enough columns the constant is an eigenvalue-1 mode of the plain model."""
    x, _, c = modal_system(7, q, 60, constant=True)
    est = extrapolate(x, None, model="plain")
    assert not est.fell_back, est.reason
    assert np.any(np.abs(est.eigenvalues - 1) < 1e-8)
    assert _rel_err(est.value, c, x) < 1e-8


@pytest.mark.parametrize("seed", range(5))
def test_ridge_hypergradient_far_better_than_last_value(seed):
    """Forward-mode hypergradient of log(weight decay) for GD on ridge regression (q = 1)."""
    n = 200
    h, h_star, later = ridge_hypergradient(seed, n)
    last_err = abs(h[-1] - h_star)
    assert last_err > 1e-3 * abs(h_star)  # the window ends visibly before the limit
    est = extrapolate(h, None)
    assert not est.fell_back, est.reason
    assert abs(est.value[0] - h_star) < last_err / 100
    est = extrapolate(h, 100)
    assert abs(est.value[0] - later(100)) < abs(h[-1] - later(100)) / 100
