"""Overhead of online tuning against the user's own loop: plain ``nn.Module`` + ``torch.optim`` vs glocal.

The question a user asks: how much longer does my training run take when glocal tunes the learning
rate, weight decay and momentum (q = 3) online, compared with the ``torch.optim.SGD`` loop I would
have written anyway, over the same model and the same batches?

Both runs advance together in ONE process, one window (``--window`` steps) at a time: a block of
the plain loop, then the same block of the tuned run (the order alternates every block), so that
load from other processes hits both alike. Every step is timed (wall clock and the thread's CPU
clock) and the tuned run's steps are classified:

  step        a training step with tangent propagation and nothing else
  record      a step that also records h_j (a validation gradient), every ``record_every`` steps
  window end  the window's last step: record + the estimator fit + the hyper-optimizer step

Reported: whole-run ratio (sum of all steps), the median and spread of the per-block ratios, the
per-category medians against the plain step's median, each category's share of the tuned run, and
the resident memory (VmRSS) at every window's end (flat = no leak). Batches are materialised once
and shared (data loading is the same for both and left out). Initial hyperparameters: the task's
defaults (``--init`` overrides).

    python benchmarks/bench_overhead.py --task mnist1d-mlp --repeats 2 --out benchmarks/results/overhead.json

Variants (``--variants``, comma-separated, each against the same plain loop):
  glocal           the default Glocal run (the library's default window, record spacing,
                   estimator and outer step)
  local            Local (records only at window ends)
  fixed            glocal's plain engine (no tangents): the floor of glocal's own bookkeeping
  glocal-compiled  Glocal with ``compile=True``
  glocal-rvN       Glocal whose records between window ends use the first N validation samples
                   (``Tuner(record_val=...)``; window ends use all of them)
Extra Tuner / Glocal keyword arguments: ``--tuner-kw key=value`` (e.g. val_subset=256).
"""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import argparse
import contextlib
import copy
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from glocal import defaults
from glocal.strategies import Fixed, Glocal, Local
from glocal.tuner import Tuner


def _rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    except OSError:  # not Linux
        return float("nan")


def _parse_kw(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _load_engine(spec: str | None) -> Any:
    """A prototype engine class from ``FILE:CLASS`` (for trying a lever before it is in the library)."""
    if not spec:
        raise ValueError("a '+proto' variant needs --engine FILE:CLASS")
    import importlib.util

    path, _, name = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("bench_overhead_proto", path)
    module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
    module_spec.loader.exec_module(module)  # type: ignore[union-attr]
    return getattr(module, name)


class PlainLoop:
    """What the user writes: ``nn.Module`` + ``torch.optim.SGD`` with the task's initial values."""

    def __init__(self, task: Any) -> None:
        self.model = copy.deepcopy(task.model)
        h = task.space.to_dict()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=h["lr"], momentum=h.get("momentum", 0.0),
                                   weight_decay=h.get("weight_decay", 0.0))
        self.loss = task.train_loss

    def step(self, batch: tuple[torch.Tensor, ...]) -> str:
        x, y = batch[0], batch[1]
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss(self.model(x), y)
        loss.backward()
        self.opt.step()
        return "step"


class TunedLoop:
    """glocal's Tuner with a named strategy; ``step`` says what kind of step it was."""

    def __init__(self, task: Any, variant: str, window: int, record_every: int | None,
                 tuner_kw: dict[str, Any], strategy_kw: dict[str, Any], engine: Any = None) -> None:
        self.task = task
        kw = dict(tuner_kw)
        if "-rv" in variant:
            variant, _, size = variant.partition("-rv")
            kw["record_val"] = tuple(t[:int(size)] for t in task.val)
        if variant == "fixed":
            strategy: Any = Fixed()
        elif variant == "local":
            strategy = Local(window=window, **strategy_kw)
        else:
            strategy = Glocal(window=window, total_steps=task.total_steps, record_every=record_every, **strategy_kw)
        hyper = None  # the library's default outer step
        if variant.endswith("compiled"):
            kw["compile"] = True
        self.tuner = Tuner(task.model, task.optimizer, task.space, task.train_loss, task.val_loss, strategy,
                           hyper, val=task.val, clip_norm=1.0, **kw)
        if engine is not None:  # a prototype engine class (--engine FILE:CLASS)
            self.tuner.engine = engine(task.model, task.optimizer, task.space, task.train_loss, task.val_loss)

    def step(self, batch: tuple[torch.Tensor, ...]) -> str:
        record = self.tuner.step(batch)
        if self.tuner.strategy.window and self.tuner.steps_in_window == 0 and "val_loss" in record:
            return "window end"
        return "record" if "val_loss" in record else "step"


