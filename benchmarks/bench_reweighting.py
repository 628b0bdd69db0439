"""Data reweighting benchmark: per-class (mnist1d-imbalanced) and per-sample (mnist1d-noisy) loss weights.

For each task and seed it runs Fixed (uniform weights), Local, Glocal and Global through
``glocal_bench.experiment.run`` with the task's recommended settings (``glocal_bench.tasks.reweighting.RECOMMENDED``),
plus, on mnist1d-imbalanced, the untuned inverse-class-frequency weighting as a reference. It
also measures the cost of reverse mode on mnist1d-noisy: a plain step, a step that records the
graph, one backward pass through j unrolled steps, and the bytes the graph saves per step.

    .venv/bin/python benchmarks/bench_reweighting.py --tasks mnist1d-noisy --seeds 0,1,2
    .venv/bin/python benchmarks/bench_reweighting.py --tasks mnist1d-imbalanced --seeds 0,1,2
    .venv/bin/python benchmarks/bench_reweighting.py --summarize     # tables from the JSON files

Each run writes ``benchmarks/results/reweighting-<task><tag>.json``; the summary merges a task's files.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from glocal import Tuner
from glocal.hypergrad import PlainEngine, ReverseEngine
from glocal.strategies import Fixed
from glocal_bench import atomic, experiment, tasks
from glocal_bench.experiment import Settings
from glocal_bench.tasks.reweighting import RECOMMENDED, REWEIGHTING_TASKS

RESULTS = Path(__file__).parent / "results"
MACHINE = "2-core CPU, torch {torch} CPU, 1 thread"
STRATEGIES = ("fixed", "local", "glocal", "global")
#: record keys kept in the JSON (curves and per-window data of per-sample runs are summarised)
KEYS = ("task", "strategy", "seed", "final_val_loss", "test_loss", "test_accuracy", "balanced_test_accuracy",
        "val_accuracy", "tail_test_accuracy", "test_recall_per_class", "clean_weight_mean",
        "corrupted_weight_mean", "clean_to_corrupted_weight_ratio", "corrupted_fraction_lowest40", "weight_auc",
        "inner_steps", "wall_seconds", "compute_seconds", "skipped_updates", "fallbacks", "total_steps", "settings")


def _settings(task: str, outer_steps: int) -> Settings:
    return Settings(outer_steps=outer_steps, **RECOMMENDED[task])


def _compact(record: dict[str, Any]) -> dict[str, Any]:
    out = {k: record[k] for k in KEYS if k in record}
    hp = record["hparams"]
    out["hparams"] = {k: (v if not isinstance(v, list) or len(v) <= 64 else
                          {"mean": statistics.fmean(v), "min": min(v), "max": max(v)}) for k, v in hp.items()}
    windows = record.get("windows") or []
    out["windows"] = len(windows)
    return out


def inverse_frequency(seed: int) -> dict[str, Any]:
    """mnist1d-imbalanced trained with fixed weights 1/n_c (normalised to mean 1): an untuned reference."""
    task = tasks.make("mnist1d-imbalanced", seed=seed)
    counts = torch.bincount(task.train[1], minlength=10).to(torch.float64)
    weights = (1 / counts) / (1 / counts).mean()
    task.space.set(class_weights=weights)
    tuner = Tuner(task.model, task.optimizer, task.space, task.train_loss, task.val_loss, Fixed())
    start = time.perf_counter()
    batches = task.batches(seed)
    for _ in range(task.total_steps):
        tuner.step(next(batches))
    metrics = task.evaluate()
    return {"task": task.name, "strategy": "fixed-inverse-frequency", "seed": seed,
            "final_val_loss": metrics["val_loss"], "test_loss": metrics["test_loss"],
            "test_accuracy": metrics["test_accuracy"], "balanced_test_accuracy": metrics["balanced_test_accuracy"],
            **task.extra_metrics(), "inner_steps": task.total_steps,
            "compute_seconds": time.perf_counter() - start, "hparams": task.space.to_dict()}


def _median_ms(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def reverse_cost(unrolled: tuple[int, ...] = (5, 10, 25, 50, 100), repeats: int = 5) -> dict[str, Any]:
    """Milliseconds of a plain step, a graph-recording step, and one backward through j steps (mnist1d-noisy)."""
    task = tasks.make("mnist1d-noisy", seed=0)
    batches = task.batches(0)
    plain = PlainEngine(task.model, task.optimizer, task.space, task.train_loss, task.val_loss)
    plain_ms = _median_ms(lambda: plain.step(next(batches)), 50)
    engine = ReverseEngine(task.model, task.optimizer, task.space, task.train_loss, task.val_loss)
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel() * t.element_size())
        return t

    out: dict[str, Any] = {"plain_step_ms": plain_ms, "backward_ms": {}, "step_ms": None}
    step_times: list[float] = []
    for j in unrolled:
        backward = []
        for _ in range(repeats):
            engine.begin_window()
            for _ in range(j):
                start = time.perf_counter()
                engine.step(next(batches))
                step_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            engine.hypergradient(task.val)
            backward.append(time.perf_counter() - start)
        out["backward_ms"][str(j)] = 1000 * statistics.median(backward)
    out["step_ms"] = 1000 * statistics.median(step_times)
    # bytes the graph saves per step, measured last (packing the tensors themselves keeps this graph alive)
    engine.begin_window()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        for _ in range(10):
            engine.step(next(batches))
    out["saved_mb_per_step"] = sum(saved) / 10 / 2**20
    out["q"] = len(task.space)
    return out


def run_task(name: str, seeds: list[int], outer_steps: int, strategies: tuple[str, ...], tag: str = "",
             cost: bool = True) -> dict[str, Any]:
    settings = _settings(name, outer_steps)
    records = []
    for seed in seeds:
        for strategy in strategies:
            record = experiment.run(name, strategy, seed, settings)
            records.append(_compact(record))
            print(f"{name} seed {seed} {strategy}: test acc {record['test_accuracy']:.3f} "
                  f"({record['compute_seconds']:.1f} s)", flush=True)
        if name == "mnist1d-imbalanced" and "fixed" in strategies:
            records.append(_compact(inverse_frequency(seed)))
    result: dict[str, Any] = {"meta": {
        "command": "python " + " ".join(sys.argv), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": MACHINE.format(torch=torch.__version__), "platform": platform.platform(),
        "settings": {k: v for k, v in vars(settings).items() if k != "curve_points"}}, "records": records}
    if name == "mnist1d-noisy" and cost:
        result["reverse_cost"] = reverse_cost()
    RESULTS.mkdir(exist_ok=True)
    atomic.write_text(RESULTS / f"reweighting-{name}{tag}.json", json.dumps(result, indent=1))
    return result


def _fmt(values: list[float], digits: int = 3) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(result: dict[str, Any]) -> str:
    """Markdown: one row per strategy, mean ± standard deviation over the seeds."""
    records = result["records"]
    noisy = records[0]["task"] == "mnist1d-noisy"
    cols = ["test acc", "balanced test acc", "final val loss", "compute s", "fallbacks"]
    cols += (["clean w", "corrupted w", "corrupted in lowest 40%", "weight AUC"] if noisy else ["tail-5 test acc"])
    lines = ["| strategy | seeds | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    order = [*STRATEGIES, "fixed-inverse-frequency"]
    for strategy in sorted({r["strategy"] for r in records}, key=order.index):
        group = [r for r in records if r["strategy"] == strategy]

        def col(key: str, group: list[dict[str, Any]] = group) -> list[float]:
            return [float(r[key]) for r in group if r.get(key) is not None]

        cells = [_fmt(col("test_accuracy")), _fmt(col("balanced_test_accuracy")), _fmt(col("final_val_loss")),
                 _fmt(col("compute_seconds"), 1), str(sum(int(r.get("fallbacks", 0)) for r in group))]
        if noisy:
            cells += [_fmt(col("clean_weight_mean"), 2), _fmt(col("corrupted_weight_mean"), 2),
                      _fmt(col("corrupted_fraction_lowest40")), _fmt(col("weight_auc"))]
        else:
            cells += [_fmt(col("tail_test_accuracy"))]
        lines.append(f"| {strategy} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def cost_table(cost: dict[str, Any]) -> str:
    lines = [f"q = {cost['q']}: plain step {cost['plain_step_ms']:.2f} ms, graph-recording step "
             f"{cost['step_ms']:.2f} ms, graph {cost['saved_mb_per_step']:.2f} MB saved per step", "",
             "| unrolled steps j | one backward (ms) | per unrolled step (ms) |", "|---|---|---|"]
    for j, ms in cost["backward_ms"].items():
        lines.append(f"| {j} | {ms:.1f} | {ms / int(j):.2f} |")
    return "\n".join(lines) + "\n"


def summarize() -> None:
    """One table per task from all its result files (``reweighting-<task>*.json``)."""
    for name in REWEIGHTING_TASKS:
        paths = sorted(RESULTS.glob(f"reweighting-{name}*.json"))
        if not paths:
            continue
        results = [json.loads(p.read_text()) for p in paths]
        merged = {"records": [r for res in results for r in res["records"]]}
        print(f"### {name}\n")
        for res in results:
            print(f"`{res['meta']['command']}` ({res['meta']['machine']})\n")
        print(table(merged))
        for res in results:
            if "reverse_cost" in res:
                print(cost_table(res["reverse_cost"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(REWEIGHTING_TASKS))
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--tag", default="", help="suffix of the result file name (to split runs)")
    parser.add_argument("--no-cost", action="store_true", help="skip the reverse-mode cost measurement")
    parser.add_argument("--outer-steps", type=int, default=3, help="Global: outer steps (each a full run)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--summarize", action="store_true", help="only print the tables of the JSON files")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not args.summarize:
        for name in filter(None, args.tasks.split(",")):
            seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
            result = run_task(name, seeds, args.outer_steps, tuple(args.strategies.split(",")), args.tag,
                              not args.no_cost)
            print(table(result))
            if "reverse_cost" in result:
                print(cost_table(result["reverse_cost"]))
    else:
        summarize()


if __name__ == "__main__":
    main()
