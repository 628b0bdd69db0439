"""Glocal's per-coordinate guard: sign agreement with the local value and a bounded ratio."""

import pytest
import torch

from glocal import Glocal, defaults
from glocal.strategies.glocal import guard


def test_guard_takes_local_on_disagreement_and_caps_the_ratio():
    estimate = torch.tensor([-5.0, 0.5, 2.0, -0.1, 0.0])
    local = torch.tensor([-1.0, -0.2, 1.0, -0.2, 0.3])
    out, changed = guard(estimate, local, 3.0)
    assert out.tolist() == pytest.approx([-3.0, -0.2, 2.0, -0.1, 0.3])
    assert changed == 3


def test_a_trusted_fit_is_followed_as_is():
    # an exactly linear trajectory: the fit predicts the held-out rows (weight ~1), so the estimate is
    # followed even far beyond 3x the local value (full-batch dynamics, where glocal is accurate)
    rows = torch.arange(11, dtype=torch.float64)[:, None] * torch.tensor([[1.0, -1e-3]])
    result = Glocal(window=100, total_steps=2000, record_every=10).estimate(rows, 100)
    assert result.diagnostics["weight"] >= 0.99 and result.diagnostics["guarded"] == 0
    assert result.hypergradient[0] > 30


def _noisy_rows():
    gen = torch.Generator().manual_seed(0)
    steps = torch.arange(11, dtype=torch.float64)[:, None]
    rows = steps * torch.tensor([[1.0, -1e-3]]) + torch.randn(11, 2, generator=gen, dtype=torch.float64) * 2.0
    rows[:, 1] *= 1e-3
    return rows


def test_an_untrusted_fit_follows_the_last_row_by_default():
    rows = _noisy_rows()
    strategy = Glocal(window=100, total_steps=2000, record_every=10)
    assert strategy.untrusted == defaults.UNTRUSTED == "last"
    result = strategy.estimate(rows, 100)
    assert result.diagnostics["weight"] < strategy.trust_weight and not result.fell_back
    assert torch.equal(result.hypergradient, rows[-1])
    raw = torch.tensor(result.diagnostics["raw_estimate"], dtype=torch.float64)
    assert result.diagnostics["guarded"] == int((raw != rows[-1]).sum()) > 0


def test_an_untrusted_fit_is_guarded_against_the_last_row_on_request():
    rows = _noisy_rows()
    strategy = Glocal(window=100, total_steps=2000, record_every=10, untrusted="guard")
    assert strategy.max_ratio == defaults.MAX_RATIO
    result = strategy.estimate(rows, 100)
    assert result.diagnostics["weight"] < strategy.trust_weight
    raw = torch.tensor(result.diagnostics["raw_estimate"], dtype=torch.float64)
    expected, changed = guard(raw, rows[-1], defaults.MAX_RATIO)
    assert torch.equal(result.hypergradient, expected) and result.diagnostics["guarded"] == changed
    assert (result.hypergradient.abs() <= defaults.MAX_RATIO * rows[-1].abs() + 1e-15).all()
    one = Glocal(window=100, total_steps=2000, record_every=10, untrusted="guard", max_ratio=1.0).estimate(rows, 100)
    assert torch.equal(one.hypergradient, guard(raw, rows[-1], 1.0)[0])
    off = Glocal(window=100, total_steps=2000, record_every=10, untrusted="guard", max_ratio=None).estimate(rows, 100)
    assert torch.equal(off.hypergradient, raw)


def test_bad_untrusted():
    with pytest.raises(ValueError, match="untrusted='guess': expected 'last' or 'guard'"):
        Glocal(untrusted="guess")


@pytest.mark.parametrize("bad", [0.5, float("inf"), float("nan")])
def test_bad_max_ratio(bad):
    with pytest.raises(ValueError, match="max_ratio"):
        Glocal(max_ratio=bad)


def test_bad_trust_weight():
    with pytest.raises(ValueError, match="trust_weight"):
        Glocal(trust_weight=1.5)


def noisy_rising(noise: float = 0.5, seed: int = 0) -> torch.Tensor:
    """h_0 = 0, then a trajectory still rising at the window's end, with noise: the fit extrapolates
    far beyond the local value, and the noise keeps the held-out check from trusting it fully."""
    gen = torch.Generator().manual_seed(seed)
    k = torch.arange(11, dtype=torch.float64)[:, None]
    rows = k * torch.tensor([[1.0, -0.5]]) + noise * torch.randn(11, 2, generator=gen, dtype=torch.float64)
    rows[0] = 0
    return rows


def test_an_untrusted_fit_far_beyond_the_local_value_is_capped_and_one_at_trust_weight_is_not():
    rows = noisy_rising()
    strategy = Glocal(window=100, total_steps=2000, record_every=10, untrusted="guard")
    result = strategy.estimate(rows, 100)
    weight = result.diagnostics["weight"]
    raw = torch.tensor(result.diagnostics["raw_estimate"], dtype=torch.float64)
    assert not result.fell_back and weight < strategy.trust_weight  # an untrusted fit ...
    assert (raw.abs() > strategy.max_ratio * rows[-1].abs()).any()  # ... beyond the cap
    expected, changed = guard(raw, rows[-1], strategy.max_ratio)
    assert changed > 0 and result.diagnostics["guarded"] == changed
    assert torch.equal(result.hypergradient, expected)
    # the guard is skipped when the weight is at least trust_weight: equal counts as trusted
    at = Glocal(window=100, total_steps=2000, record_every=10, untrusted="guard",
                trust_weight=weight).estimate(rows, 100)
    assert at.diagnostics["weight"] == weight
    assert at.diagnostics["guarded"] == 0 and torch.equal(at.hypergradient, raw)


@pytest.mark.parametrize(("disagree", "value"), [("local", 0.2), ("zero", 0.0)])
def test_a_coordinate_that_disagrees_in_sign_becomes_the_local_value_or_zero(disagree, value):
    rows = noisy_rising()
    rows[-1, 1] = 0.2  # the last local value of a falling coordinate, pushed above zero by noise
    strategy = Glocal(window=100, total_steps=2000, record_every=10, untrusted="guard", disagree=disagree)
    assert strategy.disagree == disagree
    result = strategy.estimate(rows, 100)
    assert not result.fell_back and result.diagnostics["weight"] < strategy.trust_weight
    assert result.diagnostics["raw_estimate"][1] < 0  # the fit follows the falling trend
    assert result.hypergradient[1].item() == value and result.diagnostics["guarded"] >= 1


def test_guard_caps_both_signs_and_never_divides():
    out, changed = guard(torch.tensor([5.0, -5.0, 2.0]), torch.tensor([1.0, -1.0, 1.0]), 3.0)
    assert out.tolist() == [3.0, -3.0, 2.0] and changed == 2
    for disagree in ("local", "zero"):  # a local value of exactly zero: nothing to move by
        out, changed = guard(torch.tensor([1.0, -2.0]), torch.tensor([0.0, 0.0]), 3.0, disagree)
        assert out.tolist() == [0.0, 0.0] and changed == 2
