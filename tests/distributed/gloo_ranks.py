"""Run a function on N real processes joined by a gloo process group (a FileStore in a temp dir)."""

from __future__ import annotations

import datetime
import os
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp


@dataclass
class RankResult:
    exitcode: int | None  # None: still running when the harness gave up (it is then killed)
    value: Any = None
    error: str | None = None
    seconds: float | None = None  # from the start of the processes to this one's exit


def _entry(fn: Callable, rank: int, world: int, folder: str, pg_timeout: float, args: tuple) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    out = Path(folder)
    dist.init_process_group("gloo", init_method=f"file://{out / 'store'}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=pg_timeout))
    try:
        value = fn(rank, world, *args)
    except BaseException as error:
        (out / f"error{rank}.txt").write_text(f"{type(error).__name__}: {error}\n{traceback.format_exc()}")
        os._exit(1)  # no collective clean-up: a failed peer must not block this exit
    torch.save(value, out / f"value{rank}.pt")
    dist.destroy_process_group()


def run_ranks(fn: Callable, *args: Any, world: int = 2, timeout: float = 120, pg_timeout: float = 30,
              wait_for: tuple[int, ...] | None = None) -> list[RankResult]:
    """``fn(rank, world, *args)`` on ``world`` spawned processes; their return values (torch.save-able).

    A process still alive after ``timeout`` seconds, or once the ranks in ``wait_for`` (default: all)
    have ended, is killed and reported with exitcode None.
    """
    awaited = set(range(world) if wait_for is None else wait_for)
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="glocal-gloo-") as folder:
        procs = [ctx.Process(target=_entry, args=(fn, r, world, folder, pg_timeout, args)) for r in range(world)]
        for p in procs:
            p.start()
        start = time.monotonic()
        ended: dict[int, float] = {}
        while not awaited <= ended.keys() and time.monotonic() - start < timeout:
            for r, p in enumerate(procs):
                if r not in ended and not p.is_alive():
                    ended[r] = time.monotonic() - start
            time.sleep(0.05)
        results = []
        for r, p in enumerate(procs):
            if r not in ended:
                p.kill()
                p.join()
                results.append(RankResult(None))
                continue
            p.join()
            value_file, error_file = Path(folder, f"value{r}.pt"), Path(folder, f"error{r}.txt")
            value = torch.load(value_file, weights_only=False) if value_file.exists() else None
            error = error_file.read_text() if error_file.exists() else None
            results.append(RankResult(p.exitcode, value, error, ended[r]))
        return results


def expect_ok(results: list[RankResult]) -> list[Any]:
    """The ranks' values, or an AssertionError with every failed rank's traceback."""
    bad = [f"rank {r}: exit {res.exitcode}\n{res.error}" for r, res in enumerate(results) if res.exitcode != 0]
    assert not bad, "\n".join(bad)
    return [res.value for res in results]
