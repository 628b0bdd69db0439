"""Rank selection: Gavish-Donoho optimal hard threshold for singular values.

Gavish & Donoho (2014), "The optimal hard threshold for singular values is 4/sqrt(3)", for an
unknown noise level: keep sigma_i > omega(beta) * median(sigma), with beta the aspect ratio of the
matrix and omega(beta) ~ 0.56 beta^3 - 0.95 beta^2 + 1.82 beta + 1.43. It is guarded by a relative
floor (sigma_i > floor * sigma_1) so that round-off is never fitted when the median itself is at
round-off level (exact, noise-free data). An energy rule ("keep 99.9 %") is deliberately not offered:
it fits noise on SGD data.
"""

from __future__ import annotations

import numpy as np

__all__ = ["RANK_FLOOR", "omega", "optimal_hard_threshold", "select_rank"]

#: Singular values below RANK_FLOOR * sigma_1 are never kept.
RANK_FLOOR = 1e-8


def omega(beta: float) -> float:
    """Gavish-Donoho coefficient omega(beta) for unknown noise, aspect ratio 0 < beta <= 1."""
    if not 0.0 < beta <= 1.0:
        raise ValueError(f"beta must be in (0, 1], got {beta}")
    return 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43


def optimal_hard_threshold(sigma: np.ndarray, shape: tuple[int, int]) -> float:
    """The threshold omega(beta) * median(sigma) for a matrix of ``shape`` with singular values sigma."""
    k = min(shape)
    s = np.sort(np.asarray(sigma, dtype=np.float64))[::-1][:k]
    if s.size == 0:
        return 0.0
    beta = min(shape) / max(shape)
    return omega(beta) * float(np.median(s))


def select_rank(sigma: np.ndarray, shape: tuple[int, int], rank: int | None = None, floor: float = RANK_FLOOR) -> int:
    """Number of leading singular values to keep.

    ``sigma`` must be sorted in decreasing order. ``rank=None`` applies the optimal hard threshold;
    an int asks for that rank. Either way, values at or below ``floor * sigma_1`` are never kept.
    """
    s = np.asarray(sigma, dtype=np.float64)[: min(shape)]
    if s.size == 0 or not np.isfinite(s).all() or s[0] <= 0.0:
        return 0
    usable = int(np.count_nonzero(s > floor * s[0]))
    if rank is not None:
        return min(int(rank), usable)
    tau = optimal_hard_threshold(s, shape)
    return min(int(np.count_nonzero(s > tau)), usable)
