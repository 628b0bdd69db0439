"""Time-delay (Hankel) embedding and the lossless compression that makes wide inputs cheap.

A trajectory X of shape (n, q) is embedded as the snapshots y_t = [x_t, x_{t+1}, .., x_{t+d-1}]
(t = 0 .. n-d), each of dimension d*q. DMD only depends on inner products of snapshots, so when
q > n the rows are first replaced by their coordinates in an orthonormal basis of their span
(X^T = Q R, rows of R^T; a QR of the q x n matrix, O(n^2 q)): every inner product is preserved and
the embedded dimension drops from d*q to d*n. This is the method of snapshots done with a QR instead
of the Gram matrix X X^T, which would square the condition number and lose every singular value
below ~1e-8 sigma_1 (measured: the ridge test lost the modes that carry its last digits).
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["compress_rows", "default_delay", "hankel_matrix"]


def default_delay(n: int, q: int) -> int:
    """Default delay d for an (n, q) window.

    About n/4, but no longer than needed to make the snapshot dimension d*q at
    least 3 times the largest rank the window can resolve ((n - d)/2, so that n - d >= 2 rank):
    d >= 3 n / (2 q + 3). Wide trajectories (q >= n) therefore get d = 1, which keeps all n - 1
    snapshot pairs; scalar ones get n/4. Always 1 <= d <= n - 2.
    """
    if n < 3:
        raise ValueError(f"default_delay needs n >= 3 rows, got n={n}")
    d = min(round(n / 4), math.ceil(3 * n / (2 * q + 3)))
    return int(max(1, min(d, n - 2)))


def compress_rows(rows: torch.Tensor) -> np.ndarray:
    """Rows with the same pairwise inner products, in at most (number of rows) columns (float64 numpy).

    ``rows`` is (k, q), float64, on any device. For q <= k it is returned as is; otherwise as R^T from
    the QR decomposition rows^T = Q R (R is k x k).
    """
    k, q = rows.shape
    if q <= k:
        return rows.cpu().numpy()
    r = torch.linalg.qr(rows.T, mode="r")[1]
    return r.T.cpu().numpy()


def hankel_matrix(x: np.ndarray, delay: int) -> np.ndarray:
    """The (n - delay + 1, delay * q) matrix whose rows are the delay-embedded snapshots of x (n, q)."""
    n = x.shape[0]
    if not 1 <= delay <= n:
        raise ValueError(f"delay must be in [1, n={n}], got {delay}")
    m = n - delay + 1
    return np.concatenate([x[i : i + m] for i in range(delay)], axis=1)
