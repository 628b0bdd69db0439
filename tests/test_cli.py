"""The command line: outputs, result files, and one-line errors with exit code 2."""

import json
import subprocess
import sys

import pytest

from glocal_bench.cli import main

REQUIRED = {"strategy", "seed", "final_val_loss", "test_loss", "inner_steps", "wall_seconds", "hparams",
            "skipped_updates", "fallbacks"}


def test_tasks_lists_every_task(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for name in ("quadratic", "logistic-digits", "mnist1d-mlp", "mnist1d-cnn", "mnist1d-mlp-adamw"):
        assert name in out


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["run", "--task", "nope", "--strategy", "local"], "unknown task 'nope'"),
        (["run", "--task", "quadratic", "--strategy", "magic"], "unknown strategy 'magic'"),
        (["run", "--task", "quadratic", "--strategy", "local", "--steps", "0"], "--steps"),
        (["run", "--task", "quadratic", "--strategy", "local", "--steps", "-5"], "--steps"),
        (["run", "--task", "quadratic", "--strategy", "local", "--steps", "20", "--window", "50"], "--window=50"),
        (["run", "--task", "quadratic", "--strategy", "local", "--init", "lr0.1"], "malformed --init"),
        (["run", "--task", "quadratic", "--strategy", "local", "--init", "lr=abc"], "malformed --init"),
        (["run", "--task", "quadratic", "--strategy", "local", "--init", "lr=-1"], "lr"),
        (["run", "--task", "quadratic", "--strategy", "local", "--init", "gamma=0.1"], "gamma"),
        (["compare", "--task", "quadratic", "--strategies", "fixed,bogus"], "unknown strategy 'bogus'"),
        (["run", "--task", "quadratic"], "--strategy"),
        (["frobnicate"], "invalid choice"),
        (["run", "--task", "mnist1d-imbalanced", "--strategy", "local", "--compile"], "hparams"),
        (["run", "--task", "mnist1d-noisy", "--strategy", "glocal", "--anchor", "run"],
         "--anchor run: anchor='run' needs mode='forward'"),
        (["run", "--task", "quadratic", "--strategy", "glocal", "--anchor", "start"], "invalid choice"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(argv, fragment, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and fragment in err and "Traceback" not in err


def test_bad_arguments_through_the_installed_entry_point():
    result = subprocess.run([sys.executable, "-m", "glocal_bench.cli", "run", "--task", "x", "--strategy", "local"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1


def test_run_writes_results_and_report(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", "--task", "quadratic", "--strategy", "glocal", "--steps", "60", "--window", "20",
            "--record-every", "2", "--init", "lr=0.05", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    data = json.loads((out / "results.json").read_text())
    (record,) = data["records"]
    assert set(record) >= REQUIRED
    assert record["strategy"] == "glocal" and record["inner_steps"] == 60
    assert len(record["windows"]) == 3
    report = (out / "report.md").read_text()
    assert "glocal" in report and "val_loss.png" in report
    assert (out / "val_loss.png").stat().st_size > 0
    assert (out / "hypergradients.png").exists()


def test_compare_counts_the_cost_of_restarts(tmp_path):
    out = tmp_path / "cmp"
    argv = ["compare", "--task", "quadratic", "--strategies", "fixed,local,global,grid", "--steps", "40",
            "--window", "10", "--outer-steps", "2", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    records = {r["strategy"]: r for r in json.loads((out / "results.json").read_text())["records"]}
    assert records["fixed"]["inner_steps"] == 40
    assert records["local"]["inner_steps"] == 40
    assert records["global"]["inner_steps"] == 3 * 40
    assert records["grid"]["inner_steps"] == 40 * len(records["grid"]["grid"])
    best = min(g["final_val_loss"] for g in records["grid"]["grid"])
    assert records["grid"]["final_val_loss"] == pytest.approx(best)


def test_flags_override_task_recommended_settings():
    from glocal_bench.cli import _settings, build_parser

    parse = build_parser().parse_args
    noisy = _settings(parse(["run", "--task", "mnist1d-noisy", "--strategy", "local"]))
    assert (noisy.hyper_optimizer, noisy.hyper_lr, noisy.window) == ("adam", 0.1, 50)
    forced = _settings(parse(["run", "--task", "mnist1d-noisy", "--strategy", "local", "--hyper-optimizer", "sgd",
                              "--window", "30"]))
    assert (forced.hyper_optimizer, forced.window) == ("sgd", 30)
    plain = _settings(parse(["run", "--task", "mnist1d-mlp", "--strategy", "local"]))
    assert (plain.hyper_optimizer, plain.hyper_lr, plain.window, plain.clip_norm) == ("relative", 0.1, 20, None)
    from glocal import defaults  # the CLI's defaults are the library's (one module)

    assert (plain.hyper_optimizer, plain.hyper_lr, plain.window, plain.clip_norm, plain.max_ratio) == (
        defaults.HYPER_OPTIMIZER, defaults.HYPER_LR, defaults.WINDOW, defaults.CLIP_NORM, defaults.MAX_RATIO)


def test_hyper_etas_flag_sets_or_switches_off_the_adaptive_rates():
    from glocal import defaults
    from glocal_bench.cli import UsageError, _settings, build_parser

    parse = build_parser().parse_args
    run = ["run", "--task", "quadratic", "--strategy", "glocal"]
    assert _settings(parse(run)).hyper_etas == defaults.HYPER_ETAS
    assert _settings(parse([*run, "--hyper-etas", "none"])).hyper_etas is None
    assert _settings(parse([*run, "--hyper-etas", "1.5,0.25"])).hyper_etas == (1.5, 0.25)
    for bad in ("0.9,0.5", "1.2", "1.2,0"):
        with pytest.raises(UsageError, match="--hyper-etas"):
            parse([*run, "--hyper-etas", bad])


@pytest.mark.parametrize("anchor", ["window", "run"])
def test_anchor_flag_reaches_local_and_glocal(tmp_path, anchor):
    out = tmp_path / anchor
    argv = ["compare", "--task", "quadratic", "--strategies", "local,glocal", "--steps", "60", "--window", "20",
            "--record-every", "2", "--anchor", anchor, "--out", str(out), "--quiet"]
    assert main(argv) == 0
    records = json.loads((out / "results.json").read_text())["records"]
    assert {r["strategy"] for r in records} == {"local", "glocal"}
    for r in records:
        assert r["settings"]["glocal_options"]["anchor"] == r["settings"]["local_options"]["anchor"] == anchor
