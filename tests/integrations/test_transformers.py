"""transformers.Trainer: a tiny GPT-2 built from a local config (no hub access) tunes lr through GlocalCallback."""

import json
import os
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

import glocal  # noqa: E402
from glocal.integrations.transformers import GlocalCallback, TunedLR  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")
VOCAB, LENGTH = 32, 12


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _model(seed=0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=LENGTH, n_embd=16, n_layer=1, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config)


def _sequences(n, seed):
    """Counting sequences (next token = token + step mod VOCAB): learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, VOCAB, (n, 1), generator=g)
    step = torch.randint(1, 3, (n, 1), generator=g)
    ids = (start + step * torch.arange(LENGTH)) % VOCAB
    return [{"input_ids": row, "labels": row} for row in ids]


def _trainer(tmp_path, model, max_steps, val_loader=False, **options):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=max_steps, per_device_train_batch_size=8, logging_steps=1000,
        save_strategy=options.pop("save_strategy", "no"), report_to=options.pop("report_to", []), use_cpu=True,
        seed=0, data_seed=0, disable_tqdm=True, dataloader_num_workers=0, **options)
    opt = glocal.GlocalAdamW(model.parameters(), lr=3e-3, weight_decay=0.0, tune=("lr",), strategy="glocal",
                             window=4, record_every=1, total_steps=max_steps, hyper_lr=1.0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_sequences(96, 1),
                                   optimizers=(opt, TunedLR(opt)))
    if val_loader:  # 3 batches, one per record point, cycled
        loader = torch.utils.data.DataLoader(_sequences(24, 2), batch_size=8,
                                             collate_fn=transformers.default_data_collator)
        GlocalCallback(val_dataloader=loader).attach(trainer)
    else:
        GlocalCallback(val_batch=transformers.default_data_collator(_sequences(16, 2))).attach(trainer)
    return trainer, opt


def _train(trainer, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return trainer.train(**kwargs)


def test_lr_is_tuned_and_logged_by_the_trainer(tmp_path):
    model = _model()
    trainer, opt = _trainer(tmp_path, model, 12, report_to=["tensorboard"])
    _train(trainer)
    entries = [e for e in trainer.state.log_history if "glocal/hparams/lr" in e]
    assert [e["step"] for e in entries] == [4, 8, 12]  # one log entry per window, at its step
    # logging_steps=1000: the windows' entries (and the final summary) are the only training logs
    assert [e["step"] for e in trainer.state.log_history if "loss" in e] == [4, 8, 12]
    lrs = [e["glocal/hparams/lr"] for e in entries]
    assert lrs == pytest.approx([w["hparams"]["lr"] for w in opt.history.windows], rel=1e-12)
    assert len(set(lrs)) == 3 and all(abs(v / 3e-3 - 1) > 1e-3 for v in lrs)  # the lr moves
    # the Trainer's own learning_rate log (the lr the logged step used) is the tuned value
    assert [e["learning_rate"] for e in entries[1:]] == pytest.approx(lrs[:2], rel=1e-6)
    assert opt.param_groups[0]["lr"] == pytest.approx(lrs[-1])
    for tag in ("glocal/hypergrad_local/lr", "glocal/hypergrad_used/lr", "glocal/window/fell_back",
                "glocal/val/loss"):
        assert all(tag in e for e in entries), tag
    # the TensorBoard reporter received them too
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run,) = [os.path.join(d, "") for d, _, files in os.walk(tmp_path) if any("tfevents" in f for f in files)]
    events = EventAccumulator(run)
    events.Reload()
    assert [e.step for e in events.Scalars("train/glocal/hparams/lr")] == [4, 8, 12]


def test_resumed_from_a_trainer_checkpoint_ends_identical_to_an_uninterrupted_run(tmp_path):
    straight = _model()
    trainer, opt = _trainer(tmp_path / "a", straight, 12, val_loader=True, save_strategy="steps", save_steps=5)
    _train(trainer)
    assert (tmp_path / "a" / "checkpoint-5").is_dir()

    resumed = _model(seed=123)  # different initial weights: everything must come from the checkpoint
    trainer2, opt2 = _trainer(tmp_path / "b", resumed, 12, val_loader=True)
    # mid-window (4..8), mid-epoch, 5 validation batches drawn (5 % 3 = 2 into the validation loader)
    _train(trainer2, resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-5"))
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert opt2.hparams == opt.hparams and opt.hparams["lr"] != 3e-3
    assert json.dumps(opt2.history.windows) == json.dumps(opt.history.windows)
    assert opt2.history.val_loss == opt.history.val_loss


def test_float16_and_an_overwriting_scheduler_are_refused(tmp_path):
    model = _model()
    opt = glocal.GlocalAdamW(model.parameters(), lr=3e-3, tune=("lr",), strategy="local", window=4)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=4, report_to=[], use_cpu=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_sequences(8, 1), optimizers=(opt, None))
    with pytest.raises(ValueError, match="TunedLR"):
        GlocalCallback(val_batch={}).attach(trainer)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_sequences(8, 1),
                                   optimizers=(opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)))
    with pytest.raises(ValueError, match="overwrite the tuned lr"):
        GlocalCallback(val_batch={}).attach(trainer)
    plain = transformers.Trainer(model=model, args=args, train_dataset=_sequences(8, 1))
    with pytest.raises(TypeError, match="no glocal optimizer"):
        GlocalCallback(val_batch={}).attach(plain)


@pytest.mark.parametrize("options", [{"gradient_accumulation_steps": 2}, {"bf16": True}, {"max_grad_norm": 0.1}],
                         ids=["accumulation", "bf16", "clipping"])
def test_trainer_options_keep_tuning(tmp_path, options):
    model = _model()
    seen = set()  # (output dtype, training mode) of one linear layer: training steps and validation closure
    model.transformer.h[0].mlp.c_fc.register_forward_hook(lambda m, args, out: seen.add((out.dtype, m.training)))
    trainer, opt = _trainer(tmp_path, model, 8, **options)
    _train(trainer)
    dtype = torch.bfloat16 if options.get("bf16") else torch.float32
    assert seen == {(dtype, True), (dtype, False)}
    assert trainer.state.global_step == 8 and len(opt.history.windows) == 2
    assert opt.hparams["lr"] != pytest.approx(3e-3, rel=1e-3)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert all(t.dtype == torch.float32 for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
