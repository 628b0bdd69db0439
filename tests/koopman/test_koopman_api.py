"""Fallbacks, argument errors, output types and building blocks."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch
from koopman_systems import modal_system

from glocal.koopman import Estimate, extrapolate
from glocal.koopman.dmd import FitError, clip_modulus, fit_affine, fit_plain, geometric_sum
from glocal.koopman.hankel import default_delay, hankel_matrix
from glocal.koopman.rank import omega, select_rank


@pytest.fixture
def traj():
    return modal_system(1, 3, 40, constant=True)[0]


def test_numpy_in_numpy_out(traj):
    est = extrapolate(traj.astype(np.float32), 5)
    assert isinstance(est, Estimate)
    assert isinstance(est.value, np.ndarray) and est.value.dtype == np.float32 and est.value.shape == (3,)
    assert est.eigenvalues.dtype == np.complex128 and est.model == "affine" and est.reason is None


def test_torch_float32_in_torch_float32_out(traj):
    x = torch.tensor(traj, dtype=torch.float32, requires_grad=True)
    est = extrapolate(x, None)
    assert isinstance(est.value, torch.Tensor)
    assert est.value.dtype == torch.float32 and est.value.shape == (3,) and not est.value.requires_grad
    ref = extrapolate(traj, None)
    np.testing.assert_allclose(est.value.numpy(), ref.value, rtol=1e-4, atol=1e-5)


def test_one_dimensional_input_is_q_1():
    x, _, c = modal_system(2, 1, 50, constant=True)
    est = extrapolate(x[:, 0], None)
    assert est.value.shape == (1,)
    np.testing.assert_allclose(est.value, c, atol=1e-8)


def test_frozen(traj):
    est = extrapolate(traj, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        est.rank = 3


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_input_falls_back(traj, bad):
    x = traj.copy()
    x[10, 1] = bad
    est = extrapolate(x, 3)
    assert est.fell_back and "non-finite" in est.reason
    np.testing.assert_array_equal(est.value, x[-1])


def test_too_few_rows_for_delay_falls_back(traj):
    est = extrapolate(traj[:10], 3, delay=9)
    assert est.fell_back and "delay" in est.reason
    np.testing.assert_array_equal(est.value, traj[9])


def test_constant_trajectory_falls_back_to_exact_value():
    x = np.ones((20, 4)) * 3.0
    est = extrapolate(x, None)
    assert est.fell_back and "rank 0" in est.reason
    np.testing.assert_array_equal(est.value, x[-1])


def test_white_noise_falls_back_on_holdout():
    fell = 0
    for seed in range(10):
        x = np.random.default_rng(seed).normal(size=(60, 2)).cumsum(0)  # random walk: no predictable dynamics
        est = extrapolate(x, 200)
        fell += est.fell_back
        if est.fell_back:
            assert est.reason is not None and np.isfinite(est.holdout_error)
            np.testing.assert_array_equal(est.value, x[-1])
        assert np.isfinite(est.value).all()
    assert fell >= 1


def test_never_fallback_skips_holdout(traj):
    est = extrapolate(traj, 2, fallback="never")
    assert np.isnan(est.holdout_error) and not est.fell_back


def test_holdout_diagnostics_reported(traj):
    est = extrapolate(traj, 2)
    assert est.holdout_error < est.holdout_last_value_error
    assert est.residual < 1e-8 and est.delay == default_delay(40, 3)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"steps": -1}, "steps"),
        ({"steps": 1.5}, "steps"),
        ({"steps": True}, "steps"),
        ({"model": "linear"}, "model"),
        ({"delay": 0}, "delay"),
        ({"rank": 0}, "rank"),
        ({"max_modulus": 0.0}, "max_modulus"),
        ({"eig_tol": -1.0}, "eig_tol"),
        ({"fallback": "always"}, "fallback"),
        ({"holdout_fraction": 1.0}, "holdout_fraction"),
    ],
)
def test_bad_arguments_raise(traj, kwargs, name):
    kwargs = {"steps": 1, **kwargs}
    steps = kwargs.pop("steps")
    with pytest.raises(ValueError, match=name):
        extrapolate(traj, steps, **kwargs)


@pytest.mark.parametrize("x", [np.zeros((2, 3)), np.zeros((4, 3, 2)), np.zeros(()), np.zeros((5, 2), complex)])
def test_bad_trajectory_raises(x):
    with pytest.raises(ValueError, match="trajectory"):
        extrapolate(x, 1)


def test_building_blocks():
    x = np.arange(12.0).reshape(6, 2)
    h = hankel_matrix(x, 3)
    assert h.shape == (4, 6)
    np.testing.assert_array_equal(h[1], [2, 3, 4, 5, 6, 7])
    assert default_delay(100, 1) == 25 and default_delay(100, 4096) == 1
    assert omega(1.0) == pytest.approx(2.86, abs=0.01)
    assert select_rank(np.array([10.0, 5.0] + [1e-12] * 6), (8, 8)) == 2
    assert select_rank(np.array([10.0, 5.0, 1e-12, 1e-13]), (4, 4)) == 1  # median is a signal value
    assert select_rank(np.array([10.0, 5.0, 1e-12]), (3, 3), rank=3) == 2
    lam = clip_modulus(np.array([1.2j, 0.5]), 1.0)
    np.testing.assert_allclose(lam, [1j, 0.5])
    g = geometric_sum(np.array([0.5, 1.0]), np.array([0, 3]))
    np.testing.assert_allclose(g, [[0, 0], [1.75, 3.0]])


def test_weighted_fallback_blends_by_held_out_errors():
    """fallback="weighted": weight ~1 on an exactly modelled trajectory, value between last and model."""
    import numpy as np

    from glocal.koopman import extrapolate as extrapolate_

    t = np.arange(40.0)
    clean = np.stack([1.0 - 0.9**t, 0.5 * 0.8**t], axis=1)
    exact = extrapolate_(clean, 30, fallback="weighted")
    assert exact.weight > 0.999 and not exact.fell_back
    np.testing.assert_allclose(exact.value, [1.0 - 0.9**69, 0.5 * 0.8**69], rtol=1e-6)

    rng = np.random.default_rng(0)
    noisy = np.cumsum(rng.normal(size=(40, 3)), axis=0)  # a random walk: no dynamics to find
    model = extrapolate_(noisy, 30, fallback="never").value
    weighted = extrapolate_(noisy, 30, fallback="weighted")
    assert 0.0 <= weighted.weight < 1.0
    np.testing.assert_allclose(weighted.value, noisy[-1] + weighted.weight * (model - noisy[-1]), rtol=1e-9)


# -- the DMD fits against plain least squares (full rank: the reduced operator is the least-squares
# solution of y' = A y or y' = A y + c), their guards, the rank rule, the geometric sum --------------
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


@pytest.mark.parametrize("scale", [1e200, 1e-200, 1e300])
def test_huge_and_tiny_values_are_scaled_not_overflowed(scale):
    """Squares of 1e200 overflow float64: the fit runs on the trajectory scaled by a power of two."""
    t = torch.arange(40, dtype=torch.float64)
    traj = torch.stack([1 - 0.9**t, 2 + 0.5 * 0.8**t], 1)
    reference = extrapolate(traj, None)
    scaled = extrapolate(traj * scale, None)
    assert not scaled.fell_back and scaled.reason is None
    torch.testing.assert_close(scaled.value / scale, reference.value, rtol=1e-9, atol=0)


def test_a_constant_huge_trajectory_falls_back_for_the_right_reason():
    constant = extrapolate(np.full((20, 2), 1e200), 5)
    assert constant.fell_back and "constant" in constant.reason
    assert np.array_equal(constant.value, np.full(2, 1e200))
    overflowing = extrapolate(np.array([[1e300], [-1e308], [1e308], [-1e308], [1e308], [1.0]]), 3)
    assert np.isfinite(overflowing.value).all()
    assert overflowing.reason is None or "constant" not in overflowing.reason
