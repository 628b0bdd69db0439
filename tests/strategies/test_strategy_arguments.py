"""Argument checks and small behaviours of the strategies, at their boundaries (killing mutants)."""

import pytest
import torch

from glocal import Fixed, Global, Glocal, Local
from glocal.strategies.base import check_record_every
from glocal.strategies.glocal import guard


@pytest.mark.parametrize("make", [lambda m: Local(window=5, mode=m), lambda m: Glocal(mode=m),
                                  lambda m: Global(mode=m)])
def test_mode_must_be_forward_or_reverse(make):
    assert make("forward").mode == "forward"
    assert make("reverse").mode == "reverse"
    with pytest.raises(ValueError, match=r"mode='backward': expected 'forward' or 'reverse'"):
        make("backward")


@pytest.mark.parametrize("bad", [0, -1, True, 2.0])
def test_window_and_total_steps_are_positive_integers(bad):
    with pytest.raises(ValueError, match=r"window=.*expected an integer >= 1"):
        Local(window=bad)
    with pytest.raises(ValueError, match=r"total_steps=.*expected an integer >= 1"):
        Glocal(window=10, total_steps=bad)


def test_glocal_window_at_most_total_steps():
    assert Glocal(window=100, total_steps=100).window == 100
    with pytest.raises(ValueError, match=r"window=101: expected at most total_steps=100"):
        Glocal(window=101, total_steps=100)


