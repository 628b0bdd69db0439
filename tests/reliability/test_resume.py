"""Resume: a run continued from any checkpoint ends bit for bit as the uninterrupted run (CPU)."""

import io
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from glocal_bench import experiment, report
from glocal_bench.cli import main
from glocal_bench.resume import FILE

TIMING = {"wall_seconds", "compute_seconds"}


def _comparable(record):
    return {k: v for k, v in report._clean(record).items() if k not in TIMING}


def _round_trip(state):
    """Through torch.save / torch.load(weights_only=True), as the checkpoint file does."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("strategy", ["fixed", "local", "glocal"])
def test_resuming_from_every_checkpoint_gives_the_uninterrupted_record(strategy):
    settings = experiment.Settings(window=10, record_every=2, steps=60, init={"lr": 0.05})
    saved = []
    full = experiment.run("quadratic", strategy, 0, settings,
                          checkpointing=experiment.Checkpointing(lambda s: saved.append(_round_trip(s))))
    assert [s["step"] for s in saved] == [10, 20, 30, 40, 50]
    for state in (saved[0], saved[3]):
        resumed = experiment.run("quadratic", strategy, 0, settings,
                                 checkpointing=experiment.Checkpointing(lambda s: None, state=state))
        assert _comparable(resumed) == _comparable(full)


def test_checkpoint_every_n_windows():
    settings = experiment.Settings(window=10, steps=60, init={"lr": 0.05})
    steps = []
    experiment.run("quadratic", "local", 0, settings,
                   checkpointing=experiment.Checkpointing(lambda s: steps.append(s["step"]), every_windows=2))
    assert steps == [20, 40]


@pytest.mark.slow
def test_kill_9_at_a_random_moment_then_resume_equals_the_uninterrupted_run(tmp_path):
    """A real fault: SIGKILL of a real `glocal compare` process while it trains and checkpoints."""
    args = ["compare", "--task", "quadratic", "--strategies", "fixed,glocal", "--steps", "400", "--window", "20",
            "--record-every", "2", "--quiet", "--threads", "1"]
    reference = tmp_path / "reference"
    assert main([*args, "--out", str(reference)]) == 0
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "glocal_bench.cli", *args, "--out", str(out)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out / FILE).exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(random.Random().uniform(0.0, 1.5))  # somewhere in the middle of training (or of a save)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed: make it longer"
    assert not (out / "results.json").exists()
    checkpoint = torch.load(out / FILE, weights_only=True)  # complete, whatever moment the kill hit
    assert checkpoint["current"] is not None or checkpoint["records"]
    result = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "resuming from" in result.stderr
    got = json.loads((out / "results.json").read_text())["records"]
    expected = json.loads((reference / "results.json").read_text())["records"]
    assert [_comparable(r) for r in got] == [_comparable(r) for r in expected]
    assert not (out / FILE).exists()