def timed_block(loop: PlainLoop | TunedLoop, batches: list, wall: dict[str, list[float]],
                cpu: dict[str, list[float]], autocast: str | None = None) -> tuple[float, float]:
    """Run and time the steps of one block; on CUDA every step is synchronised before its clock stops."""
    total_w = total_c = 0.0
    device = batches[0][0].device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for batch in batches:
        context = (torch.autocast(device.type, dtype=torch.bfloat16) if autocast == "bf16"
                   else contextlib.nullcontext())
        sync()
        t0, c0 = time.perf_counter(), time.thread_time()
        with context:
            kind = loop.step(batch)
        sync()
        t1, c1 = time.perf_counter(), time.thread_time()
        wall.setdefault(kind, []).append(t1 - t0)
        cpu.setdefault(kind, []).append(c1 - c0)
        total_w += t1 - t0
        total_c += c1 - c0
    return total_w, total_c


def spread(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"median": statistics.median(values), "q1": q[0], "q3": q[2], "min": min(values),
            "max": max(values), "n": len(values)}


def run_pair(task_name: str, seed: int, variant: str, args: argparse.Namespace,
             make_task: Callable[..., Any]) -> dict[str, Any]:
    """One plain run and one tuned run over the same batches, interleaved by window-sized blocks."""
    overrides: dict[str, Any] = {"init": args.init} if args.init else {}
    if args.device != "cpu":
        overrides["device"] = args.device
    task = make_task(task_name, seed=seed, **overrides)
    steps = args.steps or task.total_steps
    task.total_steps = steps
    stream = task.batches(seed)
    batches = [next(stream) for _ in range(steps)]
    plain = PlainLoop(task)
    tuned = TunedLoop(task, variant.split("+")[0], args.window, args.record_every, _parse_kw(args.tuner_kw),
                      _parse_kw(args.strategy_kw), _load_engine(args.engine) if "+proto" in variant else None)
    wall: dict[str, dict[str, list[float]]] = {"plain": {}, "tuned": {}}
    cpu: dict[str, dict[str, list[float]]] = {"plain": {}, "tuned": {}}
    blocks: list[dict[str, float]] = []
    rss: list[float] = []
    block = args.window
    for b, start in enumerate(range(0, steps, block)):
        part = batches[start:start + block]
        order = (("plain", plain), ("tuned", tuned)) if b % 2 == 0 else (("tuned", tuned), ("plain", plain))
        row: dict[str, float] = {}
        for name, loop in order:
            row[name + "_wall"], row[name + "_cpu"] = timed_block(loop, part, wall[name], cpu[name], args.autocast)
        blocks.append(row)
        rss.append(_rss_mb())
    final_val = float(task.val_loss(tuned.task.model.eval()(task.val[0]), task.val[1]).detach())
    return {"wall": wall, "cpu": cpu, "blocks": blocks, "rss_mb": rss, "final_val_loss": final_val,
            "hparams": task.space.to_dict()}


