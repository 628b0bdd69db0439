"""The no-regret suite: tasks x strategies x seeds, final validation loss, test metric, cost.

    OMP_NUM_THREADS=1 python benchmarks/bench_suite.py                     # everything, 3 seeds
    python benchmarks/bench_suite.py --tasks diabetes-mlp --strategies fixed,local,glocal --seeds 1

Results accumulate in ``--json`` (default benchmarks/results/suite.json): a (task, strategy, seed)
already there is not run again unless ``--force``, so a long run can be stopped and resumed and
subsets can be added. In every process the untuned (``fixed``) run of each (task, seed) is timed
first, and each record stores that time, so the wall-time ratios compare runs of one process. The CPU
time ratio (one thread; against the ``fixed`` record of the same task and seed) is the one to read on a
shared machine, where wall time depends on the load. Data generation and imports are not timed.
``--set NAME=VALUE`` changes a ``Settings`` field (e.g. ``hyper_lr=0.1``) and
``--label`` stores the runs under another strategy name, to compare variants of the default.
The markdown table (mean ± sample std over seeds) is printed and written next to the JSON.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from glocal_bench import experiment
from glocal_bench import tasks as tasks_module
from glocal_bench.experiment import Settings
from glocal_bench.tasks.suite import SUITE_TASKS

SUITE = SUITE_TASKS
STRATEGIES = ("fixed", "local", "glocal", "hd", "schedulefree", "prodigy", "grid")
DEFAULT_JSON = Path(__file__).parent / "results" / "suite.json"


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _load(path: Path) -> dict[str, Any]:
    if path.exists():
        return json.loads(path.read_text())
    return {"meta": {}, "records": []}


def _save(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _add(path: Path, meta: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """Re-read the JSON (another process may have added runs), replace or add ``record``, write it back;
    under an exclusive lock on ``PATH.lock``, so that processes sharing the file lose no record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = _load(path)
        data["meta"].update(meta)
        key = (record["task"], record["strategy"], record["seed"])
        data["records"] = [r for r in data["records"] if (r["task"], r["strategy"], r["seed"]) != key]
        data["records"].append(record)
        _save(path, data)
    return data


def _slim(record: dict[str, Any]) -> dict[str, Any]:
    """What the table needs plus the curve and final hyperparameters (windows are dropped: size)."""
    keep = ("task", "strategy", "seed", "final_val_loss", "test_loss", "test_accuracy", "wall_seconds", "cpu_seconds",
            "compute_seconds", "inner_steps", "hparams", "curve", "fallbacks", "skipped_updates",
            "reverted_updates", "divergences", "settings", "grid")
    return {k: record[k] for k in keep if k in record}


def _timed(task: str, strategy: str, seed: int, settings: Settings) -> dict[str, Any]:
    """``experiment.run`` plus the process CPU time it took (one thread: robust to other processes' load)."""
    start = time.process_time()
    record = experiment.run(task, strategy, seed, settings)
    record["cpu_seconds"] = time.process_time() - start
    return record


def run(tasks: list[str], strategies: list[str], seeds: list[int], path: Path, overrides: dict[str, Any],
        label: str | None, force: bool, reference: bool = True) -> dict[str, Any]:
    torch.set_num_threads(1)
    data = _load(path)
    data["meta"].update(machine=os.uname().machine, torch=torch.__version__, threads=1,
                        command="python " + " ".join(sys.argv))
    done = {(r["task"], r["strategy"], r["seed"]) for r in data["records"]}
    for task in tasks:
        for seed in seeds:
            todo = [s for s in strategies if force or (task, label or s, seed) not in done]
            if not todo:
                continue
            fixed = None
            tasks_module.make(task, seed=seed)  # warm-up: data generation and imports are not timed
            if reference or "fixed" in todo:
                fixed = _timed(task, "fixed", seed, Settings())  # the time reference of this process
            for strategy in todo:
                record = fixed if strategy == "fixed" else _timed(task, strategy, seed, Settings(**overrides))
                assert record is not None
                record = _slim(record)
                if fixed is not None:
                    record["fixed_wall_seconds"] = fixed["wall_seconds"]
                    record["fixed_cpu_seconds"] = fixed["cpu_seconds"]
                if label:
                    record.update(strategy=label, base_strategy=strategy, overrides=overrides)
                data = _add(path, data["meta"], record)
                print(f"{task} {record['strategy']} seed {seed}: val {record['final_val_loss']:.4f} "
                      f"({record['wall_seconds']:.1f}s)", flush=True)
    return data


