"""Glocal's per-coordinate guard: sign agreement with the local value and a bounded ratio."""

import pytest
import torch

from glocal import Glocal
from glocal.strategies.glocal import guard


def test_guard_takes_local_on_disagreement_and_caps_the_ratio():
    estimate = torch.tensor([-5.0, 0.5, 2.0, -0.1, 0.0])
    local = torch.tensor([-1.0, -0.2, 1.0, -0.2, 0.3])
    out, changed = guard(estimate, local, 3.0)
    assert out.tolist() == pytest.approx([-3.0, -0.2, 2.0, -0.1, 0.3])
    assert changed == 3


def test_glocal_applies_the_guard_and_reports_it():
    # a trajectory growing linearly: the extrapolation to T is far larger than the local value
    rows = torch.arange(11, dtype=torch.float64)[:, None] * torch.tensor([[1.0, -1e-3]])
    strategy = Glocal(window=100, total_steps=2000, record_every=10)
    result = strategy.estimate(rows, 100)
    assert result.hypergradient.tolist() == pytest.approx([30.0, -3e-2])
    assert result.diagnostics["guarded"] == 2
    assert abs(result.diagnostics["raw_estimate"][0]) > 30
    unguarded = Glocal(window=100, total_steps=2000, record_every=10, max_ratio=None).estimate(rows, 100)
    assert unguarded.hypergradient[0] > 30


@pytest.mark.parametrize("bad", [0.5, float("inf"), float("nan")])
def test_bad_max_ratio(bad):
    with pytest.raises(ValueError, match="max_ratio"):
        Glocal(max_ratio=bad)
