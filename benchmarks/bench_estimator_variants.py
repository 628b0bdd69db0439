"""Estimator variants that were tried and NOT kept as options, measured like `glocal bench estimator`.

Same protocol as ``glocal_bench.estimator_bench`` (true global hypergradient from each window start,
8 starts, windows 100 and 200, records every 10 steps, lr a tenth of the task default), on the same
trajectories for every variant:

* ``proj``: affine DMD of the scalar projection on h_tau's direction (magnitude only);
* ``delay-ensemble``: the mean of affine fits with delays n/6, n/4, n/3;
* ``half-blend``: h_tau + (affine - h_tau) / 2;
  plus ``local``, ``affine`` and the default ``affine+weighted`` for reference.

    .venv/bin/python benchmarks/bench_estimator_variants.py --task mnist1d-mlp --seeds 2
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import Tensor

from glocal.koopman import extrapolate
from glocal_bench import tasks
from glocal_bench.estimator_bench import BenchConfig, trajectory_from


def _affine(w: Tensor, ahead: int, **options) -> Tensor:
    return extrapolate(w, ahead, fallback="never", **options).value


def _proj(w: Tensor, ahead: int) -> Tensor:
    u = w[-1] / w[-1].norm()
    p = (w @ u)[:, None]
    return w[-1] + (extrapolate(p, ahead, fallback="never").value[0] - p[-1, 0]) * u


def _ensemble(w: Tensor, ahead: int) -> Tensor:
    n = len(w)
    delays = sorted({max(1, n // 6), max(1, n // 4), max(1, n // 3)})
    return torch.stack([_affine(w, ahead, delay=d) for d in delays]).mean(0)


VARIANTS = {
    "local": lambda w, a: w[-1],
    "affine": _affine,
    "affine+weighted": lambda w, a: extrapolate(w, a, fallback="weighted").value,
    "proj": _proj,
    "delay-ensemble": _ensemble,
    "half-blend": lambda w, a: w[-1] + 0.5 * (_affine(w, a) - w[-1]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mnist1d-mlp")
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    k, windows = 10, (100, 200)
    scores: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    for seed in range(args.seeds):
        task = tasks.make(args.task, seed=seed)
        lr, total = task.space.to_dict()["lr"], task.total_steps
        config = BenchConfig(record_every=k, init={"lr": lr * 0.1}, seed=seed)
        for i in range(8):
            start = round(i / 8 * total / k) * k
            rows, total = trajectory_from(args.task, start, config)
            truth = rows[-1]
            for tau in windows:
                if start + tau > total:
                    continue
                window, ahead = rows[: tau // k + 1], (total - start - tau) // k
                for name, variant in VARIANTS.items():
                    e = torch.as_tensor(variant(window, ahead), dtype=torch.float64)
                    cosine = float(e @ truth / (e.norm() * truth.norm()))
                    scores[name].append((cosine, float((e - truth).norm() / truth.norm())))
    local = scores["local"]
    print(f"{args.task}, seeds 0-{args.seeds - 1}, {len(local)} windows")
    print("| variant | median cosine to H_T | median rel. error | beats local |\n|---|---|---|---|")
    for name, values in scores.items():
        beats = sum(r < lr for (_, r), (_, lr) in zip(values, local, strict=True)) / len(values)
        print(f"| {name} | {statistics.median(c for c, _ in values):.4f} | "
              f"{statistics.median(r for _, r in values):.3f} | {beats:.2f} |")


if __name__ == "__main__":
    main()
