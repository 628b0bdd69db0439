"""Time one training step: plain torch.optim vs glocal forward mode (q = 1, 2, 4) vs reverse mode.

Usage:
    python benchmarks/bench_step.py [--out benchmarks/results/step.json] [--repeats 15] [--quick]
                                    [--baseline-forward OLD_forward.py] [--no-memory] [--compile]

Model: MLP 40-100-100-10 (ReLU, float32) on MNIST-1D (generated locally by
``mnist1d.data.make_dataset``; 4000 training and 1000 validation samples), batch 128 and 1024.

Configurations (all on one thread, ``torch.set_num_threads(1)``):
  plain        nn.Module + torch.optim.SGD(lr, momentum, weight_decay, dampening): zero_grad, backward, step
  fwd q=1/2/4  glocal ForwardEngine.step with glocal.optim.SGD, tuning lr / +weight_decay / +momentum, dampening
  hypergrad    ForwardEngine.hypergradient on the 1000 validation samples (q = 4): the per-record cost
  rev W=50     ReverseEngine: 50 unrolled steps + one hypergradient (q = 4), reported per step
  fwd-old q=…  (only with --baseline-forward) the ForwardEngine of another forward.py, side by side
  dropin q=…   (only with --dropin) glocal.GlocalSGD in the user's loop: zero_grad, backward(create_graph=True),
               step, tuning the same names as fwd q=… (no validation: the window never ends)
  fwd-compiled q=…  (only with --compile) glocal.hypergrad.compiled.CompiledForwardEngine (torch.compile,
               fullgraph, dynamic=False); its cold compile time (first compiled step) is reported separately

Timing: configurations are interleaved (every repeat runs a block of steps of each one in turn) so that
load from other processes hits them alike; per-step median and interquartile range (IQR) over the
repeats. Two clocks: wall time (perf_counter) and the thread's CPU time (thread_time), which leaves out
time the thread was descheduled by other processes on a busy machine; the ratios use each clock's medians.

Memory (--no-memory skips it), two honest numbers per configuration:
  peak_rss_mb  peak resident set size while running the configuration (20 steps; reverse: 3 windows) minus
               the resident size just before, in a fresh subprocess per configuration, after model, data
               (random inputs of the same shape: memory does not depend on values), without warm-up.
               Linux: the peak (VmHWM) is reset by writing 5 to /proc/self/clear_refs. It includes
               temporaries and what the allocator keeps; resolution is the page (4 KiB).
  held_mb      tensor bytes held between steps by the method: forward mode = tangents (q x (params +
               optimizer state)); reverse mode = bytes of the distinct tensors saved in the autograd graph
               over one window (via torch.autograd.graph.saved_tensors_hooks), i.e. what unrolling costs.
"""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")  # mnist1d imports matplotlib
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import importlib.util
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

import glocal
from glocal.hypergrad import ForwardEngine, ReverseEngine
from glocal.hypergrad.compiled import CompiledForwardEngine

LR, MOMENTUM, WEIGHT_DECAY, DAMPENING = 0.05, 0.9, 1e-4, 0.1
WINDOW = 50
#: seconds of the first compiled step (cold compile) per configuration, filled by make_config
COMPILE_SECONDS: dict[str, float] = {}
VAL_SIZE = 1000


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(40, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10))


def space(q: int) -> glocal.HyperSpace:
    entries = {"lr": glocal.Log(LR), "weight_decay": glocal.Log(WEIGHT_DECAY),
               "momentum": glocal.Logit(MOMENTUM), "dampening": glocal.Logit(DAMPENING)}
    return glocal.HyperSpace(**dict(list(entries.items())[:q]))


def inner_sgd() -> glocal.optim.SGD:
    return glocal.optim.SGD(lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, dampening=DAMPENING)


