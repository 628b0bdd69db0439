"""Result files and plots: ``results.json`` (one record per strategy and seed) and ``report.md``."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .atomic import replacing, write_text

SUMMARY_KEYS = ("final_val_loss", "test_loss", "test_accuracy", "inner_steps", "wall_seconds", "cpu_seconds")
#: the hypergradient plot shows at most this many components (vector hyperparameters can have thousands)
MAX_PLOTTED_HYPERGRADIENTS = 6


def _clean(value: Any) -> Any:
    """JSON cannot hold NaN/inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_results(out: Path, records: Sequence[dict[str, Any]], meta: dict[str, Any] | None = None) -> Path:
    """``out/results.json``, replaced atomically (a crash mid-write leaves the previous file intact)."""
    out.mkdir(parents=True, exist_ok=True)
    meta = {**(meta or {}), "warnings": warnings(records)}
    return write_text(out / "results.json", json.dumps(_clean({"meta": meta, "records": list(records)}), indent=1))


def _mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.5g}"
    return f"{statistics.mean(values):.5g} ± {statistics.stdev(values):.2g}"


def summary_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, strategy): means and spreads over seeds."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["task"], r["strategy"])].append(r)
    rows = []
    for (task, strategy), group in groups.items():
        row: dict[str, Any] = {"task": task, "strategy": strategy, "seeds": len(group)}
        for key in SUMMARY_KEYS:
            row[key] = _mean_std([g[key] for g in group if key in g])
        row["skipped_updates"] = sum(g.get("skipped_updates", 0) for g in group)
        row["skipped_steps"] = sum(g.get("skipped_steps", 0) for g in group)
        row["fallbacks"] = sum(g.get("fallbacks", 0) for g in group)
        last = group[-1]["hparams"]
        row["final hparams (last seed)"] = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}=[{len(v)}]" for k, v in last.items())
        rows.append(row)
    return rows


def warnings(records: Sequence[dict[str, Any]]) -> list[str]:
    """One line per run that did not train cleanly: skipped steps, stalled windows, hyperparameters
    stopped at their bounds, divergences, skipped hypergradient updates (also stored in results.json)."""
    lines = []
    for r in records:
        problems = []
        total = r.get("inner_steps") or r.get("total_steps") or 0
        if r.get("skipped_steps"):
            problems.append(f"{r['skipped_steps']} of {total} training steps skipped (non-finite loss or parameters)")
        if r.get("stalled_windows"):
            problems.append(f"{r['stalled_windows']} window(s) stalled (a whole window without one finite, "
                            "non-divergent step)")
        if r.get("bound_hits"):
            hits = ", ".join(f"{k} in {n} window(s)" for k, n in r["bound_hits"].items())
            problems.append(f"hyperparameters stopped at their bounds: {hits}")
        if r.get("divergences"):
            problems.append(f"{r['divergences']} divergence(s), {r.get('reverted_updates', 0)} update(s) undone")
        if r.get("restored_faults"):
            problems.append(f"parameters found non-finite {r['restored_faults']} time(s), returned to the last "
                            "finite state")
        if r.get("skipped_updates"):
            problems.append(f"{r['skipped_updates']} hypergradient update(s) skipped (not finite)")
        if problems:
            lines.append(f"warning: {r['strategy']} seed {r.get('seed', 0)}: " + "; ".join(problems))
    return lines


