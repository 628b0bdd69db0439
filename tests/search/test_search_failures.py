"""glocal_bench.search when trials go wrong: divergence, pruning by halving, a raising trial, several seeds."""

import json
import math

import pytest

pytest.importorskip("optuna")

from glocal_bench import experiment, search
from glocal_bench.cli import main
from glocal_bench.experiment import Settings

TINY = Settings(steps=40, window=10)


@pytest.mark.parametrize("inner", ["fixed", "local"])
def test_a_diverging_trial_is_pruned_with_reason_diverged(inner):
    """lr = 9.9 (inside the default bounds) on the quadratic task: the validation loss overflows."""
    settings = Settings(steps=400, window=100, init={"lr": 9.9})
    result = search.run_search("quadratic", inner, budget_runs=1, settings=settings)
    first = result.trials[0]
    assert first["init"]["lr"] == pytest.approx(9.9)
    assert first["state"] == "PRUNED" and first["reason"] == "diverged" and first["value"] is None
    report_every = 40 if inner == "fixed" else 100  # T/10 steps (fixed) or a window (online)
    assert first["steps"] < 400 and first["steps"] % report_every == 0
    assert first["units"] == pytest.approx(first["steps"] / 400)
    # pruned trials count for the steps they ran; no complete trial: no best record
    assert result.spent_runs == pytest.approx(sum(t["units"] for t in result.trials))
    if all(t["state"] == "PRUNED" for t in result.trials):
        assert result.best is None and math.isnan(result.record()["final_val_loss"])


def test_halving_pruner_stops_trials_after_a_ninth_of_the_run():
    result = search.run_search("quadratic", "fixed", budget_runs=4, seed=0, pruner="halving", settings=TINY)
    pruned = [t for t in result.trials if t["state"] == "PRUNED"]
    complete = [t for t in result.trials if t["state"] == "COMPLETE"]
    assert pruned and complete
    for t in pruned:  # successive halving's first rung: T/9 = 4 steps, the first report
        assert t["reason"] == "pruned" and t["steps"] == 4 and t["units"] == pytest.approx(0.1)
    assert all(t["steps"] == 40 for t in complete)
    assert 4 <= result.spent_runs < 5
    summary = result.record()["study"]
    assert summary["pruner"] == "halving" and summary["n_pruned"] == len(pruned)
    assert result.record()["final_val_loss"] == min(t["value"] for t in complete)
    # the median pruner, same seed, prunes differently (it waits for T/5 steps and 2 finished trials)
    median = search.run_search("quadratic", "fixed", budget_runs=4, seed=0, pruner="median", settings=TINY)
    assert all(t["steps"] >= 8 for t in median.trials if t["state"] == "PRUNED")


def test_a_trial_that_raises_stops_the_search_is_recorded_and_is_not_retried(tmp_path, monkeypatch):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    kwargs = {"budget_runs": 3, "seed": 0, "settings": TINY, "pruner": "none", "storage": storage}
    real = experiment.run
    calls = []

    def failing(name, strategy, seed, settings, progress=None, on_curve=None):
        calls.append(name)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return real(name, strategy, seed, settings, progress, on_curve)

    monkeypatch.setattr(search.experiment, "run", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        search.run_search("quadratic", "fixed", **kwargs)
    monkeypatch.setattr(search.experiment, "run", real)
    resumed = search.run_search("quadratic", "fixed", **kwargs)
    failed = [t for t in resumed.trials if t["state"] == "FAIL"]
    assert len(failed) == 1 and failed[0]["number"] == 1
    assert failed[0]["reason"] == "error: RuntimeError: out of memory"
    assert all(t["retry_of"] is None for t in resumed.trials)  # a genuine failure is not re-queued
    assert resumed.interrupted_runs == 0  # and is not counted as an interruption
    assert resumed.spent_runs == pytest.approx(3.0)  # the failed trial cost nothing against the budget
    assert resumed.record()["study"]["n_failed"] == 1


def test_several_seeds_run_one_study_each(tmp_path):
    out = tmp_path / "s"
    argv = ["search", "--task", "quadratic", "--inner", "fixed", "--budget-runs", "1", "--steps", "40",
            "--window", "10", "--seed", "3", "--seeds", "2", "--study-name", "st", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    records = json.loads((out / "results.json").read_text())["records"]
    assert [(r["strategy"], r["seed"]) for r in records] == [("search-fixed", 3), ("search-fixed", 4)]
    assert [r["study"]["study_name"] for r in records] == ["st-fixed-seed3", "st-fixed-seed4"]
    assert records[0]["study"]["trials"][0]["params"] == records[1]["study"]["trials"][0]["params"]  # defaults
    assert records[0]["final_val_loss"] != records[1]["final_val_loss"]  # trained with their own seed
    report = (out / "report.md").read_text()
    assert "| search-fixed | 2 |" in report  # one row, averaged over the 2 seeds
    stored = search.load_search("quadratic", "fixed", 4, f"sqlite:///{out / 'study.db'}", "st-fixed-seed4",
                                settings=TINY)
    assert [t["value"] for t in stored.trials] == [t["value"] for t in records[1]["study"]["trials"]]
