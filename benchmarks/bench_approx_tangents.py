"""An approximate tangent mode that was tried and NOT kept: Hessian-vector products refreshed every k steps.

The q double backwards (H Z_i) are about 60% of a forward-mode step. This script reuses the last
computed H Z for k - 1 steps and recomputes it every k-th step (k = 2, 4), and measures

  * the hypergradient error against the exact engine on the SAME primal trajectory (both engines
    train identical copies with the same batches and hyperparameters; tangents reset every window):
    relative error and cosine of h at window ends, median and worst over the run's windows;
  * the effect on a whole Glocal-tuned run (task defaults, window 100, SGD on phi with lr 1):
    final validation loss and CPU seconds, exact vs approximate, per seed.

    python benchmarks/bench_approx_tangents.py --tasks mnist1d-mlp,mnist1d-mlp-adamw --seeds 2 \
        --out benchmarks/results/approx_tangents.json
"""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from glocal.hypergrad import ForwardEngine
from glocal.strategies import Glocal
from glocal.tuner import Tuner


def stale_hessian(engine: ForwardEngine, every: int) -> ForwardEngine:
    """Make ``engine`` recompute H Z only every ``every`` steps (after a reset: at once), reusing it otherwise."""
    tangents = engine.tangents
    exact = tangents.gradient_tangents
    reset = tangents.reset
    memory: dict[str, Any] = {"last": None}

    def gradient_tangents(params, grads, hparam_grad=None):
        if memory["last"] is not None and engine.step_count % every != 0 and hparam_grad is None:
            return memory["last"]
        memory["last"] = exact(params, grads, hparam_grad)
        return memory["last"]

    def reset_and_forget() -> None:
        memory["last"] = None
        reset()

    tangents.gradient_tangents = gradient_tangents  # type: ignore[method-assign]
    tangents.reset = reset_and_forget  # type: ignore[method-assign]
    return engine


def hypergradient_error(task_name: str, seed: int, every: int, windows: int) -> dict[str, float]:
    from glocal_bench import tasks

    task = tasks.make(task_name, seed=seed)

    def engine() -> ForwardEngine:
        return ForwardEngine(copy.deepcopy(task.model), task.optimizer, task.space, task.train_loss, task.val_loss)

    exact, approx = engine(), stale_hessian(engine(), every)
    batches = task.batches(seed)
    rel, cos = [], []
    for _ in range(windows):
        exact.begin_window()
        approx.begin_window()
        for _ in range(100):
            batch = next(batches)
            exact.step(batch)
            approx.step(batch)
        _, h = exact.hypergradient(task.val)
        _, h_approx = approx.hypergradient(task.val)
        rel.append(float((h_approx - h).norm() / h.norm()))
        cos.append(float(torch.nn.functional.cosine_similarity(h_approx, h, dim=0)))
    return {"rel_err_median": statistics.median(rel), "rel_err_max": max(rel),
            "cos_median": statistics.median(cos), "cos_min": min(cos)}


def tuned_run(task_name: str, seed: int, every: int | None) -> dict[str, Any]:
    from glocal_bench import tasks

    task = tasks.make(task_name, seed=seed)
    strategy = Glocal(window=100, total_steps=task.total_steps)
    tuner = Tuner(task.model, task.optimizer, task.space, task.train_loss, task.val_loss, strategy,
                  torch.optim.SGD([task.space.raw], lr=1.0), val=task.val)
    if every is not None:
        stale_hessian(tuner.engine, every)  # type: ignore[arg-type]
    batches = task.batches(seed)
    started = time.process_time()
    for _ in range(task.total_steps):
        tuner.step(next(batches))
    return {"val_loss": task.evaluate()["val_loss"], "cpu_seconds": time.process_time() - started,
            "hparams": task.space.to_dict()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="mnist1d-mlp,mnist1d-mlp-adamw")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--every", default="2,4")
    parser.add_argument("--error-windows", type=int, default=5, help="windows compared side by side")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    everies = [int(k) for k in args.every.split(",")]
    rows = []
    print("| task | seed | mode | final val loss | CPU s | window-end h: rel. error median [max] "
          "| cosine median [min] |")
    print("|---|---|---|---|---|---|---|")
    for task in args.tasks.split(","):
        for seed in range(args.seeds):
            for every in [None, *everies]:
                run = tuned_run(task, seed, every)
                err = hypergradient_error(task, seed, every, args.error_windows) if every else None
                rows.append({"task": task, "seed": seed, "every": every, **run, "error": err})
                mode = "exact" if every is None else f"H Z every {every} steps"
                error = "-" if err is None else f"{err['rel_err_median']:.3f} [{err['rel_err_max']:.3f}]"
                cosine = "-" if err is None else f"{err['cos_median']:.4f} [{err['cos_min']:.4f}]"
                print(f"| {task} | {seed} | {mode} | {run['val_loss']:.4f} | {run['cpu_seconds']:.1f} "
                      f"| {error} | {cosine} |", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
