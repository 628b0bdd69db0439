"""The command line end to end: a miniature `glocal demo`, and tuning flags that must reach the run."""

from __future__ import annotations

import json
import math

import pytest

from glocal_bench import tasks
from glocal_bench.cli import DEMO_LR_FACTOR, DEMO_TASK, main


def test_miniature_demo_runs_all_four_strategies_from_the_poor_lr(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--steps", "30", "--window", "10", "--outer-steps", "1", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    start_lr = tasks.make(DEMO_TASK, seed=0).space.to_dict()["lr"] / DEMO_LR_FACTOR
    assert f"initial lr {start_lr:.3g}" in printed and "wrote" in printed
    data = json.loads((out / "results.json").read_text())
    records = {r["strategy"]: r for r in data["records"]}
    assert list(records) == ["fixed", "local", "glocal", "global"]
    for name, record in records.items():
        assert record["task"] == DEMO_TASK and record["seed"] == 0 and record["total_steps"] == 30
        assert record["settings"]["init"]["lr"] == pytest.approx(start_lr, rel=1e-12)
        assert record["hparam_trajectory"][0]["lr"] == pytest.approx(start_lr, rel=1e-6)
        assert math.isfinite(record["final_val_loss"]) and math.isfinite(record["test_loss"]), name
    assert records["fixed"]["hparams"]["lr"] == pytest.approx(start_lr, rel=1e-6)
    for name in ("local", "glocal"):
        assert records[name]["inner_steps"] == 30 and len(records[name]["windows"]) == 3
        assert records[name]["hparams"]["lr"] != pytest.approx(start_lr, rel=1e-6)  # tuned
    assert records["global"]["inner_steps"] == 2 * 30  # one outer step and the final run
    assert data["meta"]["command"].startswith("glocal demo --steps 30")
    report = (out / "report.md").read_text()
    assert f"glocal demo on {DEMO_TASK}" in report and "val_loss.png" in report


@pytest.mark.parametrize(("argv", "fragment"), [
    (["demo", "--steps", "20", "--window", "50"], "--window=50"),
    (["demo", "--steps", "0"], "--steps"),
    (["demo", "--outer-steps", "-1"], "--outer-steps"),
])
def test_bad_demo_arguments_give_one_line_and_exit_2(tmp_path, argv, fragment, capsys):
    assert main([*argv, "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and fragment in err and "Traceback" not in err


def _first_update(tmp_path, optimizer: str) -> dict[str, float]:
    """log(value after the first window / initial value) per hyperparameter of a `glocal run`."""
    out = tmp_path / optimizer
    argv = ["run", "--task", "quadratic", "--strategy", "local", "--steps", "20", "--window", "10",
            "--hyper-optimizer", optimizer, "--hyper-lr", "0.01", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    (record,) = json.loads((out / "results.json").read_text())["records"]
    assert record["settings"]["hyper_optimizer"] == optimizer
    before, after = record["hparam_trajectory"][:2]
    assert after["step"] == 10
    return {k: math.log(after[k] / before[k]) for k in before if k != "step"}


def test_hyper_optimizer_flag_is_honoured(tmp_path):
    """Adam's first step moves every raw coordinate by hyper-lr (g / (|g| + eps)); SGD by hyper-lr x g."""
    adam = _first_update(tmp_path, "adam")
    assert set(adam) == {"lr", "weight_decay"}
    for name, change in adam.items():
        assert abs(change) == pytest.approx(0.01, rel=1e-4), name
    sgd = _first_update(tmp_path, "sgd")
    assert abs(sgd["weight_decay"]) < 1e-3  # SGD follows the (small) hypergradient, clipped to norm 1
    assert all(abs(v) <= 0.01 * (1 + 1e-12) for v in sgd.values())
