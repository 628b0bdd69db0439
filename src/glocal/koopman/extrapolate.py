"""The public estimator: :func:`extrapolate`."""

from __future__ import annotations

import contextlib
import numbers
from typing import Any

import numpy as np
import torch

from .dmd import FitError, SnapshotFit, clip_modulus, fit_affine, fit_plain
from .estimate import Estimate
from .hankel import compress_rows, default_delay, hankel_matrix

__all__ = ["MODELS", "extrapolate"]

MODELS = ("affine", "plain")
_BLAS: list[Any] = []


def _one_blas_thread() -> Any:
    """Run the small (n x n-sized) LAPACK calls on one BLAS thread.

    Multi-threaded OpenBLAS makes a 75 x 75 SVD 5-50x slower on a busy 2-core machine (measured
    0.55 ms on one thread, 2.7-27 ms on two). Uses threadpoolctl when it is installed (it comes with
    scikit-learn); otherwise a no-op.
    """
    if not _BLAS:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS.append(ThreadpoolController())
        except Exception:  # threadpoolctl missing or broken: run as is
            _BLAS.append(None)
    ctl = _BLAS[0]
    return ctl.limit(limits=1, user_api="blas") if ctl is not None else contextlib.nullcontext()


FALLBACKS = ("holdout", "weighted", "never")


class _Data:
    """The trajectory in float64 torch (input's device), scaled by ``2**-exponent``, centred, plus a
    compressed numpy copy.

    ``small`` (n, min(q, n + 1)) has rows with the same inner products as the centred rows, and
    ``small_mean`` plays the mean's part, so all the fitting runs on small matrices.
    """

    def __init__(self, x: Any, is_torch: bool) -> None:
        x64 = x.detach().to(torch.float64) if is_torch else torch.from_numpy(np.asarray(x, dtype=np.float64))
        # Scale by a power of two (exact) so that the largest entry is in [0.5, 1): sums and squares
        # of values near 1e200 or 1e-200 neither overflow nor underflow; ``combine`` scales back.
        self.exponent = int(np.frexp(float(x64.abs().max()))[1])
        x64 = torch.ldexp(x64, torch.tensor(-self.exponent, dtype=torch.float64))
        self.is_torch = is_torch
        self.mean = x64.mean(0)
        self.centred = x64 - self.mean
        both = compress_rows(torch.cat([self.centred, self.mean[None, :]], 0))
        self.small, self.small_mean = both[:-1], both[-1]
        self.n, self.q = x64.shape

    def rows(self, model: str) -> np.ndarray:
        """The compressed rows a model is fitted to: centred (affine, translation invariant) or raw."""
        return self.small if model == "affine" else self.small + self.small_mean

    def combine(self, coef: np.ndarray) -> Any:
        """sum_i coef_i x_i in float64 on the input's device (torch)."""
        c = torch.from_numpy(np.ascontiguousarray(coef)).to(self.centred.device)
        value = c @ self.centred + float(coef.sum()) * self.mean
        return torch.ldexp(value, torch.tensor(self.exponent, dtype=torch.float64, device=value.device))


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int, got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        rng = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {rng}, got {value}")
    return value


def _check_float(name: str, value: Any, low: float, high: float, low_open: bool, high_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    ok_low = value > low if low_open else value >= low
    ok_high = value < high if high_open else value <= high
    if not (ok_low and ok_high) or np.isnan(value):
        lb = "(" if low_open else "["
        rb = ")" if high_open else "]"
        raise ValueError(f"{name} must be in {lb}{low}, {high}{rb}, got {value}")
    return value


def _as_2d(trajectory: Any) -> tuple[Any, bool]:
    """Validate the trajectory and return it as (n, q) with a flag saying whether it is a tensor."""
    if isinstance(trajectory, torch.Tensor):
        x, is_torch = trajectory, True
        if x.is_complex():
            raise ValueError(f"trajectory must be real, got dtype {x.dtype}")
    else:
        try:
            x = np.asarray(trajectory)
        except Exception as exc:  # pragma: no cover - exotic inputs
            raise ValueError(f"trajectory must be a torch tensor or numpy array, got {type(trajectory)}") from exc
        is_torch = False
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise ValueError(f"trajectory must be a real numeric array, got dtype {x.dtype}")
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"trajectory must have shape (n, q) or (n,), got ndim={x.ndim}")
    n, q = x.shape
    if n < 3:
        raise ValueError(f"trajectory must have n >= 3 rows, got n={n}")
    if q < 1:
        raise ValueError(f"trajectory must have q >= 1 columns, got q={q}")
    return x, is_torch


