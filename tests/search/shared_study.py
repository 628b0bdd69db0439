"""Helpers for the tests that run several real `glocal search` workers on one study."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from glocal_bench import search
from glocal_bench.experiment import Settings

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def start_worker(storage: str, out: Path, *extra: str) -> subprocess.Popen:
    """One `glocal search` worker process on the study "shared" (quadratic task, local inner strategy)."""
    argv = [sys.executable, "-m", "glocal_bench.cli", "search", "--task", "quadratic", "--inner", "local",
            "--storage", storage, "--study-name", "shared", "--out", str(out), "--threads", "1", "--quiet", *extra]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def run_two_workers_on_one_study(storage: str, tmp_path: Path, timeout: float) -> search.SearchResult:
    """Two workers share a 6-run budget (no pruner); checks that no trial is lost, duplicated, left
    running or failed and that the budget is respected, and returns the study for further checks."""
    extra = ("--budget-runs", "6", "--steps", "400", "--window", "100", "--pruner", "none")
    workers = [start_worker(storage, tmp_path / f"w{i}", *extra) for i in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=timeout)
        assert w.returncode == 0, err
    result = search.load_search("quadratic", "local", 0, storage, "shared", settings=Settings(steps=400, window=100))
    states = [t["state"] for t in result.trials]
    assert "RUNNING" not in states and "WAITING" not in states and "FAIL" not in states
    assert [t["number"] for t in result.trials] == list(range(len(result.trials)))
    done = [t for t in result.trials if t["state"] == "COMPLETE"]
    assert 6 <= result.spent_runs < 7 and len(done) == 6  # no pruner: every trial is one whole run
    params = [tuple(sorted(t["params"].items())) for t in done]
    assert len(set(params)) == len(params)
    return result
