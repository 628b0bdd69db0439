"""The progress bar: tqdm, a time estimate that recovers from a slow first step, hyperparameters shown."""

import io
import time

from glocal.records import Record
from glocal_bench.progress import ProgressBar


def test_estimate_recovers_from_a_slow_first_step():
    """A 0.5 s first step then 0.02 s steps: after 15 fast steps the estimate is near the truth.

    The elapsed / done estimate of the former bar would say (0.5 + 15 * 0.02) / 16 * 84 = 4.2 s here,
    2.5x the true 1.7 s; sleeps are lower bounds, so the true rate can only be slower than assumed.
    """
    stream = io.StringIO()
    bar = ProgressBar(100, "test", stream=stream, mininterval=0)
    time.sleep(0.5)
    bar(1)
    started = time.perf_counter()
    for _ in range(15):
        time.sleep(0.02)
        bar(1)
    per_step = (time.perf_counter() - started) / 15  # the real fast-step time on this machine
    truth = 84 * per_step
    estimate = bar.remaining_seconds
    bar.close()
    assert estimate is not None
    assert truth / 1.5 < estimate < 1.5 * truth, (estimate, truth)
    assert "100" in stream.getvalue() and "test" in stream.getvalue()


def test_window_records_put_the_hyperparameters_beside_the_bar():
    stream = io.StringIO()
    bar = ProgressBar(10, "glocal seed 0", stream=stream, mininterval=0)
    bar.show(Record("step", 1, {"train/loss": 1.0}))
    bar.show(Record("window", 5, {"hparams/lr": 0.0123456, "hparams/momentum": 0.9, "hypergrad/norm": 2.0}))
    bar(10)
    bar.close()
    last = stream.getvalue().replace("\r", "\n").strip().splitlines()[-1]
    assert "lr=0.0123" in last and "momentum=0.9" in last and "norm" not in last


def test_disabled_bar_writes_nothing():
    stream = io.StringIO()
    bar = ProgressBar(10, "x", stream=stream, enabled=False)
    bar(10)
    bar.close()
    assert stream.getvalue() == ""