def load_data(random_inputs: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """MNIST-1D (x: (4000, 40), validation (1000, 40)) as float32, or random tensors of the same shapes."""
    if random_inputs:
        g = torch.Generator().manual_seed(0)
        return (torch.randn(4000, 40, generator=g), torch.randint(0, 10, (4000,), generator=g),
                torch.randn(VAL_SIZE, 40, generator=g), torch.randint(0, 10, (VAL_SIZE,), generator=g))
    from mnist1d.data import get_dataset_args, make_dataset  # reseeds python's and numpy's RNGs

    data = make_dataset(get_dataset_args())
    return (torch.as_tensor(data["x"], dtype=torch.float32), torch.as_tensor(data["y"]),
            torch.as_tensor(data["x_test"][:VAL_SIZE], dtype=torch.float32), torch.as_tensor(data["y_test"][:VAL_SIZE]))


class Batches:
    """An endless, reproducible stream of minibatches (a fresh permutation per epoch)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch: int) -> None:
        self.x, self.y, self.batch = x, y, batch
        self.g = torch.Generator().manual_seed(1)
        self.order = torch.randperm(len(x), generator=self.g)
        self.pos = 0

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pos + self.batch > len(self.x):
            self.order, self.pos = torch.randperm(len(self.x), generator=self.g), 0
        idx = self.order[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return self.x[idx], self.y[idx]


def load_forward_module(path: str):
    """Import another forward.py (e.g. ``git show REV:src/glocal/hypergrad/forward.py``) as a sibling module."""
    spec = importlib.util.spec_from_file_location("glocal.hypergrad._baseline_forward", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.ForwardEngine


# -- the configurations: each returns (run_block(n) -> steps done, held bytes) --------------------------
def make_config(name: str, batch: int, data, baseline=None, held: bool = True) -> tuple[Callable[[int], int], int]:
    x, y, xv, yv = data
    stream = Batches(x, y, batch)
    val = (xv, yv)
    if name == "plain":
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
                              dampening=DAMPENING)

        def run(n: int) -> int:
            for _ in range(n):
                xb, yb = stream()
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(xb), yb).backward()
                opt.step()
            return n

        return run, 0
    if name.startswith(("fwd", "hypergrad")):
        q = 4 if name == "hypergrad" else int(name.split("q=")[1])
        engine_type = (baseline if name.startswith("fwd-old")
                       else CompiledForwardEngine if name.startswith("fwd-compiled") else ForwardEngine)
        engine = engine_type(mlp(), inner_sgd(), space(q), F.cross_entropy)
        engine.step(stream())  # non-zero tangents from here on
        if name.startswith("fwd-compiled"):
            t0 = time.perf_counter()
            engine.step(stream())  # the first compiled step: cold compile
            COMPILE_SECONDS[f"{batch} {name}"] = time.perf_counter() - t0
        held = sum(t.numel() * t.element_size() for t in (*engine.tangent_params, *engine.tangent_state))
        if name == "hypergrad":
            def run(n: int) -> int:
                for _ in range(n):
                    engine.hypergradient(val)
                return n
        else:
            def run(n: int) -> int:
                for _ in range(n):
                    engine.step(stream())
                return n
        return run, held
    if name.startswith("dropin"):
        q = int(name.split("q=")[1])
        model = mlp()
        tuned = ("lr", "weight_decay", "momentum", "dampening")[:q]
        opt = glocal.GlocalSGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
                               dampening=DAMPENING, tune=tuned, strategy="local", window=10**9,
                               val_closure=lambda: F.cross_entropy(model(xv), yv))

        def step() -> None:
            xb, yb = stream()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb).backward(create_graph=True)
            opt.step()

        step()  # non-zero tangents from here on (the window never ends: no validation in the timing)

        def run(n: int) -> int:
            for _ in range(n):
                step()
            return n

        held = sum(t.numel() * t.element_size() for t in (*opt.engine.tangents.tangent_params,
                                                          *opt.engine.tangents.tangent_state))
        return run, held
    if name.startswith("rev"):
        engine = ReverseEngine(mlp(), inner_sgd(), space(4), F.cross_entropy)

        def run(n: int) -> int:  # n windows of WINDOW steps + one hypergradient each
            for _ in range(n):
                engine.begin_window()
                for _ in range(WINDOW):
                    engine.step(stream())
                engine.hypergradient(val, retain_graph=False)
            return n * WINDOW

        return run, reverse_held_bytes(batch, data) if held else 0
    raise ValueError(name)


def reverse_held_bytes(batch: int, data) -> int:
    """Bytes of the distinct tensors saved in the autograd graph over one unrolled window."""
    x, y, _, _ = data
    stream = Batches(x, y, batch)
    engine = ReverseEngine(mlp(), inner_sgd(), space(4), F.cross_entropy)
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        engine.begin_window()
        for _ in range(WINDOW):
            engine.step(stream())
    return sum(seen.values())


def configurations(baseline: bool, compiled: bool = False, dropin: bool = False) -> list[str]:
    names = ["plain", "fwd q=1", "fwd q=2", "fwd q=4"]
    if dropin:
        names += ["dropin q=1", "dropin q=2", "dropin q=4"]
    if baseline:
        names += ["fwd-old q=1", "fwd-old q=2", "fwd-old q=4"]
    if compiled:
        names += ["fwd-compiled q=1", "fwd-compiled q=2", "fwd-compiled q=4"]
    return [*names, "hypergrad", f"rev W={WINDOW}"]


# -- timing ----------------------------------------------------------------------------------------------
def time_batch(batch: int, data, repeats: int, quick: bool, baseline, compiled: bool = False,
               dropin: bool = False) -> dict[str, dict]:
    names = configurations(baseline is not None, compiled, dropin)
    runs = {}
    for name in names:
        runs[name], held = make_config(name, batch, data, baseline)
        runs[name] = (runs[name], held)
    # steps per timed block: enough for ~10-50 ms per block; one reverse window per block
    per_block = {"plain": 40 if batch == 128 else 10}
    for name in names:
        if name.startswith(("fwd", "dropin")):
            per_block[name] = 8 if batch == 128 else 3
        elif name == "hypergrad":
            per_block[name] = 8
        elif name.startswith("rev"):
            per_block[name] = 1
    if quick:
        per_block = {k: max(1, v // 2) for k, v in per_block.items()}
    for name in names:  # warm-up
        runs[name][0](per_block[name])
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(repeats):
        for name in names:
            run = runs[name][0]
            t0, c0 = time.perf_counter(), time.thread_time()
            steps = run(per_block[name])
            t1, c1 = time.perf_counter(), time.thread_time()
            wall[name].append((t1 - t0) / steps * 1e3)
            cpu[name].append((c1 - c0) / steps * 1e3)
    out = {}
    for name in names:
        out[name] = {"wall_ms": summary(wall[name]), "cpu_ms": summary(cpu[name]), "held_mb": runs[name][1] / 2**20}
    for name in names:
        for clock in ("wall_ms", "cpu_ms"):
            out[name][clock]["ratio"] = out[name][clock]["median"] / out["plain"][clock]["median"]
    return out


def summary(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"median": statistics.median(values), "iqr": q[2] - q[0], "n": len(values)}


# -- memory (a subprocess per configuration) ---------------------------------------------------------
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def peak_rss_child(name: str, batch: int, baseline_path: str | None) -> None:
    torch.set_num_threads(1)
    data = load_data(random_inputs=True)
    baseline = load_forward_module(baseline_path) if baseline_path else None
    run, _ = make_config(name, batch, data, baseline, held=False)
    # no warm-up: memory freed by a warm-up stays in the allocator's pool and would hide the peak
    try:  # Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kib("VmRSS")
        run(3 if name.startswith("rev") else 20)
        after = _status_kib("VmHWM")
    except OSError:  # elsewhere: ru_maxrss (a lifetime peak, so only an increase beyond it shows)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        run(3 if name.startswith("rev") else 20)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_rss_mb": (after - before) / 1024}))


def peak_rss(name: str, batch: int, baseline_path: str | None) -> float | None:
    cmd = [sys.executable, __file__, "--memory-child", name, "--batch", str(batch)]
    if baseline_path:
        cmd += ["--baseline-forward", baseline_path]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mb"]


# -- report ------------------------------------------------------------------------------------------------
def markdown(results: dict[str, dict[str, dict]]) -> str:
    lines = ["| batch | configuration | wall ms/step (IQR) | x plain | CPU ms/step (IQR) | x plain "
             "| peak RSS +MB | held MB |",
             "|---|---|---|---|---|---|---|---|"]
    for batch, rows in results.items():
        for name, r in rows.items():
            w, c = r["wall_ms"], r["cpu_ms"]
            rss = "" if r.get("peak_rss_mb") is None else f"{r['peak_rss_mb']:.1f}"
            lines.append(f"| {batch} | {name} | {w['median']:.3f} ({w['iqr']:.3f}) | {w['ratio']:.2f} | "
                         f"{c['median']:.3f} ({c['iqr']:.3f}) | {c['ratio']:.2f} | {rss} | {r['held_mb']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/step.json")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="3 repeats, half-size blocks")
    parser.add_argument("--batches", default="128,1024", help="comma-separated batch sizes")
    parser.add_argument("--baseline-forward", default=None,
                        help="path of another forward.py whose ForwardEngine is timed side by side (fwd-old)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS subprocesses")
    parser.add_argument("--compile", action="store_true",
                        help="add fwd-compiled q=1/2/4 rows (CompiledForwardEngine) and report cold compile times")
    parser.add_argument("--dropin", action="store_true",
                        help="add dropin q=1/2/4 rows: glocal.GlocalSGD in a user loop (create_graph backward + step)")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=128, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.memory_child:
        peak_rss_child(args.memory_child, args.batch, args.baseline_forward)
        return
    repeats = 3 if args.quick else args.repeats
    baseline = load_forward_module(args.baseline_forward) if args.baseline_forward else None
    data = load_data()
    results: dict[str, dict[str, dict]] = {}
    for batch in (int(b) for b in args.batches.split(",")):
        results[str(batch)] = time_batch(batch, data, repeats, args.quick, baseline, args.compile,
                                          args.dropin)
        if not args.no_memory:
            for name in results[str(batch)]:
                results[str(batch)][name]["peak_rss_mb"] = peak_rss(name, batch, args.baseline_forward)
    table = markdown(results)
    print(table)
    if COMPILE_SECONDS:
        print("cold compile (first compiled step), s: "
              + ", ".join(f"{k} {v:.1f}" for k, v in COMPILE_SECONDS.items()))
    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "machine": platform.machine(), "processor": platform.processor(),
        "load_average": os.getloadavg(), "repeats": repeats, "quick": args.quick, "window": WINDOW,
        "val_size": VAL_SIZE, "model": "MLP 40-100-100-10 ReLU float32", "data": "mnist1d make_dataset",
        "optimizer": dict(lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, dampening=DAMPENING),
        "baseline_forward": args.baseline_forward, "compile_seconds": COMPILE_SECONDS,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results, "table": table}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
