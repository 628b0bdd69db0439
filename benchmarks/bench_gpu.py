"""The overhead benchmarks on a CUDA GPU: tuned run vs the plain torch.optim loop, float32 and bf16 autocast.

Runs ``bench_overhead`` (whole run and per-step ratios, interleaved, every step synchronised) on
``cuda`` for the MNIST-1D MLP and CNN, once in float32 and once under ``torch.autocast`` with
bfloat16, and prints the same ratio tables as on the CPU; about 2-4 minutes on one GPU. On a machine
without CUDA it says so and exits with status 0, so it can sit in scripts that also run on CPUs.

    python benchmarks/bench_gpu.py [--steps 1000] [--out benchmarks/results/gpu.json] [--compile]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_overhead  # the sibling script

TASKS = ("mnist1d-mlp", "mnist1d-cnn")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="steps per run (default 1000)")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--compile", action="store_true", help="also time glocal with compile=True")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu.json"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device is available here (torch.cuda.is_available() is False); "
              "nothing was measured. Run this script on a machine with a GPU.")
        return 0
    variants = "glocal,local" + (",glocal-compiled" if args.compile else "")
    started = time.perf_counter()
    results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "runs": {}}
    for task in args.tasks.split(","):
        for autocast in (None, "bf16"):
            label = f"{task} {'bf16 autocast' if autocast else 'float32'}"
            print(f"\n## {label} on {results['device']}", flush=True)
            argv_run = ["--task", task, "--variants", variants, "--repeats", "1", "--steps", str(args.steps),
                        "--device", "cuda"] + (["--autocast", autocast] if autocast else [])
            results["runs"][label] = bench_overhead.main(argv_run)
    results["seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\n{results['seconds']:.0f} s in all; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