def _finite(values: list[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def _compare(name: str, ours: list[float], theirs: list[float], other: str) -> str:
    """"Glocal (m) is below/above/within the seed spread of Local (m)", judged by the larger seed std."""
    a, b = statistics.mean(ours), statistics.mean(theirs)
    stds = [statistics.stdev(v) for v in (ours, theirs) if len(v) > 1]
    if not stds:
        word = "below" if a < b else "above" if a > b else "equal to"
        return f"{name} ({a:.4g}) is {word} {other} ({b:.4g}; one seed, no spread to judge by)"
    spread = max(stds)
    if abs(a - b) <= spread:
        return f"{name} ({a:.4g}) is within the seed spread ({spread:.2g}) of {other} ({b:.4g})"
    word = "below" if a < b else "above"
    return f"{name} ({a:.4g}) is {word} {other} ({b:.4g}) by more than the seed spread ({spread:.2g})"


def in_plain_words(records: Sequence[dict[str, Any]]) -> list[str]:
    """One paragraph per task, computed from the records: which strategy ended lowest, Glocal against
    Local and the untuned run (judged by the seed spread), and Glocal's wall time against the untuned run's."""
    losses: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    walls: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        losses[r["task"]][r["strategy"]] += _finite([r.get("final_val_loss")])
        walls[r["task"]][r["strategy"]] += _finite([r.get("wall_seconds")])
    paragraphs = []
    for task, by_strategy in losses.items():
        means = {s: statistics.mean(v) for s, v in by_strategy.items() if v}
        if not means:
            continue
        best = min(means, key=lambda s: means[s])
        sentences = [f"On {task}, the lowest mean final validation loss is {best}'s ({means[best]:.4g})"]
        if "glocal" in means:
            for other, name in (("local", "Local"), ("fixed", "the untuned run")):
                if other in means:
                    sentences.append(_compare("Glocal", by_strategy["glocal"], by_strategy[other], name))
            glocal_wall, fixed_wall = walls[task].get("glocal"), walls[task].get("fixed")
            if glocal_wall and fixed_wall and statistics.mean(fixed_wall) > 0:
                ratio = statistics.mean(glocal_wall) / statistics.mean(fixed_wall)
                sentences.append(f"Glocal took {ratio:.1f}x the wall time of the untuned run")
        paragraphs.append("; ".join(sentences) + ".")
    return paragraphs


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "(no results)\n"
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


_LINESTYLES = ("-", "--", ":", "-.")


def _style(record: dict[str, Any], colours: dict[str, str]) -> dict[str, Any]:
    """One colour per strategy (``colours``), one line style per seed, so that many runs stay readable."""
    seed = int(record.get("seed", 0))
    return {"color": colours[str(record["strategy"])], "linestyle": _LINESTYLES[seed % len(_LINESTYLES)],
            "label": f"{record['strategy']} (seed {seed})"}


def _legend(ax: Any) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def save_figure(fig: Any, path: Path) -> None:
    """Save a matplotlib figure as PNG atomically."""
    with replacing(path) as f:
        fig.savefig(f, format="png", dpi=110)


def _plots(out: Path, records: Sequence[dict[str, Any]]) -> list[str]:
    """PNG plots (needs matplotlib; returns the file names written)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    strategies = list(dict.fromkeys(str(r["strategy"]) for r in records))
    colours = {name: f"C{i % 10}" for i, name in enumerate(strategies)}
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in records:
        if r.get("curve"):
            xs, ys = zip(*r["curve"], strict=True)
            ax.plot(xs, ys, **_style(r, colours))
    ax.set_xlabel("inner training steps executed (restarts included)")
    ax.set_ylabel("validation loss")
    ax.set_xscale("log")
    _legend(ax)
    fig.tight_layout()
    save_figure(fig, out / "val_loss.png")
    plt.close(fig)
    written.append("val_loss.png")

    names = sorted({k for r in records for t in r.get("hparam_trajectory", []) for k in t if k != "step"
                    and isinstance(t[k], float)})
    if names:
        fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.5), squeeze=False)
        for ax, name in zip(axes[0], names, strict=True):
            for r in records:
                traj = [(t["step"], t[name]) for t in r.get("hparam_trajectory", []) if name in t]
                if len(traj) > 1:
                    xs, ys = zip(*traj, strict=True)
                    ax.step(xs, ys, where="post", **_style(r, colours))
            ax.set_yscale("log")
            ax.set_title(name)
            ax.set_xlabel("inner steps executed")
        _legend(axes[0][0])
        fig.tight_layout()
        save_figure(fig, out / "hparams.png")
        plt.close(fig)
        written.append("hparams.png")

    glocal_runs = [r for r in records if r["strategy"] == "glocal" and r.get("windows")
                   and isinstance(r["windows"][0].get("local"), list)]
    if glocal_runs:
        r = glocal_runs[0]
        q = min(len(r["windows"][0]["local"]), MAX_PLOTTED_HYPERGRADIENTS)
        fig, axes = plt.subplots(1, q, figsize=(4 * q, 3.5), squeeze=False)
        labels = list(r["hparams"])
        for i, ax in enumerate(axes[0]):
            ends = [w["end"] for w in r["windows"]]
            ax.plot(ends, [w["local"][i] for w in r["windows"]], "o-", ms=3, label="local h_tau")
            ax.plot(ends, [w["estimate"][i] for w in r["windows"]], "s-", ms=3, label="glocal estimate")
            ax.set_title(f"d L_val / d raw {labels[i] if i < len(labels) else i}")
            ax.set_xlabel("window end (step)")
            ax.set_yscale("symlog", linthresh=1e-4)
        _legend(axes[0][0])
        fig.tight_layout()
        save_figure(fig, out / "hypergradients.png")
        plt.close(fig)
        written.append("hypergradients.png")
    return written


def write_report(out: Path, records: Sequence[dict[str, Any]], title: str, command: str = "") -> Path:
    """``report.md``: the summary table, the command that produced it, what it shows in plain words
    (computed from the records), warnings, and the plots."""
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(out, records)
    text = [f"# {title}", ""]
    if command:
        text += [f"Command: `{command}`", ""]
    text += [markdown_table(summary_rows(records)), ""]
    words = in_plain_words(records)
    text += [" ".join(words), ""] if words else []
    text += [f"- {line}" for line in warnings(records)]
    text += [""] if warnings(records) else []
    text += [f"![{p}]({p})" for p in plots]
    return write_text(out / "report.md", "\n".join(text) + "\n")
