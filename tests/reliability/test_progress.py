"""The progress bar's estimate uses the rate since the first step, not the setup before it."""

import io
import time

from glocal_bench.progress import ProgressBar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_first_estimate_ignores_setup_time():
    stream = _Terminal()
    bar = ProgressBar(100, "run", stream=stream)
    time.sleep(1.0)  # building the task, compiling: not training time
    bar(1)
    assert "? left" in stream.getvalue()  # no rate yet: no made-up number
    for _ in range(9):
        time.sleep(0.03)
        bar(1)
    now = time.perf_counter()
    bar._draw(now, "\r", "")
    estimate = float(stream.getvalue().rsplit("~", 1)[1].split("s left")[0])
    elapsed = now - bar.started
    # 90 steps left at ~0.03 s each: ~2.7 s; the old estimate (elapsed / fraction - elapsed) counted the
    # setup second as training and said ~11 s
    assert 0 < estimate < 0.6 * (elapsed / 0.1 - elapsed)
