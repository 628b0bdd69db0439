"""Small float64 problems run either in one process on whole batches or on 2 ranks on half batches."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

import glocal
from glocal.distributed import shard

WINDOW, WINDOWS, BATCH, VAL = 4, 3, 16, 8
STEPS = WINDOW * WINDOWS


def data() -> tuple[list[tuple[torch.Tensor, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(STEPS * BATCH + VAL, 6, generator=g, dtype=torch.float64)
    y = (x[:, :3] + 0.3 * torch.randn(len(x), 3, generator=g, dtype=torch.float64)).argmax(1)
    batches = [(x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH]) for i in range(STEPS)]
    return batches, (x[-VAL:], y[-VAL:])


def model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3)).double()


def inner(kind: str) -> tuple[Any, glocal.HyperSpace]:
    if kind == "sgd":
        return glocal.optim.SGD(momentum=0.9), glocal.HyperSpace(lr=glocal.Log(0.1), weight_decay=glocal.Log(1e-3))
    return glocal.optim.AdamW(), glocal.HyperSpace(lr=glocal.Log(0.01), weight_decay=glocal.Log(1e-2))


def strategy(name: str) -> Any:
    if name == "fixed":
        return glocal.Fixed()
    if name == "local":
        return glocal.Local(window=WINDOW)
    return glocal.Glocal(window=WINDOW, total_steps=4 * STEPS, record_every=2)


CASES = [(opt, strat) for opt in ("sgd", "adamw") for strat in ("fixed", "local", "glocal")]


def run_tuner(opt: str, strat: str, rank: int = 0, world: int = 1) -> dict[str, Any]:
    """Train STEPS steps with a Tuner; on rank r of `world`, on shard r of every batch (and of val).

    Ranks other than 0 start from a different model and phi: the start-up broadcast must fix that.
    """
    batches, val = data()
    net = model(seed=rank)
    optimizer, space = inner(opt)
    if rank:
        with torch.no_grad():
            space.raw.add_(0.25)
    hyper = torch.optim.SGD([space.raw], lr=0.5)
    tuner = glocal.Tuner(net, optimizer, space, F.cross_entropy, F.cross_entropy, strategy(strat), hyper,
                         val=shard(val, rank, world))
    raw0 = space.raw.detach().clone()
    for batch in batches:
        tuner.step(shard(batch, rank, world))
    return {"params": [p.detach().clone() for p in net.parameters()], "raw": space.raw.detach().clone(), "raw0": raw0,
            "train_loss": list(tuner.history.train_loss), "val_loss": list(tuner.history.val_loss),
            "windows": len(tuner.history.windows)}


def run_dropin(opt: str, strat: str, rank: int = 0, world: int = 1) -> dict[str, Any]:
    """The same with GlocalSGD / GlocalAdamW in a user's loop (AdamW through a closure, SGD without)."""
    batches, val = data()
    net = model(seed=rank)
    xv, yv = shard(val, rank, world)
    common = dict(tune=("lr", "weight_decay"), strategy=strat, window=WINDOW, total_steps=4 * STEPS,
                  record_every=2 if strat == "glocal" else None, hyper_lr=0.5, model=net,
                  val_closure=lambda: F.cross_entropy(net(xv), yv))
    if opt == "sgd":
        optimizer = glocal.GlocalSGD(net.parameters(), lr=0.1 * (1 + rank), momentum=0.9, weight_decay=1e-3,
                                     **common)
    else:
        optimizer = glocal.GlocalAdamW(net.parameters(), lr=0.01 * (1 + rank), weight_decay=1e-2, **common)
    raw0 = optimizer.space.raw.detach().clone()
    for batch in batches:
        x, y = shard(batch, rank, world)

        def closure(x=x, y=y) -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward(create_graph=True)
            return loss

        if opt == "adamw":
            optimizer.step(closure)
        else:
            closure()
            optimizer.step()
    raw = optimizer.space.raw.detach().clone()
    return {"params": [p.detach().clone() for p in net.parameters()], "raw": raw, "raw0": raw0,
            "train_loss": list(optimizer.history.train_loss), "val_loss": list(optimizer.history.val_loss),
            "windows": len(optimizer.history.windows)}


def rank_tuners(rank: int, world: int) -> dict[tuple[str, str], dict[str, Any]]:
    return {case: run_tuner(*case, rank=rank, world=world) for case in CASES}


def rank_dropins(rank: int, world: int) -> dict[tuple[str, str], dict[str, Any]]:
    return {case: run_dropin(*case, rank=rank, world=world) for case in CASES}


def rank_dies_mid_run(rank: int, world: int, hang: bool = False) -> None:
    """Rank 1 crashes (no clean-up) in the second window, or stalls there (``hang``); rank 0 must
    fail, not hang (a stalled peer: after the process group's timeout)."""
    import os
    import time

    batches, val = data()
    optimizer, space = inner("sgd")
    tuner = glocal.Tuner(model(0), optimizer, space, F.cross_entropy, F.cross_entropy, strategy("local"),
                         val=shard(val, rank, world))
    for step, batch in enumerate(batches):
        if rank == 1 and step == WINDOW + 1:
            if hang:
                time.sleep(60)
            os._exit(7)
        tuner.step(shard(batch, rank, world))
