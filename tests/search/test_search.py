"""glocal_bench.search: search space, budget accounting, reproducibility, resume, records and the CLI."""

import json
import math

import pytest

pytest.importorskip("optuna")

from glocal_bench import experiment, search
from glocal_bench.cli import main
from glocal_bench.experiment import Settings

TINY = Settings(steps=40, window=10)
REQUIRED = {"strategy", "seed", "final_val_loss", "test_loss", "inner_steps", "wall_seconds", "hparams",
            "skipped_updates", "fallbacks", "study", "hparam_trajectory"}


def _outcomes(result: search.SearchResult) -> list[tuple]:
    """What must reproduce: finished trials' states, parameters, values and costs, in order."""
    return [(t["state"], t["params"], t["value"], t["steps"]) for t in result.trials
            if t["state"] in ("COMPLETE", "PRUNED")]


def test_search_space_is_centred_on_the_task_defaults():
    dims = {d.target: d for d in search.search_space("logistic-digits", spread=30.0, tune_hyper_lr=True)}
    assert dims["lr"].kind == "log" and dims["lr"].low == pytest.approx(0.05 / 30)
    assert dims["lr"].high == pytest.approx(0.05 * 30)
    assert dims["momentum"].kind == "logit"
    centre = (dims["momentum"].low + dims["momentum"].high) / 2
    assert 1 / (1 + math.exp(-centre)) == pytest.approx(0.9)
    assert dims["hyper_lr"].low == pytest.approx(Settings().hyper_lr / 10)
    fixed = search.search_space("logistic-digits", tune_hyper_lr=True, inner="fixed")
    assert "hyper_lr" not in {d.target for d in fixed}


def test_trial_zero_runs_the_task_defaults_unless_random_start():
    defaults = experiment.build_task("quadratic", 0, TINY).space.to_dict()
    first = search.run_search("quadratic", "fixed", budget_runs=1, settings=TINY).trials[0]
    assert first["init"] == pytest.approx(defaults)
    drawn = search.run_search("quadratic", "fixed", budget_runs=1, settings=TINY, start_at_defaults=False).trials[0]
    assert drawn["init"]["lr"] != pytest.approx(defaults["lr"])


def test_budget_is_respected_and_the_record_has_the_compare_keys():
    result = search.run_search("quadratic", "local", budget_runs=3, seed=0, settings=TINY)
    assert 3 <= result.spent_runs < 4  # never more than one trial over
    record = result.record()
    assert set(record) >= REQUIRED
    assert record["strategy"] == "search-local" and record["seed"] == 0
    assert record["inner_steps"] == sum(t["steps"] for t in result.trials)
    assert record["final_val_loss"] == min(t["value"] for t in result.trials if t["state"] == "COMPLETE")
    assert record["hparam_trajectory"][0]["lr"] == pytest.approx(
        record["study"]["best_params"]["lr"], rel=1e-6)
    assert [p["units"] for p in result.frontier()] == sorted(p["units"] for p in result.frontier())


def test_trials_reproduce_from_the_seed_and_smaller_budgets_are_prefixes():
    big = search.run_search("quadratic", "fixed", budget_runs=4, seed=3, settings=TINY, pruner="median")
    again = search.run_search("quadratic", "fixed", budget_runs=4, seed=3, settings=TINY, pruner="median")
    small = search.run_search("quadratic", "fixed", budget_runs=2, seed=3, settings=TINY, pruner="median")
    other = search.run_search("quadratic", "fixed", budget_runs=2, seed=4, settings=TINY, pruner="median")
    assert _outcomes(big) == _outcomes(again)
    assert _outcomes(big)[:len(_outcomes(small))] == _outcomes(small)
    assert _outcomes(other) != _outcomes(small)
    assert search.best_within(big.trials, 2)["best"] == small.record()["final_val_loss"]


