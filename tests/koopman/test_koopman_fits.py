"""The DMD fits against plain least squares, their guards, and the geometric sum without warnings.

With full rank the reduced operator is the least-squares solution of y' = A y (plain) or
y' = A y + c (affine), so the reported one-step residual must equal the least-squares residual
computed independently with ``numpy.linalg.lstsq``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from glocal.koopman import extrapolate
from glocal.koopman.dmd import FitError, fit_affine, fit_plain, geometric_sum
from glocal.koopman.rank import omega, select_rank

H = np.random.default_rng(0).normal(size=(12, 3))
Y0, Y1 = H[:-1], H[1:]


def test_plain_residual_is_the_least_squares_residual():
    fit = fit_plain(H, rank=3)
    a = np.linalg.lstsq(Y0, Y1, rcond=None)[0]
    assert fit.model == "plain" and fit.rank == 3
    assert fit.residual == pytest.approx(np.linalg.norm(Y1 - Y0 @ a) / np.linalg.norm(Y1), rel=1e-12)
    assert 0.5 < fit.residual < 1  # random data: a poor, but well-defined, fit


def test_affine_residual_is_the_least_squares_residual_with_intercept():
    fit = fit_affine(H, rank=3)
    design = np.hstack([Y0, np.ones((len(Y0), 1))])
    b = np.linalg.lstsq(design, Y1, rcond=None)[0]
    expected = np.linalg.norm(Y1 - design @ b) / np.linalg.norm(Y1 - Y1.mean(0))
    assert fit.model == "affine" and fit.rank == 3
    assert fit.residual == pytest.approx(expected, rel=1e-12)


def test_fits_need_enough_snapshots():
    with pytest.raises(FitError, match=r"^too few snapshots for a fit$"):
        fit_plain(H[:1])
    assert fit_plain(H[:2], rank=1).rank == 1  # one pair is enough for the plain model
    with pytest.raises(FitError, match=r"^too few snapshot pairs for an affine fit \(need 2\)$"):
        fit_affine(H[:2])
    assert fit_affine(H[:3], rank=1).rank == 1


def test_rank_zero_reasons_name_the_noise_floor():
    x = np.zeros((8, 4))
    x[np.arange(4), np.arange(4)] = 1.0  # equal singular values: none above 2.86 x the median
    for model in ("affine", "plain"):
        est = extrapolate(x, 3, model=model, delay=1)
        assert est.fell_back and est.reason == "rank 0: no dynamics above the noise/round-off floor", model


def test_estimate_reports_the_fit_rank_and_residual():
    t = np.arange(30.0)
    x = np.stack([1.0 - 0.9**t, 0.5 * 0.8**t], 1)
    for model, rank in (("affine", 2), ("plain", 3)):  # plain: the non-zero limit is a mode (lambda = 1) too
        est = extrapolate(x, 5, model=model)
        assert est.rank == rank and 0 <= est.residual < 1e-10, model
    noisy = x + 1e-3 * np.random.default_rng(1).normal(size=x.shape)
    est = extrapolate(noisy, 5, model="plain", rank=2, fallback="never")
    assert est.rank == 2 and 1e-6 < est.residual < 0.1


def test_geometric_sum_at_lambda_one_is_exact_and_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division by zero on the way
        g = geometric_sum(np.array([1.0, 1.0 + 1e-12, 0.5]), np.array([0, 1, 10]))
    np.testing.assert_allclose(g[:, 0], [0, 1, 10], rtol=0, atol=0)
    np.testing.assert_allclose(g[:, 1], [0, 1, 10], rtol=1e-9)
    np.testing.assert_allclose(g[:, 2], [0, 1, (1 - 0.5**10) / 0.5], rtol=1e-15)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shape", [(9, 4), (14, 6), (20, 3), (7, 12), (3, 10)])
def test_fit_ranks_follow_the_documented_rule(seed, shape):
    """Gavish-Donoho on the fitted matrix: Y0 (p x D) for plain, centred Y0 ((p - 1) x D) for affine."""
    rng = np.random.default_rng(seed)
    m, dim = shape
    h = rng.normal(size=(m, 2)) @ rng.normal(size=(2, dim)) + 0.3 * rng.normal(size=(m, dim))
    p = m - 1

    def rank_of(fit):
        try:
            return fit(h).rank
        except FitError as error:  # rank 0 is reported by raising
            assert str(error).startswith("rank 0")
            return 0

    plain_sigma = np.linalg.svd(h[:p], compute_uv=False)
    assert rank_of(fit_plain) == select_rank(plain_sigma, (p, dim))
    affine_sigma = np.linalg.svd(h[:p] - h[:p].mean(0), compute_uv=False)
    assert rank_of(fit_affine) == select_rank(affine_sigma, (max(p - 1, 1), dim))


def test_select_rank_keeps_values_strictly_above_threshold_and_floor():
    assert select_rank(np.array([omega(1.0), 1.0, 0.5]), (3, 3)) == 0  # sigma_1 == 2.86 x median: not above
    assert select_rank(np.array([omega(1.0) * 1.001, 1.0, 0.5]), (3, 3)) == 1
    assert select_rank(np.array([1e4, 1e-5]), (2, 2), rank=2) == 1  # 1e-5 <= 1e-8 x 1e4: below the floor
    assert select_rank(np.array([1e-3, 1e-12]), (2, 2), rank=2) == 1  # 1e-12 <= 1e-8 x 1e-3
    assert select_rank(np.array([1e-3, 2e-11]), (2, 2), rank=2) == 2
