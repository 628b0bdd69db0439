"""The drop-in optimizers used as a torch.optim user would: the issue's snippet, checkpoints, errors."""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import glocal


def data(n: int = 256, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, :3] + 0.3 * torch.randn(n, 3, generator=g)).argmax(1)
    return x, y


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


@pytest.mark.parametrize("make_model", [mlp, bn_net], ids=["mlp", "batchnorm"])
def test_the_issue_snippet_runs_as_written(make_model):
    model = make_model()
    x, y = data()
    x_val, y_val = data(128, seed=2)
    loader = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 256, 32)] * 5
    T = len(loader)
    opt = glocal.GlocalSGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4,
                           tune=("lr", "weight_decay"), strategy="glocal", window=10, total_steps=T,
                           val_closure=lambda: F.cross_entropy(model(x_val), y_val))
    for x_b, y_b in loader:
        opt.zero_grad()
        loss = F.cross_entropy(model(x_b), y_b)
        loss.backward(create_graph=True)
        opt.step()
    assert len(opt.history.windows) == T // 10
    assert opt.param_groups[0]["lr"] == pytest.approx(opt.hparams["lr"], rel=1e-6)
    assert opt.param_groups[0]["lr"] != pytest.approx(0.01, rel=1e-3)  # it was tuned
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with torch.no_grad():
        assert F.cross_entropy(model(x_val), y_val) < 1.0


def run(opt_factory, model, loader, val, start=0, stop=None):
    opt = opt_factory(model, val)
    for x_b, y_b in loader[start:stop]:
        opt.zero_grad()
        F.cross_entropy(model(x_b), y_b).backward(create_graph=True)
        opt.step()
    return opt


def sgd_factory(model, val):
    return glocal.GlocalSGD(model.parameters(), lr=0.05, momentum=0.9, tune=("lr", "momentum"),
                            strategy="glocal", window=6, total_steps=30, record_every=2,
                            hyper_optimizer=lambda p: torch.optim.Adam(p, lr=0.05),
                            val_closure=lambda: F.cross_entropy(model(val[0]), val[1]))


def adamw_factory(model, val):
    return glocal.GlocalAdamW(model.parameters(), lr=1e-2, tune=("lr", "beta2"), strategy="local", window=4,
                              val_closure=lambda: F.cross_entropy(model(val[0]), val[1]))


@pytest.mark.parametrize("factory", [sgd_factory, adamw_factory], ids=["sgd", "adamw"])
def test_state_dict_round_trip_through_a_file_resumes_exactly(factory, tmp_path):
    x, y = data()
    val = data(64, seed=2)
    loader = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 256, 32)] * 4  # 32 steps
    model = mlp()
    reference = run(factory, model, loader, val)

    model2 = mlp()
    opt2 = run(factory, model2, loader, val, stop=15)  # mid-window
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model2.state_dict(), "opt": opt2.state_dict()}, path)
    saved = torch.load(path, weights_only=True)
    model3 = mlp()
    with torch.no_grad():
        for p in model3.parameters():
            p.add_(1.0)  # a different start: everything must come from the file
    model3.load_state_dict(saved["model"])
    opt3 = factory(model3, val)
    opt3.load_state_dict(saved["opt"])
    assert "tangent" in opt3.state[next(iter(model3.parameters()))]
    for x_b, y_b in loader[15:]:
        opt3.zero_grad()
        F.cross_entropy(model3(x_b), y_b).backward(create_graph=True)
        opt3.step()
    torch.testing.assert_close(opt3.space.raw.detach(), reference.space.raw.detach(), rtol=0, atol=0)
    for p, q in zip(model3.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=0)
    assert len(opt3.history.windows) == len(reference.history.windows)
    assert opt3.param_groups[0]["lr"] == reference.param_groups[0]["lr"]


def test_backward_without_create_graph_is_a_clear_error():
    model = mlp()
    x, y = data(32)
    opt = glocal.GlocalSGD(model.parameters(), lr=0.1, strategy="local", window=3,
                           val_closure=lambda: F.cross_entropy(model(x), y))
    F.cross_entropy(model(x), y).backward()
    with pytest.raises(RuntimeError, match="create_graph=True"):
        opt.step()


def test_frozen_parameters_are_skipped():
    model = mlp()
    model[0].weight.requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    x, y = data(64)
    opt = glocal.GlocalSGD(model.parameters(), lr=0.1, strategy="local", window=2,
                           val_closure=lambda: F.cross_entropy(model(x), y))
    for _ in range(4):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward(create_graph=True)
        opt.step()
    assert torch.equal(model[0].weight, frozen)
    assert model[0].weight not in opt.state
    assert len(opt.history.windows) == 2


