"""The drop-in optimizers give their listeners the same records as the Tuner."""

import torch
from torch import nn
from torch.nn import functional as F

import glocal
from glocal.records import Record


def test_drop_in_records_steps_record_points_and_windows():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    opt = glocal.GlocalSGD(model.parameters(), lr=0.05, tune=("lr",), strategy="glocal", window=6, record_every=2,
                           total_steps=12, val_closure=lambda: F.cross_entropy(model(x[:16]), y[:16]))
    seen: list[Record] = []
    opt.listeners.append(seen.append)
    for i in range(12):
        opt.zero_grad()
        if i < 6:  # plain loop: the loss is not known to the optimizer
            F.cross_entropy(model(x), y).backward(create_graph=True)
            opt.step()
        else:  # a closure gives it
            def closure():
                loss = F.cross_entropy(model(x), y)
                loss.backward(create_graph=True)
                return loss

            opt.step(closure)
    steps = [r for r in seen if r.kind == "step"]
    assert [r.step for r in steps] == list(range(1, 13))
    assert all("train/loss" not in r.scalars for r in steps[:6]) and all("train/loss" in r.scalars for r in steps[6:])
    assert [r.step for r in seen if r.kind == "val"] == [2, 4, 6, 8, 10, 12]
    windows = [r for r in seen if r.kind == "window"]
    assert [r.step for r in windows] == [6, 12]
    assert windows[-1].scalars["hparams/lr"] == opt.param_groups[0]["lr"]
    assert windows[-1].scalars["hypergrad_used/lr"] == opt.history.windows[-1]["used"][0]
