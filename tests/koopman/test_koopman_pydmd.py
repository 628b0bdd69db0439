"""Agreement with PyDMD's HankelDMD (dev-only reference) on the plain model."""

from __future__ import annotations

import numpy as np
import pytest
from koopman_systems import modal_system

from glocal.koopman import extrapolate

pydmd = pytest.importorskip("pydmd")


@pytest.mark.filterwarnings("ignore:Input data condition number")
@pytest.mark.parametrize("q", [1, 3])
def test_plain_eigenvalues_and_prediction_match_hankel_dmd(q):
    n, d, steps = 60, 10, 15
    x, exact, _ = modal_system(3, q, n, constant=False)
    est = extrapolate(x, steps, model="plain", delay=d, rank=4, fallback="never")
    ref = pydmd.HankelDMD(svd_rank=4, d=d, exact=True)
    ref.fit(x.T)  # PyDMD: snapshots are columns
    ours = np.sort_complex(est.eigenvalues)
    theirs = np.sort_complex(np.asarray(ref.eigs))
    np.testing.assert_allclose(ours, theirs, atol=1e-9)
    ref.dmd_time["tend"] = n - 1 + steps
    predicted = np.real(ref.reconstructed_data[:, -1])
    np.testing.assert_allclose(est.value, predicted, atol=1e-7 * np.abs(x).max())
    np.testing.assert_allclose(est.value, exact(n - 1 + steps), atol=1e-9 * np.abs(x).max())