def _out(value: Any, like: Any, is_torch: bool) -> Any:
    """Cast a float64 result to the output type: the input's float dtype (or the default float)."""
    if isinstance(value, torch.Tensor) and not is_torch:
        value = value.cpu().numpy()
    if is_torch:
        dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
        return value.to(device=like.device, dtype=dtype)
    dtype = like.dtype if np.issubdtype(like.dtype, np.floating) else np.float64
    return np.asarray(value, dtype=dtype)


def _fit(model: str, rows: np.ndarray, delay: int, rank: int | None) -> SnapshotFit:
    h = hankel_matrix(rows, delay)
    return (fit_affine if model == "affine" else fit_plain)(h, rank)


def _row_coefficients(snap_coef: np.ndarray, delay: int, n: int) -> np.ndarray:
    """Snapshot coefficients -> coefficients over the rows: the last block of y_t is x_{t+delay-1}."""
    out = np.zeros((*snap_coef.shape[:-1], n))
    out[..., delay - 1 :] = snap_coef
    return out


def _last_row_coefficients(n: int) -> np.ndarray:
    coef = np.zeros(n)
    coef[-1] = 1.0
    return coef


def extrapolate(
    trajectory: Any,
    steps: int | None,
    *,
    model: str = "affine",
    delay: int | None = None,
    rank: int | None = None,
    max_modulus: float = 1.0,
    eig_tol: float = 1e-2,
    fallback: str = "holdout",
    holdout_fraction: float = 0.2,
) -> Estimate:
    """Extrapolate a trajectory with Hankel DMD (a finite-dimensional Koopman approximation).

    Args:
        trajectory: (n, q) torch tensor or numpy array, rows equally spaced in time, n >= 3. A 1-D
            input (n,) is treated as q = 1 and gives a value of shape (1,). Not differentiated through.
        steps: predict this many row spacings past the last row (int >= 0), or None for the limit.
        model: "affine" (x' = A x + c; default, exact for trajectories with a non-zero limit) or
            "plain" (x' = A x; the limit is the modes with |lambda - 1| < eig_tol, as in the paper).
        delay: Hankel delay d, 1 <= d; default :func:`~glocal.koopman.hankel.default_delay` (n/4, less
            for wide trajectories). A window with n < d + 2 rows falls back.
        rank: truncation rank (int >= 1) or None for the Gavish-Donoho optimal hard threshold; both
            are capped at the number of singular values above 1e-8 sigma_1.
        max_modulus: eigenvalue moduli above this are clipped to it before propagating (> 0; 1.0 keeps
            growing modes from exploding; 0.99 bounds every mode's extrapolation to ~100 steps).
        eig_tol: plain model only: eigenvalues within this distance of 1 make up the limit.
        fallback: "holdout" (fit on the window without its last ``holdout_fraction`` of rows, predict
            them, and return the last row if the model does worse than the last value), "weighted"
            (the same check, but instead of an all-or-nothing choice return
            last + w (prediction - last) with w = e_last^2 / (e_model^2 + e_last^2): the two
            predictors weighted by the inverse of their held-out squared errors; ``weight`` reports w),
            or "never".
        holdout_fraction: fraction of rows held out, in (0, 1).

    Returns:
        An :class:`Estimate`. Bad arguments raise ValueError; numerically bad data never raises but
        falls back to the last row with ``fell_back=True`` and a ``reason``.
    """
    with _one_blas_thread():
        return _extrapolate(
            trajectory,
            steps,
            model=model,
            delay=delay,
            rank=rank,
            max_modulus=max_modulus,
            eig_tol=eig_tol,
            fallback=fallback,
            holdout_fraction=holdout_fraction,
        )


