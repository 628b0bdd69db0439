"""Plain and affine Hankel DMD, with predictions expressed as combinations of the snapshots.

Both fits take the explicit (compressed, see :mod:`.hankel`) snapshot matrix H (m x D, one snapshot
per row) and return a prediction as a coefficient vector a of length m: the predicted snapshot is
sum_t a_t y_t. Since the last block of y_t is the row x_{t+d-1}, the predicted row is the same
combination of the trajectory's rows, so the caller never maps anything back from the compressed
space and the q-dimensional work is one matrix-vector product.

Notation: pairs (y_t, y_{t+1}) for t < p = m - 1; Y0, Y1 the first/second members; Y0 = V S W^T the
thin SVD (of Y0 - mean, affine); U = W_r the POD basis of rank r; z = U^T (y - mean0) (affine) or
U^T y (plain) the reduced coordinates.

* plain:  y' = A y.       A_r = Z1^T V_r S_r^-1; amplitudes W^-1 z_last (fitted to the LAST snapshot).
* affine: y' = A y + c.   Centred pairs: A_r = (Z1 - mean)^T V_r S_r^-1, c_r = mean(Z1). The prediction
  is the current state plus each mode's current per-step velocity times a geometric sum,
  z_s = z_0 + W diag(sum_{j<s} lambda^j) W^-1 (A_r z_0 + c_r - z_0). Without clipping this equals
  z* + A_r^s (z_0 - z*) with the fixed point z* = (I - A_r)^-1 c_r, and the limit is exactly z*;
  with clipping each mode keeps its measured velocity and is extrapolated over at most
  ~1 / (1 - max_modulus) steps, instead of being sent to a far-away fitted fixed point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .rank import select_rank

__all__ = ["FitError", "SnapshotFit", "clip_modulus", "fit_affine", "fit_plain", "geometric_sum"]

#: |1 - lambda| below this counts as an eigenvalue of exactly 1 (no finite affine limit).
UNIT_TOL = 1e-9


class FitError(Exception):
    """The fit cannot be trusted; the message says why (it becomes ``Estimate.reason``)."""


def clip_modulus(lam: np.ndarray, max_modulus: float) -> np.ndarray:
    """Scale every eigenvalue with |lambda| > max_modulus back to modulus max_modulus (same angle)."""
    lam = np.asarray(lam, dtype=np.complex128)
    mod = np.abs(lam)
    scale = np.where(mod > max_modulus, max_modulus / np.where(mod > 0, mod, 1.0), 1.0)
    return lam * scale


def geometric_sum(lam: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """sum_{j < s} lambda^j for every s in ``steps`` (rows) and lambda in ``lam`` (columns)."""
    lam = np.asarray(lam, dtype=np.complex128)[None, :]
    s = np.asarray(steps, dtype=np.float64)[:, None]
    one_minus = 1.0 - lam
    near = np.abs(one_minus) < 1e-8
    safe = np.where(near, 1.0, one_minus)
    exact = (1.0 - lam**s) / safe
    series = s + 0.5 * s * (s - 1.0) * (lam - 1.0)
    return np.where(near, series, exact)


def _svd(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        v, s, wt = np.linalg.svd(y, full_matrices=False)
    except np.linalg.LinAlgError as exc:
        raise FitError("SVD did not converge") from exc
    return v, s, wt


def _eig(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not np.isfinite(a).all():
        raise FitError("non-finite reduced operator")
    lam, w = np.linalg.eig(a)
    return lam.astype(np.complex128), w.astype(np.complex128)


def _solve(w: np.ndarray, b: np.ndarray) -> np.ndarray:
    try:
        x = np.linalg.solve(w, b.astype(np.complex128))
    except np.linalg.LinAlgError as exc:
        raise FitError("defective reduced operator (singular eigenvector matrix)") from exc
    if not np.isfinite(x).all():
        raise FitError("non-finite mode amplitudes")
    return x


def _relative(res: np.ndarray, ref: np.ndarray) -> float:
    den = float(np.linalg.norm(ref))
    return float(np.linalg.norm(res)) / den if den > 0 else float("nan")


@dataclass(frozen=True)
class SnapshotFit:
    """A fitted model in snapshot-coefficient form.

    ``modes`` (m, r): snapshot coefficients of the DMD modes U W; ``eigenvalues`` (r,): the raw
    fitted eigenvalues; ``base`` (m,): snapshot coefficients of the model's last snapshot (affine)
    or zero (plain); ``amplitudes`` (r,): modal amplitudes at the last snapshot (plain) or modal
    per-step velocities there (affine).
    """

    model: str
    eigenvalues: np.ndarray
    modes: np.ndarray
    base: np.ndarray
    amplitudes: np.ndarray
    rank: int
    residual: float

    def coefficients(
        self, steps: np.ndarray | None, max_modulus: float, eig_tol: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Snapshot coefficients of the predicted snapshot ``steps`` past the last one.

        Returns (coefficients of shape (len(steps), m), or (1, m) for the limit ``steps=None``;
        the clipped eigenvalues).
        """
        lam = clip_modulus(self.eigenvalues, max_modulus)
        if self.model == "plain":
            if steps is None:
                factor = (np.abs(lam - 1.0) < eig_tol).astype(np.complex128)[None, :]
            else:
                factor = lam[None, :] ** np.asarray(steps, dtype=np.float64)[:, None]
        elif steps is None:
            if np.any(np.abs(1.0 - lam) < UNIT_TOL):
                raise FitError(
                    f"no finite limit: an eigenvalue is 1 after clipping to max_modulus={max_modulus} "
                    "(the fit extrapolates a drift); use max_modulus < 1 or a finite horizon"
                )
            factor = (1.0 / (1.0 - lam))[None, :]
        else:
            factor = geometric_sum(lam, steps)
        coef = self.base[None, :] + np.real((factor * self.amplitudes[None, :]) @ self.modes.T)
        return coef, lam