def _mean_std(values: list[float], digits: int = 4) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(data: dict[str, Any], tasks: list[str] | None = None, strategies: list[str] | None = None) -> str:
    """Markdown: per task and strategy, final val loss, test metric and wall time / fixed (mean ± std)."""
    records = data["records"]
    tasks = tasks or list(dict.fromkeys(r["task"] for r in records))
    present = list(dict.fromkeys(r["strategy"] for r in records))
    order = [s for s in (strategies or STRATEGIES) if s in present] + (
        [] if strategies else [s for s in present if s not in STRATEGIES])
    fixed_cpu = {(r["task"], r["seed"]): r["cpu_seconds"] for r in records
                 if r["strategy"] == "fixed" and r.get("cpu_seconds")}
    lines = ["| task | strategy | seeds | final val loss | test metric | CPU time / fixed | wall time / fixed |",
             "|---|---|---|---|---|---|---|"]
    for task in tasks:
        for strategy in order:
            group = [r for r in records if r["task"] == task and r["strategy"] == strategy]
            if not group:
                continue
            val = [r["final_val_loss"] for r in group]
            if "test_accuracy" in group[0]:
                metric = "acc " + _mean_std([r["test_accuracy"] for r in group], 3)
            else:
                metric = "mse " + _mean_std([r["test_loss"] for r in group], 3)
            # against the untuned run timed in the same process where there is one (same load), else
            # against the stored untuned record of the same task and seed
            cpu = _mean_std([r["cpu_seconds"] / r.get("fixed_cpu_seconds", fixed_cpu.get((task, r["seed"]), 0.0))
                             for r in group if "cpu_seconds" in r
                             and (r.get("fixed_cpu_seconds") or (task, r["seed"]) in fixed_cpu)], 1)
            wall = _mean_std([r["wall_seconds"] / r["fixed_wall_seconds"] for r in group if "fixed_wall_seconds" in r],
                             1)
            lines.append(f"| {task} | {strategy} | {len(group)} | {_mean_std(val)} | {metric} | {cpu} | {wall} |")
    return "\n".join(lines) + "\n"


def matrix(data: dict[str, Any]) -> str:
    """Markdown: final validation loss (mean ± std over seeds), one row per strategy, one column per task."""
    records = data["records"]
    tasks = list(dict.fromkeys(r["task"] for r in records))
    strategies = list(dict.fromkeys(r["strategy"] for r in records))
    lines = ["| strategy | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for strategy in strategies:
        cells = [_mean_std([r["final_val_loss"] for r in records if r["task"] == t and r["strategy"] == strategy])
                 for t in tasks]
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def acceptance(data: dict[str, Any], glocal: str = "glocal", local: str = "local") -> str:
    """Per task: glocal mean <= local mean + local std, glocal mean <= fixed mean, glocal beats local beyond spread."""
    records = data["records"]
    lines = [f"| task | {glocal} | {local} | fixed | <= {local} + std | <= fixed | beats {local} |",
             "|---|---|---|---|---|---|---|"]
    wins = total = 0
    for task in dict.fromkeys(r["task"] for r in records):
        def vals(s: str, task: str = task) -> list[float]:
            return [r["final_val_loss"] for r in records if r["task"] == task and r["strategy"] == s]

        g, lo, f = vals(glocal), vals(local), vals("fixed")
        if len(g) < 2 or len(lo) < 2 or not f:
            continue
        gm, ls, lm = statistics.mean(g), statistics.stdev(lo), statistics.mean(lo)
        spread = max(statistics.stdev(g), ls)
        win = gm < lm - spread
        wins += win
        total += 1
        lines.append(f"| {task} | {gm:.4f} | {lm:.4f} ± {ls:.4f} | {statistics.mean(f):.4f} | "
                     f"{'yes' if gm <= lm + ls else 'NO'} | {'yes' if gm <= statistics.mean(f) else 'NO'} | "
                     f"{'yes' if win else 'no'} |")
    lines.append(f"\n{glocal} beats {local} beyond the seed spread on {wins} of {total} tasks.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(SUITE))
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a Settings field for the tuned strategies (JSON value), e.g. hyper_lr=0.1")
    parser.add_argument("--label", default=None, help="store the runs under this strategy name")
    parser.add_argument("--force", action="store_true", help="rerun what the JSON already holds")
    parser.add_argument("--no-reference", action="store_true",
                        help="do not time a fixed run per (task, seed) (quicker variant runs; no time ratios)")
    parser.add_argument("--table-only", action="store_true",
                        help="print the table of the JSON (and rewrite its .md), run nothing")
    args = parser.parse_args()
    overrides = {}
    for item in args.set:
        name, _, value = item.partition("=")
        overrides[name] = _value(value)
    Settings(**overrides)  # fail early on an unknown field
    tasks = [t for t in args.tasks.split(",") if t]
    strategies = [s for s in args.strategies.split(",") if s]
    started = time.perf_counter()
    if args.table_only:
        data = _load(args.json)
    else:
        data = run(tasks, strategies, list(range(args.first_seed, args.first_seed + args.seeds)), args.json,
                   overrides, args.label, args.force, not args.no_reference)
    text = table(data) + "\n" + matrix(data) + "\n" + acceptance(data)
    print(text)
    args.json.with_suffix(".md").write_text(f"Command: `{data['meta'].get('command', '')}`\n\n{text}")
    if not args.table_only:
        print(f"wrote {args.json} and {args.json.with_suffix('.md')} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
