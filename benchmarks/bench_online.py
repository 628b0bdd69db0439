"""Wall time of a whole online-tuning run, Fixed vs Local vs Glocal, measured side by side.

Every repeat runs the three strategies back to back on the same task and seed (interleaved, so
that load on the machine hits all three alike), one thread, and reports the median time per run
and the ratios to Local and to Fixed. The run is ``glocal_bench.experiment.run`` without curve
evaluations, i.e. what a user's loop pays.

    .venv/bin/python benchmarks/bench_online.py --task mnist1d-mlp --repeats 3 --out benchmarks/results/online.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from glocal_bench.experiment import Settings, run

STRATEGIES = ("fixed", "local", "glocal")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mnist1d-mlp")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--lr-factor", type=float, default=1 / 30, help="initial lr relative to the task default")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/online.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    from glocal_bench import tasks

    lr = tasks.make(args.task, seed=0).space.to_dict()["lr"]
    settings = Settings(init={"lr": lr * args.lr_factor}, steps=args.steps, curve_points=1)
    seconds: dict[str, list[float]] = {s: [] for s in STRATEGIES}
    run(args.task, "fixed", 0, settings)  # warm-up: data generation, first-call allocations
    for _ in range(args.repeats):
        for strategy in STRATEGIES:
            start = time.perf_counter()
            run(args.task, strategy, 0, settings)
            seconds[strategy].append(time.perf_counter() - start)
    median = {s: statistics.median(v) for s, v in seconds.items()}
    rows = [{"strategy": s, "median_seconds": median[s], "min": min(seconds[s]), "max": max(seconds[s]),
             "x_fixed": median[s] / median["fixed"], "x_local": median[s] / median["local"]} for s in STRATEGIES]
    print(f"task {args.task}, {args.repeats} interleaved repeats, 1 thread")
    print("| strategy | median s/run [min, max] | x fixed | x local |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['strategy']} | {r['median_seconds']:.2f} [{r['min']:.2f}, {r['max']:.2f}] "
              f"| {r['x_fixed']:.2f} | {r['x_local']:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"task": args.task, "repeats": args.repeats, "rows": rows,
                                    "seconds": seconds, "torch": torch.__version__}, indent=1))


if __name__ == "__main__":
    main()
