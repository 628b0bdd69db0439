"""``glocal run / compare --log-dir``: TensorBoard event files, read back with tensorboard's EventAccumulator."""

import pytest

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from glocal_bench.cli import main


def _scalars(path):
    events = EventAccumulator(str(path), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_run_writes_losses_hyperparameters_hypergradients_and_diagnostics(tmp_path, capsys):
    argv = ["run", "--task", "quadratic", "--strategy", "glocal", "--steps", "40", "--window", "10",
            "--record-every", "2", "--init", "lr=0.05", "--out", str(tmp_path / "out"), "--quiet",
            "--log-dir", str(tmp_path / "tb")]
    assert main(argv) == 0
    scalars = _scalars(tmp_path / "tb" / "glocal-seed0")
    assert [step for step, _ in scalars["train/loss"]] == list(range(1, 41))
    assert [step for step, _ in scalars["val/loss"]] == [s for w in range(0, 40, 10) for s in range(w + 2, w + 11, 2)]
    for tag in ("hparams/lr", "hparams/weight_decay", "hypergrad_local/lr", "hypergrad_used/lr", "hypergrad/norm",
                "window/fell_back", "estimator/rank", "estimator/rows_ahead"):
        assert [step for step, _ in scalars[tag]] == [10, 20, 30, 40], tag
    lrs = [value for _, value in scalars["hparams/lr"]]
    assert lrs[0] != pytest.approx(0.05, rel=1e-6)  # the first window moved lr and the log shows it
    import json

    final = json.loads((tmp_path / "out" / "results.json").read_text())["records"][0]["hparams"]
    assert lrs[-1] == pytest.approx(final["lr"], rel=1e-6)  # event files hold float32


def test_compare_writes_one_run_per_strategy_with_steps_across_restarts(tmp_path, capsys):
    argv = ["compare", "--task", "quadratic", "--strategies", "fixed,global", "--steps", "20", "--window", "10",
            "--outer-steps", "2", "--quiet", "--log-dir", str(tmp_path / "tb")]
    assert main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == ["fixed-seed0", "global-seed0"]
    fixed = _scalars(tmp_path / "tb" / "fixed-seed0")
    assert len(fixed["train/loss"]) == 20 and "hparams/lr" not in fixed
    glob = _scalars(tmp_path / "tb" / "global-seed0")
    assert [step for step, _ in glob["train/loss"]] == list(range(1, 61))  # 2 outer steps + the final run
    assert [step for step, _ in glob["hparams/lr"]] == [20, 40]


def test_log_dir_is_only_written_when_asked(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--task", "quadratic", "--strategy", "fixed", "--steps", "5", "--window", "5", "--quiet"]) == 0
    assert not list(tmp_path.rglob("events.out.tfevents*"))  # results are written, no event files
