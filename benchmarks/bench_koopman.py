"""Time glocal.koopman.extrapolate against a naive full-Hankel-SVD DMD.

Usage: python benchmarks/bench_koopman.py [--out benchmarks/results/koopman.json] [--repeats 15]
Runs on one thread (torch.set_num_threads(1), BLAS limited to one thread inside extrapolate) and
reports the median and the spread (min-max) in milliseconds.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one BLAS thread for the reference path too
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from glocal.koopman import extrapolate


def full_hankel_svd(x: np.ndarray, delay: int, steps: int) -> np.ndarray:
    """Reference affine DMD on the explicit (n-d+1) x (d q) Hankel matrix (no compression)."""
    n = x.shape[0]
    m = n - delay + 1
    h = np.concatenate([x[i : i + m] for i in range(delay)], axis=1)
    y0 = h[:-1]
    mean0 = y0.mean(0)
    v, s, wt = np.linalg.svd(y0 - mean0, full_matrices=False)
    r = int(np.count_nonzero(s > 1e-8 * s[0]))
    u = wt[:r].T
    z = (h - mean0) @ u
    c = z[1:].mean(0)
    a = (z[1:] - c).T @ (v[:, :r] / s[:r])
    zs = z[-1]
    for _ in range(min(steps, 10)):
        zs = a @ zs + c
    return (mean0 + u @ zs)[-x.shape[1] :]


def time_it(fn, repeats: int) -> dict[str, float]:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": float(np.median(times)), "min_ms": float(min(times)), "max_ms": float(max(times))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/koopman.json")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    rows = []
    for q in (1, 64, 4096):
        for n in (50, 100, 200):
            t = np.arange(n)[:, None]
            x = 1.0 + np.exp(-t / 30.0) * rng.normal(size=(1, q)) + 1e-3 * rng.normal(size=(n, q))
            xt = torch.from_numpy(x)
            row = {"q": q, "n": n}
            row["numpy"] = time_it(lambda x=x: extrapolate(x, 100), args.repeats)
            row["torch"] = time_it(lambda xt=xt: extrapolate(xt, 100), args.repeats)
            row["numpy_no_holdout"] = time_it(lambda x=x: extrapolate(x, 100, fallback="never"), args.repeats)
            d = round(n / 4)
            reps = max(3, args.repeats // 5) if q * d > 10_000 else args.repeats
            row["full_hankel_svd_d_n4"] = time_it(lambda x=x, d=d: full_hankel_svd(x, d, 100), reps)
            rows.append(row)
            print(f"q={q:5d} n={n:4d} done", flush=True)
    meta = {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "threads": 1,
        "repeats": args.repeats,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "results": rows}, indent=2))

    def cell(r: dict[str, float]) -> str:
        return f"{r['median_ms']:.2f} ({r['min_ms']:.2f}-{r['max_ms']:.2f})"

    print(
        "\n| q | n | extrapolate, numpy (ms) | extrapolate, torch (ms) | no hold-out (ms) | "
        "full Hankel SVD, d=n/4 (ms) |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['q']} | {r['n']} | {cell(r['numpy'])} | {cell(r['torch'])} | "
            f"{cell(r['numpy_no_holdout'])} | {cell(r['full_hankel_svd_d_n4'])} |"
        )


if __name__ == "__main__":
    main()
