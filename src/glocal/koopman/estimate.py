"""The result of :func:`glocal.koopman.extrapolate`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Estimate"]


@dataclass(frozen=True)
class Estimate:
    """An extrapolated value and the diagnostics needed to decide whether to trust it.

    Attributes:
        value: the estimate, shape (q,), same array type as the input (torch tensor with the input's
            dtype and device, or numpy array). The last row of the input when ``fell_back``.
        eigenvalues: eigenvalues of the fitted linear part, after clipping to ``max_modulus``
            (complex numpy array of length ``rank``; empty when no fit was made).
        rank: rank of the fit (0 when no fit was made).
        residual: relative one-step fit residual in the delay-embedded space,
            ||Y1 - model(Y0)||_F / ||Y1 - mean||_F (affine) or / ||Y1||_F (plain). NaN without a fit.
        holdout_error: relative error ||pred - X_h||_F / ||X_h||_F of a fit on the window without its
            last ``holdout_fraction`` rows X_h, predicting X_h. NaN when not computed.
        holdout_last_value_error: the same for the last-value predictor (the last row of the shortened
            window repeated). ``holdout_error > holdout_last_value_error`` triggers the fallback.
        fell_back: True when ``value`` is the last row rather than the model's prediction.
        reason: why it fell back (None otherwise).
        model: "affine" or "plain".
        delay: the Hankel delay used (0 when no fit was made).
        steps: the horizon asked for (None = the limit).
        weight: with ``fallback="weighted"``, the weight w of the model's prediction in
            last + w (prediction - last); 1.0 otherwise, 0.0 when it fell back.
    """

    value: Any
    eigenvalues: np.ndarray = field(repr=False)
    rank: int
    residual: float
    holdout_error: float
    holdout_last_value_error: float
    fell_back: bool
    reason: str | None
    model: str
    delay: int
    steps: int | None
    weight: float = 1.0
