"""Koopman (Hankel DMD) extrapolation of hypergradient trajectories.

``extrapolate(trajectory, steps, **options) -> Estimate`` predicts the value of an (n, q)
trajectory ``steps`` rows past its end (or in the limit) from a plain or affine DMD fit of its
time-delay embedding, and falls back to the last row when the fit cannot be trusted.
"""

from .estimate import Estimate
from .extrapolate import extrapolate

__all__ = ["Estimate", "extrapolate"]
