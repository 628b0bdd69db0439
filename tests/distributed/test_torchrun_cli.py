"""``torchrun --nproc-per-node 2 -m glocal ...``: sharded batches, rank 0 alone writes, same results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from glocal_bench.cli import main

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ARGS = ["compare", "--task", "quadratic", "--strategies", "fixed,local,glocal,global", "--steps", "60",
        "--window", "20", "--outer-steps", "2", "--threads", "1", "--quiet"]


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run a command in its own session; on timeout kill the whole session (torchrun's workers too)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(argv[:6])}... hung for {timeout} s:\n{err[-2000:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _records(folder) -> dict[str, dict]:
    return {r["strategy"]: r for r in json.loads((folder / "results.json").read_text())["records"]}


@pytest.mark.slow
def test_two_ranks_under_torchrun_match_one_process_and_only_rank_0_writes(tmp_path):
    single = _run([sys.executable, "-m", "glocal", *ARGS, "--out", str(tmp_path / "one")], 240)
    assert single.returncode == 0, single.stderr
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "-m", "glocal"]
    both = _run([*launcher, *ARGS, "--out", str(tmp_path / "two")], 240)
    assert both.returncode == 0, both.stderr
    assert both.stdout.count("| quadratic | global |") == 1  # the table is printed by rank 0 only
    one, two = _records(tmp_path / "one"), _records(tmp_path / "two")
    assert set(one) == set(two) == {"fixed", "local", "glocal", "global"}
    for name, ref in one.items():  # float64 task: the half-batch ranks follow the whole-batch run
        assert two[name]["final_val_loss"] == pytest.approx(ref["final_val_loss"], rel=1e-10), name
        for key, value in ref["hparams"].items():
            assert two[name]["hparams"][key] == pytest.approx(value, rel=1e-10), (name, key)
    assert one["local"]["hparams"] != one["fixed"]["hparams"]  # something was tuned


def test_commands_that_are_not_data_parallel_refuse_to_run_under_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["bench", "estimator", "--quick"]) == 2
    assert "glocal bench: does not run under torchrun" in capsys.readouterr().err


@pytest.mark.slow
def test_a_search_run_by_one_torchrun_job_has_the_trials_of_a_one_process_search(tmp_path):
    """Rank 0 runs the study and the other rank joins each trial's run, pruned ones included."""
    pytest.importorskip("optuna")
    from glocal_bench import search
    from glocal_bench.experiment import Settings

    argv = ["search", "--task", "quadratic", "--inner", "local", "--budget-runs", "4", "--steps", "100",
            "--window", "25", "--startup-trials", "2", "--spread", "100", "--threads", "1", "--quiet"]
    single = _run([sys.executable, "-m", "glocal", *argv, "--out", str(tmp_path / "one")], 240)
    assert single.returncode == 0, single.stderr
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "glocal"]
    both = _run([*launcher, *argv, "--out", str(tmp_path / "two")], 240)
    assert both.returncode == 0, both.stderr
    settings = Settings(steps=100, window=25)
    one, two = (search.load_search("quadratic", "local", 0, f"sqlite:///{tmp_path / d / 'study.db'}",
                                   settings=settings).trials for d in ("one", "two"))
    assert [t["state"] for t in one] == [t["state"] for t in two]
    assert "PRUNED" in [t["state"] for t in one]  # the stop signal to the other rank was exercised
    for a, b in zip(one, two, strict=True):
        assert a["params"] == pytest.approx(b["params"], rel=1e-12) and a["steps"] == b["steps"]
        if a["value"] is not None:
            assert b["value"] == pytest.approx(a["value"], rel=1e-10)


@pytest.mark.slow
def test_two_torchrun_jobs_share_one_study_as_workers_without_lost_or_duplicated_trials(tmp_path):
    """The two-level recipe: each worker of one study is a 2-rank data-parallel job."""
    pytest.importorskip("optuna")
    from glocal_bench import search
    from glocal_bench.experiment import Settings

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    argv = ["search", "--task", "quadratic", "--inner", "local", "--budget-runs", "4", "--steps", "100",
            "--window", "25", "--pruner", "none", "--storage", storage, "--study-name", "shared", "--threads", "1",
            "--quiet"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "glocal"]
    jobs = [subprocess.Popen([*launcher, *argv, "--out", str(tmp_path / f"job{j}")], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True) for j in range(2)]
    try:
        for job in jobs:
            _, err = job.communicate(timeout=300)
            assert job.returncode == 0, err
    finally:
        for job in jobs:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
    result = search.load_search("quadratic", "local", 0, storage, "shared", settings=Settings(steps=100, window=25))
    states = [t["state"] for t in result.trials]
    assert "RUNNING" not in states and "WAITING" not in states and "FAIL" not in states  # none lost
    assert [t["number"] for t in result.trials] == list(range(len(result.trials)))
    done = [t for t in result.trials if t["state"] == "COMPLETE"]  # (a job that lost the race for the
    assert len(done) == 4 and 4 <= result.spent_runs < 5  # last budget prunes its trial at step 0)
    assert len({tuple(sorted(t["params"].items())) for t in done}) == 4
    # both jobs ran trials (a trial pruned for the budget is its worker's too: it was None, a third "worker")
    assert len({t["worker"] for t in result.trials}) == 2 and None not in {t["worker"] for t in result.trials}
