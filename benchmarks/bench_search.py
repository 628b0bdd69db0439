"""Search with online refinement versus plain TPE, the grid oracle and single online runs.

Runs (or reads) ``glocal search --inner fixed,local,glocal --baselines`` and tabulates, for each
method and budget (in plain-run units), the best final validation loss reached, mean over seeds,
with the wall time it took; and the smallest budget at which each search comes within 3% of the
grid oracle. Smaller budgets are read off the budget-16 studies: a study with a smaller budget is
exactly a prefix of the larger one (``glocal_bench.search.best_within``, tested).

    python benchmarks/bench_search.py                      # runs the study (about 30-40 min, 1 thread)
    python benchmarks/bench_search.py --from runs/search-bench   # only tabulates an earlier run

Writes benchmarks/results/search.json and docs/search_frontier.png.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from glocal_bench import atomic, report, search
from glocal_bench.cli import main as glocal_main

ROOT = Path(__file__).resolve().parents[1]
BUDGETS = (1, 2, 3, 4, 6, 8, 12, 16)
TARGET = 1.03  # within 3% of the grid oracle


def _stats(values: list[float]) -> dict[str, float]:
    ok = [v for v in values if math.isfinite(v)]
    if len(ok) != len(values) or not ok:
        return {"mean": math.nan, "std": math.nan}
    return {"mean": statistics.mean(ok), "std": statistics.stdev(ok) if len(ok) > 1 else 0.0}


def tabulate(records: list[dict[str, Any]], budgets: tuple[int, ...] = BUDGETS) -> dict[str, Any]:
    """Per method: best val loss (mean/std over seeds), its test loss and the wall seconds, per budget."""
    methods: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        methods.setdefault(r["strategy"], []).append(r)
    grid = {r["seed"]: r["final_val_loss"] for r in methods.get("grid", [])}
    grid_mean = statistics.mean(grid.values()) if grid else math.nan
    table: dict[str, Any] = {}
    for name, group in methods.items():
        rows = {}
        for b in budgets:
            if "study" in group[0]:
                found = [search.best_within(r["study"]["trials"], b) for r in group]
                best = [f["best"] for f in found]
                test = [f["test_loss"] if f["test_loss"] is not None else math.nan for f in found]
                wall = [f["wall_seconds"] for f in found]
                units = [f["units"] for f in found]
            else:
                best = [search.best_at(r, b) for r in group]
                test = [r["test_loss"] if math.isfinite(search.best_at(r, b)) else math.nan for r in group]
                wall = [r["wall_seconds"] for r in group]
                units = [r["inner_steps"] / r["total_steps"] for r in group]
            rows[str(b)] = {"best_val": _stats(best), "test_loss": _stats(test), "wall_seconds": _stats(wall),
                            "units": _stats(units), "per_seed": best}
        last = rows[str(budgets[-1])]
        rows_per_unit = last["wall_seconds"]["mean"] / last["units"]["mean"] if last["units"]["mean"] else math.nan
        within = [b for b in budgets if rows[str(b)]["best_val"]["mean"] <= TARGET * grid_mean]
        table[name] = {"seeds": sorted(r["seed"] for r in group), "budgets": rows,
                       "wall_seconds_per_unit": rows_per_unit,
                       "smallest_budget_within_3pct_of_grid": within[0] if within else None}
    verdict = {}
    if "search-fixed" in table:
        for name in ("search-local", "search-glocal"):
            if name in table:
                mine, plain = table[name]["budgets"], table["search-fixed"]["budgets"]
                verdict[name] = {b: mine[b]["best_val"]["mean"] < plain[b]["best_val"]["mean"]
                                 for b in ("4", "8", "16") if b in mine}
    return {"grid_oracle": {"per_seed": grid, "mean": grid_mean}, "methods": table,
            "beats_plain_tpe": verdict}


def markdown(summary: dict[str, Any], budgets: tuple[int, ...] = (1, 2, 4, 8, 16)) -> str:
    head = ["method", *(f"@{b}" for b in budgets), "within 3% of grid at", f"wall s @{budgets[-1]}",
            "wall s per run unit"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in summary["methods"].items():
        cells = [name]
        for b in budgets:
            s = m["budgets"][str(b)]["best_val"]
            cells.append("-" if not math.isfinite(s["mean"]) else f"{s['mean']:.4f} ± {s['std']:.3f}")
        smallest = m["smallest_budget_within_3pct_of_grid"]
        cells.append("-" if smallest is None else f"{smallest} runs")
        cells.append(f"{m['budgets'][str(budgets[-1])]['wall_seconds']['mean']:.0f}")
        cells.append(f"{m['wall_seconds_per_unit']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_mean_frontier(path: Path, records: list[dict[str, Any]], grid_mean: float) -> None:
    """Mean over seeds of the best validation loss within each budget (runs and wall seconds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = [b / 4 for b in range(4, 16 * 4 + 1)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    methods: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        methods.setdefault(r["strategy"], []).append(r)
    for i, (name, group) in enumerate(methods.items()):
        color = f"C{i}"
        if "study" not in group[0]:
            units = statistics.mean(r["inner_steps"] / r["total_steps"] for r in group)
            best = statistics.mean(r["final_val_loss"] for r in group)
            wall = statistics.mean(r["wall_seconds"] for r in group)
            for ax, x in zip(axes, (units, wall), strict=True):
                ax.plot([x], [best], "s" if name == "grid" else "o", color=color, label=name)
            continue
        found = [[search.best_within(r["study"]["trials"], b) for b in budgets] for r in group]
        ok = [j for j in range(len(budgets)) if all(math.isfinite(f[j]["best"]) for f in found)]
        mean = [statistics.mean(f[j]["best"] for f in found) for j in ok]
        wall = [statistics.mean(f[j]["wall_seconds"] for f in found) for j in ok]
        axes[0].step([budgets[j] for j in ok], mean, where="post", color=color, label=name)
        axes[1].plot(wall, mean, color=color, label=name)
    for ax in axes:
        ax.axhline(grid_mean * TARGET, color="grey", ls=":", lw=1, label="grid oracle + 3%")
        ax.set_xscale("log")
        ax.set_ylabel(f"best final val loss (mean of {len(next(iter(methods.values())))} seeds)")
        ax.legend(fontsize=7)
    axes[0].set_xlabel("budget (plain training runs: inner steps / T)")
    axes[1].set_xlabel("wall seconds spent (2 shared CPU cores, 1 thread)")
    fig.tight_layout()
    report.save_figure(fig, path)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", type=Path, default=None, help="tabulate this earlier run's folder")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "search-bench")
    parser.add_argument("--task", default="mnist1d-mlp")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget-runs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--name", default="search", help="results file benchmarks/results/NAME.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    source = args.source
    if source is None:
        argv = ["search", "--task", args.task, "--inner", "fixed,local,glocal", "--budget-runs",
                str(args.budget_runs), "--seeds", str(args.seeds), "--baselines", "--threads", "1", "--quiet",
                "--out", str(args.out)] + (["--steps", str(args.steps)] if args.steps else [])
        if glocal_main(argv) != 0:
            return 1
        source = args.out
    data = json.loads((source / "results.json").read_text())
    records = data["records"]
    summary = tabulate(records)
    summary["meta"] = {**data.get("meta", {}), "machine": "2-core CPU (shared with other jobs), torch "
                       f"{torch.__version__} CPU, 1 thread", "python": platform.python_version()}
    (ROOT / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    atomic.write_text(ROOT / "benchmarks" / "results" / f"{args.name}.json", json.dumps(summary, indent=1))
    plot_mean_frontier(ROOT / "docs" / f"{args.name}_frontier.png", records, summary["grid_oracle"]["mean"])
    print(markdown(summary))
    print(json.dumps(summary["beats_plain_tpe"]), json.dumps(summary["grid_oracle"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
