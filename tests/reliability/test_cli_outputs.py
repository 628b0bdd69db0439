"""The command line never loses work silently: bad --out is found before training, default folders,
checkpoints and --resume, one-line errors for bad strategy lists, warnings for runs that did not train."""

import json
import time

import pytest

from glocal_bench.cli import main
from glocal_bench.resume import FILE

QUICK = ["--task", "quadratic", "--steps", "40", "--window", "10", "--quiet", "--threads", "1"]


def _one_line_exit_2(argv, capsys, fragment):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err and fragment in err, err
    return err


@pytest.mark.parametrize("kind", ["a file", "under a file"])
def test_bad_out_fails_before_any_training(tmp_path, capsys, kind):
    a_file = tmp_path / "file"
    a_file.write_text("keep me")
    out = a_file if kind == "a file" else a_file / "results"
    started = time.perf_counter()
    # a long run: were --out checked only at the end, this would train for minutes first
    _one_line_exit_2(["run", "--task", "mnist1d-mlp", "--strategy", "glocal", "--out", str(out), "--quiet"],
                     capsys, "--out")
    assert time.perf_counter() - started < 30
    assert a_file.read_text() == "keep me"


def test_run_without_out_writes_a_default_folder_and_says_where(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--strategy", "fixed", *QUICK]) == 0
    captured = capsys.readouterr()
    folder = tmp_path / "runs" / "quadratic-fixed-seed0"
    assert "runs/quadratic-fixed-seed0" in captured.err
    assert json.loads((folder / "results.json").read_text())["records"][0]["strategy"] == "fixed"
    assert not (folder / FILE).exists()  # the checkpoint is removed once the results are written
    assert not list(folder.glob(".*"))  # and no temporary file is left


@pytest.mark.parametrize("strategies", [",", "", " , "])
def test_empty_strategy_list_is_an_error(strategies, capsys):
    _one_line_exit_2(["compare", "--task", "quadratic", "--strategies", strategies], capsys, "--strategies")
    _one_line_exit_2(["search", "--task", "quadratic", "--inner", strategies], capsys, "--inner")


def test_an_interrupted_runs_checkpoint_is_never_overwritten_and_must_match(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / FILE).write_bytes(b"not a checkpoint")
    _one_line_exit_2(["run", "--strategy", "fixed", *QUICK, "--out", str(out)], capsys, "--resume")
    assert (out / FILE).read_bytes() == b"not a checkpoint"
    _one_line_exit_2(["run", "--strategy", "fixed", *QUICK, "--out", str(out), "--resume"], capsys, "cannot read")
    (out / FILE).unlink()
    _one_line_exit_2(["run", "--strategy", "fixed", *QUICK, "--out", str(out), "--resume"], capsys,
                     "nothing to resume")


def test_resume_rejects_a_checkpoint_of_another_command(tmp_path, capsys, monkeypatch):
    from glocal_bench import cli

    out = tmp_path / "out"
    real_execute = cli._execute

    def interrupted(task, strategies, *args, **kwargs):  # the first run finishes and is checkpointed, then Ctrl-C
        real_execute(task, strategies[:1], *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_execute", interrupted)
    assert main(["compare", "--strategies", "fixed,local", *QUICK, "--out", str(out)]) == 130
    assert "--resume" in capsys.readouterr().err
    monkeypatch.setattr(cli, "_execute", real_execute)
    assert (out / FILE).exists()
    err = _one_line_exit_2(["compare", "--strategies", "fixed,glocal", *QUICK, "--out", str(out), "--resume"],
                           capsys, "different command")
    assert "strategies" in err
    assert main(["compare", "--strategies", "fixed,local", *QUICK, "--out", str(out), "--resume"]) == 0
    assert "1 run(s) finished" in capsys.readouterr().err
    records = json.loads((out / "results.json").read_text())["records"]
    assert [r["strategy"] for r in records] == ["fixed", "local"]


def test_skipped_steps_and_stalls_are_reported(tmp_path, capsys):
    """A real fault: lr at its upper bound makes the quadratic overflow to inf; every skipped step is counted."""
    out = tmp_path / "out"
    argv = ["run", "--task", "quadratic", "--strategy", "fixed", "--init", "lr=10", "--steps", "300", "--window",
            "20", "--out", str(out), "--quiet", "--threads", "1"]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    data = json.loads((out / "results.json").read_text())
    (record,) = data["records"]
    assert record["skipped_steps"] > 100 and record["stalled_windows"] >= 1
    assert f"{record['skipped_steps']} of 300 training steps skipped" in stdout
    assert "stalled" in stdout
    assert any("skipped" in w for w in data["meta"]["warnings"])
    assert "skipped_steps" in (out / "report.md").read_text()


def test_init_outside_the_default_bounds_is_a_one_line_error(capsys):
    _one_line_exit_2(["run", "--strategy", "local", "--task", "quadratic", "--init", "lr=1e9"], capsys,
                     "outside its bounds")


def test_an_absurd_hyper_lr_is_held_by_the_bounds_and_reported(tmp_path, capsys):
    out = tmp_path / "out"
    # plain SGD on phi: the default RelativeSGD's per-window trust region would hold it before the bounds
    argv = ["run", "--task", "quadratic", "--strategy", "local", "--hyper-lr", "1e6", "--hyper-optimizer", "sgd",
            "--steps", "60", "--window", "10", "--out", str(out), "--quiet", "--threads", "1"]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    (record,) = json.loads((out / "results.json").read_text())["records"]
    assert record["bound_hits"] and set(record["bound_hits"]) <= {"lr", "weight_decay"}
    assert any("at_bound" in w for w in record["windows"])
    assert 1e-8 <= record["hparams"]["lr"] <= 10 and record["hparams"]["lr"] > 0
    assert "stopped at their bounds" in stdout