def fit_plain(h: np.ndarray, rank: int | None = None) -> SnapshotFit:
    """Plain DMD y' = A y of the snapshot rows of ``h`` (m x D)."""
    m, dim = h.shape
    p = m - 1
    if p < 1:
        raise FitError("too few snapshots for a fit")
    v, sigma, wt = _svd(h[:p])
    r = select_rank(sigma, (p, dim), rank)
    if r == 0:
        raise FitError("rank 0: no dynamics above the noise/round-off floor")
    vs = v[:, :r] / sigma[:r]
    u = wt[:r].T
    z = h @ u
    a = z[1:].T @ vs
    lam, w = _eig(a)
    alpha = _solve(w, z[-1])
    bu = np.zeros((m, r))
    bu[:p] = vs
    residual = _relative(h[1:] - (z[:p] @ a.T) @ u.T, h[1:])
    return SnapshotFit("plain", lam, bu @ w, np.zeros(m), alpha, r, residual)


def fit_affine(h: np.ndarray, rank: int | None = None) -> SnapshotFit:
    """Affine DMD y' = A y + c of the snapshot rows of ``h`` (m x D)."""
    m, dim = h.shape
    p = m - 1
    if p < 2:
        raise FitError("too few snapshot pairs for an affine fit (need 2)")
    mean0 = h[:p].mean(0)
    v, sigma, wt = _svd(h[:p] - mean0)
    r = select_rank(sigma, (max(p - 1, 1), dim), rank)
    if r == 0:
        raise FitError("rank 0: no dynamics above the noise/round-off floor")
    vs = v[:, :r] / sigma[:r]
    u = wt[:r].T
    z = (h - mean0) @ u
    c_r = z[1:].mean(0)
    a = (z[1:] - c_r).T @ vs
    z0 = z[-1]
    lam, w = _eig(a)
    velocity = _solve(w, a @ z0 + c_r - z0)
    e0 = np.zeros(m)
    e0[:p] = 1.0 / p
    bu = np.zeros((m, r))
    bu[:p] = vs - vs.mean(0)  # U = (Y0 - mean0)^T V S^-1 in snapshot coefficients
    base = e0 + bu @ z0
    y1 = h[1:]
    residual = _relative(y1 - mean0 - (z[:p] @ a.T + c_r) @ u.T, y1 - y1.mean(0))
    return SnapshotFit("affine", lam, bu @ w, base, velocity, r, residual)