def test_an_interrupted_study_resumes_to_the_same_trials(tmp_path, monkeypatch):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    kwargs = {"budget_runs": 4, "seed": 1, "settings": TINY, "pruner": "none"}
    reference = search.run_search("quadratic", "local", **kwargs)
    real = experiment.run
    calls = []

    def interrupted(name, strategy, seed, settings, progress=None, on_curve=None):
        calls.append(name)
        if len(calls) != 3:
            return real(name, strategy, seed, settings, progress, on_curve)

        def hook(step, value):
            on_curve(step, value)
            if step >= 20:
                raise KeyboardInterrupt

        return real(name, strategy, seed, settings, progress, hook)

    monkeypatch.setattr(search.experiment, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        search.run_search("quadratic", "local", storage=storage, **kwargs)
    monkeypatch.setattr(search.experiment, "run", real)
    resumed = search.run_search("quadratic", "local", storage=storage, **kwargs)
    failed = [t for t in resumed.trials if t["state"] == "FAIL"]
    assert len(failed) == 1 and failed[0]["reason"] == "interrupted" and failed[0]["steps"] == 20
    assert [t["retry_of"] for t in resumed.trials].count(failed[0]["number"]) == 1
    assert _outcomes(resumed) == _outcomes(reference)
    assert resumed.interrupted_runs == pytest.approx(0.5)
    # running it again finds the budget spent and starts nothing
    assert len(search.run_search("quadratic", "local", storage=storage, **kwargs).trials) == len(resumed.trials)


def test_a_study_with_another_configuration_is_refused(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    search.run_search("quadratic", "fixed", budget_runs=1, storage=storage, study_name="s", settings=TINY)
    with pytest.raises(search.SearchError, match="different"):
        search.run_search("quadratic", "fixed", budget_runs=1, storage=storage, study_name="s",
                          settings=Settings(steps=20, window=10))


def test_search_help_documents_the_storage(capsys):
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    out = capsys.readouterr().out
    assert "--storage" in out and "sqlite" in out and "--budget-runs" in out and "--inner" in out


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--inner", "magic"], "unknown --inner 'magic'"),
        (["--budget-runs", "0"], "--budget-runs"),
        (["--budget-runs", "abc"], "--budget-runs"),
        (["--pruner", "random"], "--pruner"),
        (["--storage", "not a url"], "storage 'not a url'"),
        (["--storage", "nosuchdb://host/db"], "storage 'nosuchdb://host/db'"),
        (["--spread", "1"], "spread"),
        (["--window", "50"], "--window=50"),
        (["--init", "gamma=1"], "gamma"),
    ],
)
def test_bad_search_arguments_give_one_line_and_exit_2(tmp_path, extra, fragment, capsys):
    argv = ["search", "--task", "quadratic", "--steps", "40", "--window", "10", "--out", str(tmp_path), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and fragment in err and "Traceback" not in err


def test_unknown_task_and_mismatched_study_exit_2(tmp_path, capsys):
    assert main(["search", "--task", "nope"]) == 2
    base = ["search", "--task", "quadratic", "--inner", "fixed", "--budget-runs", "1", "--out", str(tmp_path),
            "--study-name", "s", "--quiet"]
    assert main([*base, "--steps", "40", "--window", "10"]) == 0
    capsys.readouterr()
    assert main([*base, "--steps", "20", "--window", "10"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "different settings" in err


def test_search_command_writes_records_report_and_frontier(tmp_path):
    out = tmp_path / "s"
    argv = ["search", "--task", "quadratic", "--inner", "fixed,local", "--budget-runs", "2", "--steps", "40",
            "--window", "10", "--baselines", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    records = {r["strategy"]: r for r in json.loads((out / "results.json").read_text())["records"]}
    assert set(records) == {"search-fixed", "search-local", "grid", "local", "glocal"}
    assert set(records["search-local"]) >= REQUIRED
    assert records["search-local"]["study"]["storage"].startswith("sqlite:///")
    assert (out / "study.db").exists() and (out / "frontier.png").stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "frontier.png" in report and "best val @ 2 runs" in report


def test_wall_time_budget_stops_the_study_within_one_report_of_it():
    budget = 1.0
    result = search.run_search("quadratic", "local", budget_runs=None, budget_seconds=budget, seed=0,
                               settings=TINY, pruner="none")
    summary = result.summary()
    spent = summary["spent_seconds"]
    finished = [t for t in result.trials if t["state"] in ("COMPLETE", "PRUNED")]
    assert summary["budget_seconds"] == budget and len(finished) >= 1
    assert spent >= budget  # the study ran until the budget was spent...
    # ...and stopped: no trial started after it ran out, the last one was cut at a report at the latest
    assert spent - finished[-1]["wall_seconds"] < budget
    cut = [t for t in finished if t["reason"] == "budget"]
    assert all(t["steps"] < 40 for t in cut) and len(cut) <= 1
    frontier = result.frontier()
    assert [p["wall_seconds"] for p in frontier] == sorted(p["wall_seconds"] for p in frontier)
    record = result.record()
    if any(t["state"] == "COMPLETE" for t in finished):  # on a very busy machine the first trial may be cut
        assert search.best_at_seconds(record, spent) == record["final_val_loss"]
    assert math.isnan(search.best_at_seconds(record, 0.0))


@pytest.mark.parametrize("kwargs", [{"budget_runs": None}, {"budget_runs": None, "budget_seconds": -1.0},
                                    {"budget_runs": 1, "budget_seconds": math.inf}])
def test_bad_budgets_are_refused(kwargs):
    with pytest.raises(search.SearchError, match="budget"):
        search.run_search("quadratic", "fixed", settings=TINY, **kwargs)


def test_search_command_takes_a_wall_time_budget(tmp_path):
    out = tmp_path / "s"
    argv = ["search", "--task", "quadratic", "--inner", "fixed", "--budget-seconds", "0.5", "--steps", "40",
            "--window", "10", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    record = json.loads((out / "results.json").read_text())["records"][0]
    assert record["study"]["budget_seconds"] == 0.5 and record["study"]["spent_seconds"] >= 0.5
    assert " s |" in (out / "report.md").read_text()
