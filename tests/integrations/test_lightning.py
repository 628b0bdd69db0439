"""Lightning: a real Trainer on CPU tunes lr through GlocalCallback, logs it, and resumes exactly."""

import csv
import json
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")

import glocal  # noqa: E402
from glocal.integrations.lightning import GlocalCallback  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    return TensorDataset(x, (x[:, :3] + 0.3 * torch.randn(n, 3, generator=g)).argmax(1))


class Net(pl.LightningModule):
    def __init__(self, seed=0, strategy="glocal"):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 3))
        self.strategy = strategy

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("val_loss", loss)
        return loss

    def configure_optimizers(self):
        return glocal.GlocalSGD(self.parameters(), lr=0.02, momentum=0.5, tune=("lr",), strategy=self.strategy,
                                window=6, record_every=2, total_steps=24, hyper_lr=1.0)


def _trainer(tmp_path, max_steps, callback=None, **options):
    options.setdefault("logger", False)
    return pl.Trainer(accelerator="cpu", max_steps=max_steps, callbacks=[callback or GlocalCallback()],
                      default_root_dir=tmp_path,
                      enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                      num_sanity_val_steps=0, log_every_n_steps=1, **options)


def _fit(trainer, model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, DataLoader(_data(256, 1), batch_size=32), DataLoader(_data(192, 2), batch_size=64))


def test_lr_is_tuned_and_the_logger_shows_it(tmp_path):
    logger = pl.loggers.CSVLogger(tmp_path, name="run")
    trainer = _trainer(tmp_path, 24, logger=logger)
    model = Net()
    _fit(trainer, model)
    (opt,) = trainer.optimizers
    with open(f"{logger.log_dir}/metrics.csv") as file:
        rows = list(csv.DictReader(file))
    lr = [(int(r["step"]), float(r["glocal/hparams/lr"])) for r in rows if r.get("glocal/hparams/lr")]
    assert [s for s, _ in lr] == [6, 12, 18, 24]  # one record per window, at the optimizer's step
    values = [v for _, v in lr]
    assert len(set(values)) == 4 and all(abs(v / 0.02 - 1) > 1e-3 for v in values)  # the logged lr moves
    assert values[-1] == pytest.approx(opt.param_groups[0]["lr"], rel=1e-6)
    assert values == pytest.approx([w["hparams"]["lr"] for w in opt.history.windows], rel=1e-6)
    for tag in ("glocal/hypergrad_local/lr", "glocal/hypergrad_used/lr", "glocal/window/fell_back",
                "glocal/estimator/rank"):
        assert len([r for r in rows if r.get(tag)]) == 4, tag
    assert len([r for r in rows if r.get("glocal/val/loss")]) == 12  # every record point (record_every=2)
    # the closure's validation_step calls did not log into the user's val_loss (3 epochs: 3 validations)
    assert len([r for r in rows if r.get("val_loss")]) == 3
    assert "backward" not in model.__dict__ and opt.val_closure is None  # the callback detached after fit


def test_resumed_from_lightning_checkpoint_ends_identical_to_an_uninterrupted_run(tmp_path):
    straight = Net()
    _fit(_trainer(tmp_path / "a", 20), straight)

    first = Net()
    # stops inside a window (12..18) at an epoch's end: Lightning resumes a plain DataLoader mid-epoch from the
    # epoch's first batch (an exact mid-epoch position needs a stateful loader, e.g. torchdata's)
    trainer = _trainer(tmp_path / "b", 16)
    _fit(trainer, first)
    path = tmp_path / "half.ckpt"
    trainer.save_checkpoint(path)
    torch.load(path, weights_only=True)  # the tuning state is plain tensors and numbers

    resumed = Net(seed=123)  # different initial weights: everything must come from the checkpoint
    trainer2 = _trainer(tmp_path / "c", 20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer2.fit(resumed, DataLoader(_data(256, 1), batch_size=32), DataLoader(_data(192, 2), batch_size=64),
                     ckpt_path=path)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    (opt_a,), (opt_c,) = straight.trainer.optimizers, trainer2.optimizers
    assert opt_c.hparams == opt_a.hparams and opt_a.hparams["lr"] != 0.02
    assert len(opt_a.history.windows) == 3
    assert json.dumps(opt_c.history.windows) == json.dumps(opt_a.history.windows)  # NaN diagnostics compare equal
    assert opt_c.history.val_loss == opt_a.history.val_loss
    assert trainer2.callbacks[0].val_batches_used == straight.trainer.callbacks[0].val_batches_used == 10


def test_bf16_mixed_tunes_and_float16_is_refused(tmp_path):
    model = Net()
    seen = set()  # (output dtype, training mode) of the first layer: training steps and validation closure
    model.net[0].register_forward_hook(lambda m, args, out: seen.add((out.dtype, m.training)))
    held_out = _data(64, 3).tensors  # the closure's batch; Lightning's own validation loop is off
    _fit(_trainer(tmp_path, 12, GlocalCallback(val_batch=held_out), precision="bf16-mixed", limit_val_batches=0),
         model)
    assert seen == {(torch.bfloat16, True), (torch.bfloat16, False)}
    (opt,) = model.trainer.optimizers
    assert opt.hparams["lr"] != 0.02 and all(p.dtype == torch.float32 for p in model.parameters())
    assert all(t.dtype == torch.float32 for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
    with pytest.raises(ValueError, match="float16 autocast is not supported"):
        _fit(_trainer(tmp_path, 12, precision="16-true"), Net())


def test_a_module_without_a_glocal_optimizer_or_without_validation_data_is_refused(tmp_path):
    class Plain(Net):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(TypeError, match=r"GlocalSGD or glocal\.GlocalAdamW"):
        _fit(_trainer(tmp_path, 2), Plain())
    model = Net()
    with pytest.raises(ValueError, match=r"no validation dataloader.*val_batch="):
        _fit(_trainer(tmp_path, 4, limit_val_batches=0), model)
    assert "backward" not in model.__dict__  # detached after the failure too


@pytest.mark.parametrize("options", [{"gradient_clip_val": 0.5}, {"accumulate_grad_batches": 2}],
                         ids=["clipping", "accumulation"])
def test_lightning_gradient_clipping_and_accumulation_keep_tuning(tmp_path, options):
    model = Net()
    trainer = _trainer(tmp_path, 12, **options)
    _fit(trainer, model)
    (opt,) = trainer.optimizers
    assert trainer.global_step == 12 and len(opt.history.windows) == 2
    assert opt.hparams["lr"] != pytest.approx(0.02, rel=1e-3)
    assert all(torch.isfinite(p).all() for p in model.parameters())


class Manual(Net):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        opt.zero_grad()
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.manual_backward(loss)  # the callback's backward adds create_graph=True here too
        opt.step()
        return loss


def test_manual_optimization_tunes_too(tmp_path):
    model = Manual()
    trainer = _trainer(tmp_path, 12)
    _fit(trainer, model)
    (opt,) = trainer.optimizers
    assert trainer.global_step == 12 and len(opt.history.windows) == 2
    assert opt.hparams["lr"] != pytest.approx(0.02, rel=1e-3)