def test_per_group_values_are_tuned_separately():
    model = mlp()
    x, y = data(64)
    opt = glocal.GlocalSGD([{"params": model[0].parameters(), "lr": 0.05},
                            {"params": model[2].parameters(), "lr": 0.2, "momentum": 0.5}],
                           lr=0.1, tune=("lr",), strategy="local", window=3,
                           val_closure=lambda: F.cross_entropy(model(x), y))
    assert opt.hparams["lr"] == pytest.approx([0.05, 0.2])
    for _ in range(6):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward(create_graph=True)
        opt.step()
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs == pytest.approx(opt.hparams["lr"], rel=1e-6)
    assert lrs[0] != pytest.approx(0.05, rel=1e-4) and lrs[1] != pytest.approx(0.2, rel=1e-4)
    assert opt.param_groups[1]["momentum"] == 0.5 and opt.param_groups[0]["momentum"] == 0.0


def test_per_group_fixed_values_equal_torch_optim():
    model, ref_model = mlp(), mlp()
    x, y = data(64)

    def groups(m):
        return [{"params": m[0].parameters(), "lr": 0.05, "weight_decay": 1e-2},
                {"params": m[2].parameters(), "lr": 0.2, "momentum": 0.5}]

    opt = glocal.GlocalSGD(groups(model), lr=0.1, momentum=0.9, tune=("lr",), strategy="fixed")
    ref = torch.optim.SGD(groups(ref_model), lr=0.1, momentum=0.9)
    for _ in range(5):
        for o, m in ((opt, model), (ref, ref_model)):
            o.zero_grad()
            F.cross_entropy(m(x), y).backward()
            o.step()
    for p, q in zip(model.parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_a_scheduler_scales_the_tuned_lr_and_clip_grad_norm_acts():
    model = mlp()
    x, y = data(64)
    opt = glocal.GlocalSGD(model.parameters(), lr=0.1, tune=("lr",), strategy="local", window=100,
                           val_closure=lambda: F.cross_entropy(model(x), y))
    scheduler = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward(create_graph=True)
        opt.step()
        scheduler.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward(create_graph=True)
    before = [p.detach().clone() for p in model.parameters()]
    total = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1e-3)
    assert total > 1e-3
    opt.step()
    assert opt.hparams["lr"] == pytest.approx(0.025)  # adopted from param_groups at this step
    moved = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before, strict=True)))
    assert moved.item() == pytest.approx(0.025 * 1e-3, rel=1e-3)  # the clipped gradient was used


def test_bad_arguments_name_the_argument():
    model = mlp()
    with pytest.raises(ValueError, match=r"learning_rate.*lr, momentum, weight_decay, dampening"):
        glocal.GlocalSGD(model.parameters(), tune=("learning_rate",), strategy="fixed")
    with pytest.raises(ValueError, match=r"betas.*beta1"):
        glocal.GlocalAdamW(model.parameters(), tune=("betas",), strategy="fixed")
    with pytest.raises(ValueError, match="total_steps"):
        glocal.GlocalSGD(model.parameters(), val_closure=lambda: torch.zeros(()))
    opt = glocal.GlocalSGD(model.parameters(), strategy="local")  # a closure may be set later (integrations)
    with pytest.raises(ValueError, match="val_closure: required"):
        opt.step()
    with pytest.raises(ValueError, match="strategy='global'"):
        glocal.GlocalSGD(model.parameters(), strategy="global")
    with pytest.raises(ValueError, match="weight_decay"):  # a tuned value must start inside its range
        glocal.GlocalSGD(model.parameters(), tune=("weight_decay",), strategy="local",
                         val_closure=lambda: torch.zeros(()))


def test_eval_mode_during_validation_when_the_model_is_given():
    model = bn_net()
    x, y = data(64)
    modes = []

    def val():
        modes.append(model.training)
        return F.cross_entropy(model(x), y)

    opt = glocal.GlocalSGD(model.parameters(), lr=0.05, strategy="local", window=2, val_closure=val, model=model)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward(create_graph=True)
        opt.step()
    assert modes == [False] and model.training
    copy.deepcopy(opt.state_dict())


def test_misuse_after_construction_is_a_clear_error():
    model = mlp()
    x, y = data(32)
    opt = glocal.GlocalSGD(model[0].parameters(), strategy="local", window=1,
                           val_closure=lambda: F.cross_entropy(model(x), y).detach())
    with pytest.raises(RuntimeError, match="add_param_group"):
        opt.add_param_group({"params": model[2].parameters()})
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward(create_graph=True)
    with pytest.raises(RuntimeError, match=r"val_closure.*no graph"):
        opt.step()
