"""bfloat16 autocast against float32: how far the hypergradients and tuned values move.

Runs the Tuner (Local and Glocal, model forward under autocast) and the drop-in GlocalSGD (forward
under autocast, backward outside) on an MLP (20-64-5, batch 64, 4 windows of 6-8 steps) for several
seeds, each in float32 and in bfloat16, and prints the largest relative deviations of the windows'
local hypergradients, the tuned hyperparameters and the final validation loss.

    OMP_NUM_THREADS=1 python benchmarks/bench_bf16.py --seeds 4
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from torch import nn
from torch.nn import functional as F

import glocal


def _data(seed: int):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 5))
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(640, 20, generator=g)
    y = (x[:, :5] + 0.3 * torch.randn(640, 5, generator=g)).argmax(1)
    return model, x, y


def _autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def tuner_run(seed: int, strategy: str, bf16: bool):
    model, x, y = _data(seed)
    space = glocal.HyperSpace(lr=glocal.Log(0.05), momentum=glocal.Logit(0.5))
    chosen = glocal.Local(window=8) if strategy == "local" else glocal.Glocal(window=8, total_steps=32,
                                                                               record_every=2)
    tuner = glocal.Tuner(model, glocal.optim.SGD(momentum=0.5), space, F.cross_entropy, F.cross_entropy, chosen,
                         torch.optim.SGD([space.raw], lr=1.0), val=(x[512:], y[512:]))
    for i in range(32):
        j = (i % 8) * 64
        with _autocast(bf16):
            tuner.step((x[j:j + 64], y[j:j + 64]))
    with torch.no_grad():
        final = float(F.cross_entropy(model(x[512:]), y[512:]))
    return [w["local"] for w in tuner.history.windows], tuner.hparams, final


def drop_in_run(seed: int, bf16: bool):
    model, x, y = _data(seed)

    def val():
        with _autocast(bf16):
            return F.cross_entropy(model(x[512:]), y[512:])

    opt = glocal.GlocalSGD(model.parameters(), lr=0.05, momentum=0.5, tune=("lr", "momentum"), strategy="local",
                           window=6, val_closure=val, hyper_lr=1.0)
    for i in range(24):
        j = (i % 6) * 64
        opt.zero_grad()
        with _autocast(bf16):
            loss = F.cross_entropy(model(x[j:j + 64]), y[j:j + 64])
        loss.backward(create_graph=True)
        opt.step()
    with torch.no_grad():
        final = float(F.cross_entropy(model(x[512:]), y[512:]))
    return [w["local"] for w in opt.history.windows], opt.hparams, final


def deviations(full, half):
    (h32, p32, l32), (h16, p16, l16) = full, half
    h = max(float((torch.tensor(a) - torch.tensor(b)).norm() / torch.tensor(b).norm())
            for a, b in zip(h16, h32, strict=True))
    p = max(abs(p16[k] / v - 1) for k, v in p32.items())
    return h, p, abs(l16 / l32 - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    print("| run | largest rel. deviation of h | of the tuned values | of the final val loss |")
    print("|---|---|---|---|")
    for name, run in (("Tuner, Local", lambda s, b: tuner_run(s, "local", b)),
                      ("Tuner, Glocal", lambda s, b: tuner_run(s, "glocal", b)),
                      ("GlocalSGD, local", drop_in_run)):
        worst = [0.0, 0.0, 0.0]
        for seed in range(args.seeds):
            worst = [max(w, d) for w, d in zip(worst, deviations(run(seed, False), run(seed, True)), strict=True)]
        print(f"| {name} | {worst[0]:.1e} | {worst[1]:.1e} | {worst[2]:.1e} |")
    print(f"\n{args.seeds} seeds, {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
