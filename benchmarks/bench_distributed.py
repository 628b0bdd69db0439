"""Data-parallel cost: bytes all-reduced per step (glocal vs a DDP step) and 1- vs 2-process throughput.

Usage:
    python benchmarks/bench_distributed.py [--steps 200] [--window 50] [--json F]

Task: mnist1d-mlp (MLP 40-100-100-10, float32, batch 128, tuning lr, weight_decay, momentum: q = 3),
forward mode, strategy Local (window ``--window``, h recorded at each window's end) and Fixed (plain
steps), on the CPU with one thread per process. Two gloo processes on this machine (a FileStore in a
temporary folder), each on half of every batch and of the validation set, against one process on the
whole batch.

Bytes: ``glocal.distributed.Reducer.bytes_reduced`` (the payload this rank puts into all-reduces;
the start-up broadcast and the per-window agreement check, q + 1 numbers, are not counted) against a
``torch.nn.parallel.DistributedDataParallel`` step of the same model and batch, measured with a comm
hook that counts the bytes of every gradient bucket DDP all-reduces. Expected: a forward-mode step
reduces the gradient and its q tangents, (q + 1) x p numbers (p for the first step of a window, whose
tangents are zero), plus the loss; DDP reduces p.

Throughput: training steps per second of the whole run (wall clock, after one untimed warm-up window),
the median of ``--repeats`` runs. On a machine with fewer free cores than processes the 2-process
figure measures contention, not scaling: report the core count next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MPLBACKEND", "Agg")  # mnist1d imports matplotlib
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import glocal
from glocal.distributed import Reducer, shard
from glocal_bench import tasks


def _tuner(task: Any, strategy: Any, world: int, rank: int) -> glocal.Tuner:
    reducer = Reducer() if world > 1 else None
    return glocal.Tuner(task.model, task.optimizer, task.space, task.train_loss, task.val_loss, strategy,
                        torch.optim.SGD([task.space.raw], lr=1.0), val=shard(task.val, rank, world),
                        reducer=reducer)


def _measure(rank: int, world: int, args: argparse.Namespace, strategy_name: str) -> dict[str, Any]:
    """Steps per second and all-reduced bytes per step of one run on this rank."""
    task = tasks.make("mnist1d-mlp", seed=0, total_steps=args.window + args.steps)
    strategy = glocal.Fixed() if strategy_name == "fixed" else glocal.Local(window=args.window)
    tuner = _tuner(task, strategy, world, rank)
    batches = task.batches(0)
    for _ in range(args.window):  # warm-up: one window, untimed
        tuner.step(shard(next(batches), rank, world))
    reducer = tuner.engine.reducer
    before = reducer.bytes_reduced if reducer is not None else 0
    if world > 1:
        dist.barrier()
    start = time.perf_counter()
    for _ in range(args.steps):
        tuner.step(shard(next(batches), rank, world))
    seconds = time.perf_counter() - start
    sent = (reducer.bytes_reduced if reducer is not None else 0) - before
    params = sum(p.numel() for p in task.model.parameters())
    return {"steps_per_second": args.steps / seconds, "bytes_per_step": sent / args.steps, "params": params,
            "q": len(task.space)}


def _ddp_bytes(rank: int, world: int, steps: int) -> float:
    """Bytes per step that DDP all-reduces for the same model and half batches (a counting comm hook)."""
    from torch.nn.parallel import DistributedDataParallel

    task = tasks.make("mnist1d-mlp", seed=0)
    model = DistributedDataParallel(task.model)
    counted = {"bytes": 0}

    def hook(state, bucket):  # no annotations: DDP checks them and accepts only its own types
        buffer = bucket.buffer()
        counted["bytes"] += buffer.numel() * buffer.element_size()
        buffer.div_(world)
        return dist.all_reduce(buffer, async_op=True).get_future().then(lambda fut: fut.value()[0])

    model.register_comm_hook(None, hook)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = task.batches(0)
    for _ in range(steps):
        x, y = shard(next(batches), rank, world)
        optimizer.zero_grad()
        task.train_loss(model(x), y).backward()
        optimizer.step()
    return counted["bytes"] / steps


def _rank_main(rank: int, world: int, folder: str, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world)
    out: dict[str, Any] = {}
    for repeat in range(args.repeats):
        for name in ("fixed", "local"):
            out.setdefault(name, []).append(_measure(rank, world, args, name))
        del repeat
    out["ddp_bytes_per_step"] = _ddp_bytes(rank, world, 20)
    torch.save(out, Path(folder) / f"rank{rank}.pt")
    dist.destroy_process_group()


def _single(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    out: dict[str, Any] = {}
    for _ in range(args.repeats):
        for name in ("fixed", "local"):
            out.setdefault(name, []).append(_measure(0, 1, args, name))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="timed steps per run (default 200)")
    parser.add_argument("--window", type=int, default=50, help="Local window (default 50)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration (default 3)")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = parser.parse_args()
    started = time.perf_counter()
    one = _single(args)
    with tempfile.TemporaryDirectory(prefix="glocal-bench-dp-") as folder:
        mp.spawn(_rank_main, args=(2, folder, args), nprocs=2, join=True)
        two = [torch.load(Path(folder) / f"rank{r}.pt", weights_only=False) for r in range(2)]
    rows = []
    for name in ("fixed", "local"):
        p, q = one[name][0]["params"], one[name][0]["q"]
        glocal_bytes = two[0][name][0]["bytes_per_step"]
        row = {
            "strategy": name, "params": p, "q": q,
            "glocal_bytes_per_step": glocal_bytes,
            "ddp_bytes_per_step": two[0]["ddp_bytes_per_step"],
            "ratio_to_ddp": glocal_bytes / two[0]["ddp_bytes_per_step"],
            "steps_per_second_1proc": statistics.median(r["steps_per_second"] for r in one[name]),
            # a step of the pair ends when both ranks end it: the slower rank's rate
            "steps_per_second_2proc": statistics.median(
                min(a["steps_per_second"], b["steps_per_second"]) for a, b in zip(two[0][name], two[1][name],
                                                                                  strict=True)),
        }
        row["speedup"] = row["steps_per_second_2proc"] / row["steps_per_second_1proc"]
        rows.append(row)
    print(f"mnist1d-mlp, batch 128 (2 x 64), {args.steps} timed steps, window {args.window}, "
          f"{args.repeats} repeats, torch {torch.__version__}, {os.cpu_count()} CPUs, 1 thread per process")
    print("| strategy | p | q | glocal bytes/step | DDP bytes/step | ratio | steps/s 1 proc | steps/s 2 procs | "
          "speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['strategy']} | {r['params']} | {r['q']} | {r['glocal_bytes_per_step']:.0f} | "
              f"{r['ddp_bytes_per_step']:.0f} | {r['ratio_to_ddp']:.2f} | {r['steps_per_second_1proc']:.1f} | "
              f"{r['steps_per_second_2proc']:.1f} | {r['speedup']:.2f} |")
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows,
                                         "cpus": os.cpu_count(), "torch": torch.__version__}, indent=1))


if __name__ == "__main__":
    main()