def summarise(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    def pooled(clock: str, side: str, kind: str) -> list[float]:
        return [v for p in pairs for v in p[clock][side].get(kind, [])]

    out: dict[str, Any] = {}
    for clock in ("wall", "cpu"):
        plain_total = [sum(sum(v) for v in p[clock]["plain"].values()) for p in pairs]
        tuned_total = [sum(sum(v) for v in p[clock]["tuned"].values()) for p in pairs]
        block_ratio = [r[f"tuned_{clock}"] / r[f"plain_{clock}"] for p in pairs for r in p["blocks"]]
        plain_step = statistics.median(pooled(clock, "plain", "step"))
        kinds = {}
        tuned_sum = sum(tuned_total)
        for kind in ("step", "record", "window end"):
            values = pooled(clock, "tuned", kind)
            if values:
                s = spread([v / plain_step for v in values])
                kinds[kind] = {"ms": statistics.median(values) * 1e3, "x_plain_step": s,
                               "share": sum(values) / tuned_sum, "count_per_run": len(values) / len(pairs)}
        out[clock] = {
            "plain_s": plain_total, "tuned_s": tuned_total,
            "whole_run_ratio": [t / p for t, p in zip(tuned_total, plain_total, strict=True)],
            "block_ratio": spread(block_ratio), "plain_step_ms": plain_step * 1e3, "kinds": kinds,
        }
    rss = [p["rss_mb"] for p in pairs]
    out["rss_mb"] = {"first_window": [r[0] for r in rss], "last_window": [r[-1] for r in rss],
                     "growth_after_window_2": [r[-1] - r[min(1, len(r) - 1)] for r in rss]}
    out["final_val_loss"] = [p["final_val_loss"] for p in pairs]
    return out


def table(results: dict[str, dict[str, Any]], clock: str = "wall") -> str:
    lines = [f"clock: {clock}",
             "| variant | plain s/run | tuned s/run | whole run x | per-block x median [q1, q3] "
             "| step x | record x | window end x | RSS growth MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for variant, s in results.items():
        c = s[clock]
        k = c["kinds"]

        def cell(kind: str, k: dict[str, Any] = k) -> str:
            return f"{k[kind]['x_plain_step']['median']:.2f} ({k[kind]['share']:.0%})" if kind in k else "-"

        lines.append(
            f"| {variant} | {statistics.median(c['plain_s']):.2f} | {statistics.median(c['tuned_s']):.2f} "
            f"| {statistics.median(c['whole_run_ratio']):.2f} "
            f"| {c['block_ratio']['median']:.2f} [{c['block_ratio']['q1']:.2f}, {c['block_ratio']['q3']:.2f}] "
            f"| {cell('step')} | {cell('record')} | {cell('window end')} "
            f"| {max(s['rss_mb']['growth_after_window_2']):+.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mnist1d-mlp")
    parser.add_argument("--variants", default="glocal")
    parser.add_argument("--repeats", type=int, default=2, help="pairs of whole runs per variant (seeds 0..)")
    parser.add_argument("--steps", type=int, default=None, help="default: the task's total steps")
    parser.add_argument("--window", type=int, default=defaults.WINDOW)
    parser.add_argument("--record-every", type=int, default=None)
    parser.add_argument("--init", type=json.loads, default=None, help='JSON, e.g. {"lr": 0.0033}')
    parser.add_argument("--tuner-kw", action="append", default=[], help="extra Tuner keyword key=value")
    parser.add_argument("--strategy-kw", action="append", default=[], help="extra strategy keyword key=value")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the task's tensors and model go there)")
    parser.add_argument("--autocast", choices=("bf16",), default=None,
                        help="run both loops' steps under torch.autocast with bfloat16")
    parser.add_argument("--engine", default=None, help="FILE:CLASS of a prototype engine for '<variant>+proto'")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from glocal_bench import tasks

    variants = args.variants.split(",")
    raw: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    run_pair(args.task, 0, variants[0], argparse.Namespace(**{**vars(args), "steps": 2 * args.window}),
             tasks.make)  # warm-up: data generation, allocator, first-call costs
    for r in range(args.repeats):
        for v in variants:  # variants interleaved too
            raw[v].append(run_pair(args.task, r, v, args, tasks.make))
    results = {v: summarise(p) for v, p in raw.items()}
    print(f"task {args.task}, {args.repeats} repeat(s), window {args.window}, {args.threads} thread(s), "
          f"device {args.device}, autocast {args.autocast or 'off'}, load {os.getloadavg()[0]:.1f}")
    print(table(results, "wall"))
    if args.device == "cpu":  # on a GPU the host thread's CPU time is not the cost
        print(table(results, "cpu"))
    if args.out:
        meta = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "torch": torch.__version__,
                "python": platform.python_version(), "cpu_count": os.cpu_count(),
                "load_average": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "args": {k: (str(v) if isinstance(v, Path) else v)
                                                                for k, v in vars(args).items()},
                                        "results": results}, indent=1) + "\n")
        print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