def _extrapolate(
    trajectory: Any,
    steps: int | None,
    *,
    model: str,
    delay: int | None,
    rank: int | None,
    max_modulus: float,
    eig_tol: float,
    fallback: str,
    holdout_fraction: float,
) -> Estimate:
    """Implementation of :func:`extrapolate` (arguments and their defaults as there)."""
    x, is_torch = _as_2d(trajectory)
    n, q = x.shape
    if steps is not None:
        steps = _check_int("steps", steps, 0)
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    if delay is not None:
        delay = _check_int("delay", delay, 1)
    if rank is not None:
        rank = _check_int("rank", rank, 1)
    max_modulus = _check_float("max_modulus", max_modulus, 0.0, float("inf"), True, False)
    eig_tol = _check_float("eig_tol", eig_tol, 0.0, float("inf"), True, True)
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    holdout_fraction = _check_float("holdout_fraction", holdout_fraction, 0.0, 1.0, True, True)

    last = x[-1]
    empty = np.zeros(0, dtype=np.complex128)
    nan = float("nan")

    def fall_back(
        reason: str,
        fit: SnapshotFit | None = None,
        lam: np.ndarray = empty,
        d: int = 0,
        h_err: float = nan,
        h_last: float = nan,
    ) -> Estimate:
        value = last.clone() if is_torch else np.array(last, copy=True)
        return Estimate(
            value=_out(value, x, is_torch),
            eigenvalues=lam,
            rank=fit.rank if fit else 0,
            residual=fit.residual if fit else nan,
            holdout_error=h_err,
            holdout_last_value_error=h_last,
            fell_back=True,
            weight=0.0,
            reason=reason,
            model=model,
            delay=d,
            steps=steps,
        )

    finite = bool(torch.isfinite(x).all()) if is_torch else bool(np.isfinite(x).all())
    if not finite:
        return fall_back("non-finite values (NaN or inf) in the trajectory")
    d = default_delay(n, q) if delay is None else delay
    if n < d + 2:
        return fall_back(f"too few rows for the delay: n={n} < delay + 2 = {d + 2}")

    data = _Data(x, is_torch)
    rows = data.rows(model)
    scale = float(np.sqrt(np.mean(rows**2)))  # RMS: the fit runs on O(1) numbers (float64)
    if not np.isfinite(scale) or scale <= 0.0:
        return fall_back("rank 0: the trajectory is constant" if model == "affine" else "rank 0: all zero")
    rows = rows / scale

    try:
        fit = _fit(model, rows, d, rank)
    except FitError as exc:
        return fall_back(str(exc), d=d)
    try:
        snap, lam = fit.coefficients(None if steps is None else np.array([steps]), max_modulus, eig_tol)
    except FitError as exc:
        return fall_back(str(exc), fit, clip_modulus(fit.eigenvalues, max_modulus), d)
    coef = _row_coefficients(snap[0], d, n)
    if not np.isfinite(coef).all():
        return fall_back("non-finite prediction", fit, lam, d)

    h_err = h_last = nan
    weight = 1.0
    if fallback in ("holdout", "weighted"):
        n_h = max(1, round(holdout_fraction * n))
        n_fit = n - n_h
        d_h = (default_delay(n_fit, q) if delay is None else min(delay, n_fit - 2)) if n_fit >= 3 else 0
        if d_h >= 1:
            try:
                h_fit = _fit(model, rows[:n_fit], d_h, rank)
                h_snap, _ = h_fit.coefficients(np.arange(1, n_h + 1), max_modulus, eig_tol)
            except FitError as exc:
                return fall_back(f"hold-out fit failed: {exc}", fit, lam, d)
            held = rows[n_fit:]
            pred = _row_coefficients(h_snap, d_h, n_fit) @ rows[:n_fit]
            # Relative to the raw held-out rows (affine rows are centred: add the mean back).
            ref = held if model == "plain" else held + data.small_mean / scale
            norm = float(np.linalg.norm(ref))
            e_model = float(np.linalg.norm(pred - held))
            e_last = float(np.linalg.norm(rows[n_fit - 1] - held))
            if not np.isfinite(e_model):
                return fall_back("hold-out prediction is not finite", fit, lam, d)
            if norm > 0:
                h_err, h_last = e_model / norm, e_last / norm
            if fallback == "weighted":
                weight = e_last**2 / (e_model**2 + e_last**2) if e_model + e_last > 0 else 1.0
            elif e_model > e_last:
                return fall_back(
                    f"held-out rows predicted worse than by the last value ({h_err:.3g} > {h_last:.3g})",
                    fit,
                    lam,
                    d,
                    h_err,
                    h_last,
                )

    value = data.combine(coef)
    if weight < 1.0:
        value = weight * value + (1.0 - weight) * data.combine(_last_row_coefficients(n))
    ok = bool(torch.isfinite(value).all())
    if not ok:
        return fall_back("non-finite prediction", fit, lam, d, h_err, h_last)
    return Estimate(
        value=_out(value, x, is_torch),
        eigenvalues=lam,
        rank=fit.rank,
        residual=fit.residual,
        holdout_error=h_err,
        holdout_last_value_error=h_last,
        fell_back=False,
        reason=None,
        model=model,
        delay=d,
        steps=steps,
        weight=weight,
    )
