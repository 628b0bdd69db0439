"""Several worker processes on one SQLite study; a killed worker's trial is re-queued."""

import signal
import sqlite3
import time
from pathlib import Path

import pytest

pytest.importorskip("optuna")

from shared_study import run_two_workers_on_one_study, start_worker

from glocal_bench import search
from glocal_bench.experiment import Settings


def test_two_workers_complete_one_sqlite_study_without_lost_or_duplicated_trials(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    result = run_two_workers_on_one_study(storage, tmp_path, timeout=120)
    assert all((tmp_path / f"w{i}" / "results.json").exists() for i in range(2))
    # both workers ran trials (a trial that lost the race for the last budget is pruned at step 0 before it
    # records a worker: by design, see search.run_search)
    assert len({t["worker"] for t in result.trials if t["reason"] != "budget"}) == 2


def _running_steps(db: Path) -> int:
    """Steps reported so far by the study's running trial (0 if none)."""
    try:
        with sqlite3.connect(db, timeout=5) as con:
            rows = con.execute(
                "SELECT a.value_json FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
                "WHERE t.state = 'RUNNING' AND a.key = 'steps'").fetchall()
    except sqlite3.Error:
        return 0
    return max((int(float(r[0])) for r in rows), default=0)


def test_a_killed_workers_trial_is_requeued_after_its_heartbeat_goes_stale(tmp_path):
    db = tmp_path / "study.db"
    storage = f"sqlite:///{db}"
    settings = Settings(steps=1000, window=100)
    worker = start_worker(storage, tmp_path / "w", "--budget-runs", "1", "--steps", "1000", "--window", "100",
                          "--pruner", "none", "--heartbeat", "1")
    deadline = time.monotonic() + 90
    while _running_steps(db) < 100:
        assert worker.poll() is None and time.monotonic() < deadline, "the worker ended before it could be killed"
        time.sleep(0.1)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    time.sleep(4)  # grace period: twice the heartbeat (SQLite clocks have 1 s resolution)
    result = search.run_search("quadratic", "local", budget_runs=1, storage=storage, study_name="shared",
                               settings=settings, pruner="none", heartbeat=1)
    states = [t["state"] for t in result.trials]
    assert states == ["FAIL", "COMPLETE"]
    assert result.trials[1]["retry_of"] == 0 and result.trials[1]["params"] == result.trials[0]["params"]
    assert result.spent_runs == 1 and result.trials[0]["reason"] == "interrupted"
