"""Data-parallel runs of the command line under ``torchrun``: process group, batch shards, rank 0 writes.

``torchrun --nproc-per-node N -m glocal run|compare|demo ...`` starts N copies of the command; each
joins one gloo process group (the tasks run on the CPU), draws the same global batches (same seed)
and trains on its equal shard of every batch and of the validation set. ``glocal.Tuner`` finds the
process group and averages what the hypergradient needs, so every rank holds the same model and
phi; only rank 0 prints and writes results. Without ``torchrun`` (no ``WORLD_SIZE`` above 1) all of
this is the identity.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from glocal.distributed import shard

#: seconds a collective waits for a stalled peer before the run fails (a dead peer fails at once)
DEFAULT_TIMEOUT = 300.0
#: commands that run data-parallel; the others refuse to run under torchrun
PARALLEL_COMMANDS = ("run", "compare", "demo", "search")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def writer(self) -> bool:
        """Whether this process prints and writes results (rank 0)."""
        return self.rank == 0


def requested_size() -> int:
    """The number of processes ``torchrun`` started (``WORLD_SIZE``), 1 outside torchrun."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def current() -> World:
    """This process's rank and the number of ranks of the default process group ((0, 1) without one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def init_from_env(timeout: float = DEFAULT_TIMEOUT) -> World:
    """Join the process group that ``torchrun`` describes in the environment (gloo); no-op outside it."""
    import torch.distributed as dist

    if requested_size() > 1 and not dist.is_initialized():
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout))
    return current()


def shutdown(timeout: float = 30.0) -> None:
    """Leave the process group together: a rank that tore down its gloo connections while another was
    still using them was seen to abort ("terminate called without an active exception"). The barrier is
    bounded, so a dead peer delays exit by at most ``timeout`` seconds."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(RuntimeError):  # a peer already gone: nothing left to wait for
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=timeout))
        dist.destroy_process_group()


def shard_batches(batches: Iterator[Any]) -> Iterator[Any]:
    """This rank's shard of every batch (the batches themselves unchanged in one process)."""
    world = current()
    if world.size == 1:
        yield from batches
        return
    for batch in batches:
        yield shard(batch, world.rank, world.size)


def shard_validation(val: Any) -> Any:
    """This rank's shard of the validation set, or all of it when it does not split into equal shards
    (the mean over ranks of equal values is that value: exact either way, only slower)."""
    world = current()
    if world.size == 1:
        return val
    try:
        return shard(val, world.rank, world.size)
    except ValueError:
        return val


def check_task(task: Any, compile: bool = False) -> None:
    """A ValueError for what a data-parallel run cannot do: reverse mode, the compiled step, or a
    batch that does not split into equal shards over the ranks."""
    world = current()
    if world.size == 1:
        return
    if task.mode != "forward":
        raise ValueError(f"task {task.name!r} tunes in {task.mode} mode; data-parallel runs support forward mode "
                         "only (run it without torchrun)")
    if compile:
        raise ValueError("--compile: the compiled step has no data-parallel reduction; drop --compile under torchrun")
    rows = task.num_train if task.full_batch else int(task.batch_size)
    if rows % world.size:
        raise ValueError(f"batch size {rows} of task {task.name!r} does not split into {world.size} equal shards "
                         f"(one per process); use a number of processes that divides it")


# -- a search under torchrun: rank 0 runs the study, the other ranks join each of its runs --------
class _Stopped(Exception):
    """Rank 0 stopped the current run (its trial was pruned)."""


def _broadcast_object(value: Any = None) -> Any:
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _broadcast_flag(flag: bool = False) -> bool:
    import torch
    import torch.distributed as dist

    t = torch.tensor([int(flag)], dtype=torch.int64)
    dist.broadcast(t, src=0)
    return bool(t[0])


RunFn = Any  # experiment.run: (task, strategy, seed, settings, on_curve=...) -> record


def lead_run(run: RunFn, task: str, strategy: str, seed: int, settings: Any, on_curve: Any) -> dict[str, Any]:
    """On rank 0: announce the run to the other ranks, then run it data-parallel with them.

    At every curve point rank 0 tells the others whether ``on_curve`` stopped the run (a pruned
    trial), so that all ranks stop at the same step. One process: just ``run``.
    """
    if current().size == 1:
        return run(task, strategy, seed, settings, on_curve=on_curve)
    _broadcast_object(("run", task, strategy, seed, settings))

    def synced(step: int, val_loss: float) -> None:
        try:
            if on_curve is not None:
                on_curve(step, val_loss)
        except BaseException:
            _broadcast_flag(True)
            raise
        _broadcast_flag(False)

    return run(task, strategy, seed, settings, on_curve=synced)


def end_leading() -> None:
    """On rank 0: tell the other ranks that no more runs follow (no-op in one process)."""
    if current().size > 1:
        _broadcast_object(("done",))


def follow(run: RunFn) -> int:
    """On ranks other than 0: join every run that rank 0 announces, until it says it is done.

    Returns the number of runs joined.
    """
    joined = 0
    while True:
        message = _broadcast_object()
        if message[0] == "done":
            return joined
        _, task, strategy, seed, settings = message

        def synced(step: int, val_loss: float) -> None:
            if _broadcast_flag():
                raise _Stopped

        with contextlib.suppress(_Stopped):
            run(task, strategy, seed, settings, on_curve=synced)
        joined += 1
