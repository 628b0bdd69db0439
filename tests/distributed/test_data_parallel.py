"""Two gloo ranks on half batches follow the one-process run on whole batches (float64, <= 1e-10)."""

from __future__ import annotations

import pytest
import torch
from dp_cases import CASES, WINDOWS, rank_dropins, rank_tuners, run_dropin, run_tuner
from gloo_ranks import expect_ok, run_ranks

TOL = 1e-10


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.mark.slow
@pytest.mark.parametrize(("on_ranks", "one_process"), [(rank_tuners, run_tuner), (rank_dropins, run_dropin)],
                         ids=["Tuner", "drop-in"])
def test_two_ranks_on_half_batches_equal_one_process_on_whole_batches(on_ranks, one_process):
    """SGD and AdamW, forward mode (Local, Glocal) and plain (Fixed): parameters, phi and losses after
    3 windows; rank 1 starts from another model and phi, which the start-up broadcast replaces."""
    ranks = expect_ok(run_ranks(on_ranks, timeout=300))
    for case in CASES:
        reference = one_process(*case)
        if case[1] != "fixed":
            assert reference["windows"] == WINDOWS, case
            assert len(reference["val_loss"]) >= WINDOWS, case
            assert not torch.equal(reference["raw"], reference["raw0"]), case  # phi was tuned
        for rank, result in enumerate(ranks):
            got = result[case]
            assert _rel(got["raw"], reference["raw"]) <= TOL, (case, rank, got["raw"], reference["raw"])
            for p, ref in zip(got["params"], reference["params"], strict=True):
                assert _rel(p, ref) <= TOL, (case, rank)
            assert got["train_loss"] == pytest.approx(reference["train_loss"], rel=TOL, nan_ok=True), case
            assert got["val_loss"] == pytest.approx(reference["val_loss"], rel=TOL), case
        # every rank holds bitwise the same parameters and phi
        assert torch.equal(ranks[0][case]["raw"], ranks[1][case]["raw"])
        assert all(torch.equal(a, b) for a, b in zip(ranks[0][case]["params"], ranks[1][case]["params"], strict=True))


@pytest.mark.slow
def test_a_rank_that_dies_mid_run_makes_the_other_exit_with_a_clear_error_not_a_hang():
    from dp_cases import rank_dies_mid_run

    survivor, dead = run_ranks(rank_dies_mid_run, timeout=120, pg_timeout=60)
    assert dead.exitcode == 7
    assert survivor.exitcode == 1, f"rank 0 hung or ended without noticing (exit {survivor.exitcode})"
    assert "DistributedError: glocal.distributed:" in survivor.error and "failed on rank 0 of 2" in survivor.error
    assert "a peer process probably died" in survivor.error
    assert survivor.seconds < 50  # well before the process group's timeout: the crash is noticed at once


@pytest.mark.slow
def test_a_stalled_rank_makes_the_other_exit_after_the_process_group_timeout():
    from dp_cases import rank_dies_mid_run

    survivor, stalled = run_ranks(rank_dies_mid_run, True, timeout=45, pg_timeout=5, wait_for=(0,))
    assert survivor.exitcode == 1, f"rank 0 hung past the process group's timeout (exit {survivor.exitcode})"
    assert "DistributedError: glocal.distributed:" in survivor.error and "failed on rank 0 of 2" in survivor.error
    assert stalled.exitcode is None  # still asleep when rank 0 had already given up (the harness kills it)
    assert survivor.seconds < 40