def test_default_record_every_gives_record_points_per_window_and_divides_the_window():
    from glocal import defaults

    for window in range(1, 200):
        spacing = check_record_every(window, None)
        target = max(1, window // defaults.RECORD_POINTS)
        assert window % spacing == 0 and spacing <= target  # a divisor, at most the target spacing ...
        assert all(window % larger for larger in range(spacing + 1, target + 1))  # ... the largest such
    assert defaults.RECORD_POINTS == 4  # the values below are for four points per window
    assert check_record_every(20, None) == 5 and check_record_every(100, None) == 25
    assert check_record_every(95, None) == 19  # 23 does not divide 95: the largest divisor below it
    assert check_record_every(7, None) == 1 and check_record_every(4, None) == 1  # at least one step
    assert check_record_every(10, 10) == 10 and check_record_every(10, 1) == 1


@pytest.mark.parametrize("bad", [0, 3, 11])
def test_record_every_must_divide_the_window(bad):
    with pytest.raises(ValueError, match=rf"record_every={bad}"):
        check_record_every(10, bad)


def test_glocal_needs_three_recorded_points():
    assert Glocal(window=10, total_steps=100, record_every=5).record_every == 5  # rows h0, h5, h10
    with pytest.raises(ValueError, match="at least 3 recorded points"):
        Glocal(window=10, total_steps=100, record_every=10)


def test_glocal_option_boundaries():
    assert Glocal(max_ratio=1.0).max_ratio == 1.0
    assert Glocal(max_ratio=None).max_ratio is None
    assert Glocal(trust_weight=0.0).trust_weight == 0.0 and Glocal(trust_weight=1.0).trust_weight == 1.0
    with pytest.raises(ValueError, match="trust_weight"):
        Glocal(trust_weight=-0.01)
    with pytest.raises(ValueError, match=r"disagree='both': expected 'local' or 'zero'"):
        Glocal(disagree="both")
    assert Glocal(koopman={"delay": 2}).koopman == {"model": "affine", "fallback": "weighted", "delay": 2}


def test_guard_default_takes_the_local_value_and_zero_option():
    estimate, local = torch.tensor([2.0, -1.0]), torch.tensor([-0.5, -0.5])
    out, changed = guard(estimate, local, 3.0)
    assert out.tolist() == [-0.5, -1.0] and changed == 1
    out, changed = guard(estimate, local, 3.0, disagree="zero")
    assert out.tolist() == [0.0, -1.0] and changed == 1
    with pytest.raises(ValueError, match="disagree"):
        guard(estimate, local, 3.0, disagree="other")


def test_local_follows_the_last_row():
    rows = torch.tensor([[0.0, 0.0], [1.0, 2.0], [3.0, -4.0]])
    result = Local(window=5).estimate(rows, 5)
    assert torch.equal(result.hypergradient, rows[-1]) and torch.equal(result.local, rows[-1])
    assert not result.fell_back


def test_glocal_diagnostics_report_the_horizon_and_the_guard():
    rows = torch.arange(11, dtype=torch.float64)[:, None] * torch.tensor([[1.0, -2.0]])
    result = Glocal(window=100, total_steps=1000, record_every=10).estimate(rows, 300)
    assert result.diagnostics["rows_ahead"] == 70  # (1000 - 300) / 10
    assert torch.equal(result.local, rows[-1])
    assert set(result.diagnostics) >= {"rank", "residual", "holdout_error", "weight", "raw_estimate", "guarded"}
    at_end = Glocal(window=100, total_steps=1000, record_every=10).estimate(rows, 1000)
    assert at_end.diagnostics["rows_ahead"] == 0


def test_fixed_refuses_to_estimate():
    """Fixed has window 0, so the loop never asks it; a caller that does gets a clear error, not a zero step."""
    with pytest.raises(RuntimeError, match=r"^Fixed never updates hyperparameters$"):
        Fixed().estimate(torch.zeros(3, 1), 10)


def test_glocal_window_is_named():
    with pytest.raises(ValueError, match=r"^window=0: expected an integer >= 1$"):
        Glocal(window=0, total_steps=10)


def test_glocal_past_total_steps_warns_at_the_caller_and_looks_no_further_ahead():
    rows = torch.arange(11, dtype=torch.float64)[:, None] * torch.tensor([[1.0, -2.0]])
    strategy = Glocal(window=10, total_steps=20, record_every=1)
    assert strategy.estimate(rows, 20).diagnostics["rows_ahead"] == 0  # at the end: nothing ahead
    message = (r"^Glocal: training ran past total_steps=20 \(window ending at step 30\); from now on there is nothing "
               r"left to extrapolate to and Glocal follows the last recorded hypergradient, as Local does\. Raise "
               r"total_steps to plan further\.$")
    with pytest.warns(RuntimeWarning, match=message) as caught:
        result = strategy.estimate(rows, 30)
    # attributed to the code that called estimate, not to glocal's own line
    assert len(caught) == 1 and not caught[0].filename.endswith("glocal/strategies/glocal.py")
    assert result.diagnostics["rows_ahead"] == 0


def test_glocal_diagnostics_carry_the_fit_of_extrapolate():
    from glocal.koopman import extrapolate

    gen = torch.Generator().manual_seed(0)
    rows = torch.cumsum(torch.randn(11, 2, generator=gen, dtype=torch.float64), 0)
    rows[0] = 0
    strategy = Glocal(window=100, total_steps=1000, record_every=10)
    diagnostics = strategy.estimate(rows, 300).diagnostics
    fit = extrapolate(rows, 70, **strategy.koopman)
    assert diagnostics["holdout_last_value_error"] == fit.holdout_last_value_error
    assert diagnostics["eigenvalue_moduli"] == [abs(complex(e)) for e in fit.eigenvalues]
    assert diagnostics["raw_estimate"] == fit.value.tolist()


@pytest.mark.parametrize(("q", "kept"), [(64, True), (65, False)])
def test_glocal_raw_estimate_is_kept_for_up_to_64_hyperparameters(q, kept):
    rows = torch.arange(11, dtype=torch.float64)[:, None] * torch.linspace(-1.0, 1.0, q, dtype=torch.float64)
    raw = Glocal(window=100, total_steps=1000, record_every=10).estimate(rows, 300).diagnostics["raw_estimate"]
    assert (raw is not None and len(raw) == q) if kept else raw is None
