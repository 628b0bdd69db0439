"""The progress bar's estimate uses the rate since the first step, not the setup before it."""

import io
import time

from glocal_bench.progress import ProgressBar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_first_estimate_ignores_setup_time():
    stream = _Terminal()
    started = time.perf_counter()
    bar = ProgressBar(100, "run", stream=stream, mininterval=0)
    time.sleep(1.0)  # building the task, compiling: not training time
    bar(1)
    assert bar.remaining_seconds is None  # no rate yet: no made-up number
    assert "?" in stream.getvalue().replace("\r", "\n").strip().splitlines()[-1]
    for _ in range(9):
        time.sleep(0.03)
        bar(1)
    estimate = bar.remaining_seconds
    elapsed = time.perf_counter() - started
    # 90 steps left at ~0.03 s each: ~2.7 s; an elapsed / fraction estimate counts the setup second as
    # training and says ~11 s
    assert estimate is not None and 0 < estimate < 0.6 * (elapsed / 0.1 - elapsed)
    bar.close()
