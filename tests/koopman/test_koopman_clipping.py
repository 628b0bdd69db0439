"""Eigenvalue clipping: a growing mode keeps its measured velocity over sum_{j<s} mu^j steps.

For x_t = c + a lambda^t the affine model predicts s rows ahead x_last + v sum_{j<s} mu^j, with
v = a lambda^n (lambda - 1) the next step's increment and mu = lambda clipped to ``max_modulus``
(docs/koopman.md, "Eigenvalue clipping"). Without clipping it would be the exact exponential.
"""

from __future__ import annotations

import numpy as np
import pytest

from glocal.koopman import extrapolate

N, LAM, STEPS = 30, 1.05, 100
T = np.arange(N, dtype=np.float64)
X = np.stack([LAM**T, 0.3 - 0.5 * LAM**T], 1)
VELOCITY = X[-1] - X[-2]  # a lambda^(n-2) (lambda - 1): times lambda for the next step's


def _clipped(mu: float, steps: int) -> np.ndarray:
    total = steps if mu == 1.0 else (1 - mu**steps) / (1 - mu)
    return X[-1] + LAM * VELOCITY * total


@pytest.mark.parametrize("max_modulus", [1.0, 0.99, 0.5])
def test_growing_mode_is_clipped_to_max_modulus(max_modulus):
    est = extrapolate(X, STEPS, max_modulus=max_modulus)
    assert not est.fell_back, est.reason
    np.testing.assert_allclose(np.abs(est.eigenvalues), [max_modulus], rtol=1e-12)
    np.testing.assert_allclose(est.value, _clipped(max_modulus, STEPS), rtol=1e-9)
    exact = np.array([LAM ** (N - 1 + STEPS), 0.3 - 0.5 * LAM ** (N - 1 + STEPS)])
    assert np.abs(est.value - X[-1]).max() < 0.1 * np.abs(exact - X[-1]).max()  # far below the exponential


def test_a_large_max_modulus_keeps_the_growing_mode_exact():
    est = extrapolate(X, STEPS, max_modulus=2.0)
    np.testing.assert_allclose(np.abs(est.eigenvalues), [LAM], rtol=1e-9)
    t = N - 1 + STEPS
    np.testing.assert_allclose(est.value, [LAM**t, 0.3 - 0.5 * LAM**t], rtol=1e-7)


def test_decaying_modes_are_not_clipped():
    x = np.stack([1.0 - 0.9**T, 0.5 * 0.8**T], 1)
    for max_modulus in (1.0, 0.95):  # both above every |lambda|
        est = extrapolate(x, 50, max_modulus=max_modulus)
        np.testing.assert_allclose(np.sort(np.abs(est.eigenvalues)), [0.8, 0.9], rtol=1e-8)
        np.testing.assert_allclose(est.value, [1.0 - 0.9 ** (N - 1 + 50), 0.5 * 0.8 ** (N - 1 + 50)], rtol=1e-8)
    clipped = extrapolate(x, 50, max_modulus=0.85)  # only the 0.9 mode is scaled back
    np.testing.assert_allclose(np.sort(np.abs(clipped.eigenvalues)), [0.8, 0.85], rtol=1e-8)


def test_plain_model_is_clipped_too():
    """Plain DMD: lambda^s with lambda clipped; a modulus of 1 keeps the last value of the mode."""
    x = LAM**T[:, None] * np.array([[1.0, -2.0]])
    est = extrapolate(x, STEPS, model="plain", max_modulus=1.0)
    np.testing.assert_allclose(est.value, x[-1], rtol=1e-9)
    est = extrapolate(x, STEPS, model="plain", max_modulus=1.02)
    np.testing.assert_allclose(est.value, x[-1] * 1.02**STEPS, rtol=1e-9)
