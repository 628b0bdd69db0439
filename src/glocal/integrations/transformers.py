"""Hugging Face ``transformers.Trainer``: tune the optimizer online (``pip install "glocal[transformers]"``).

A drop-in optimizer, a scheduler that leaves its lr alone, and a callback attached to the trainer::

    opt = glocal.GlocalAdamW(model.parameters(), lr=1e-3, tune=("lr",), strategy="glocal",
                             window=50, total_steps=args.max_steps)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=train,
                                   optimizers=(opt, TunedLR(opt)))
    GlocalCallback(val_batch=held_out).attach(trainer)
    trainer.train()

What each part does, and why:

* ``TunedLR(opt)``: the Trainer always steps a scheduler, and its default ones (``LambdaLR``:
  linear, cosine, constant) write an absolute lr every step, which would undo the tuning.
  ``TunedLR`` keeps the optimizer's current lr and reports it, so the Trainer's ``learning_rate``
  log is the tuned value. ``attach`` refuses a ``LambdaLR``.
* ``GlocalCallback.attach(trainer)``: puts the callback first among the trainer's callbacks (its
  values are added to the Trainer's logs before any reporter — TensorBoard, W&B, ... — reads them),
  makes the trainer's backward keep its graph (``accelerator.backward(loss, create_graph=True)``,
  set on this trainer's accelerator: forward-mode hypergradients need the gradient's graph), and
  gives the optimizer its validation closure: ``val_loss(model, batch)`` (default: the model's
  ``loss`` output, so the batch carries ``labels``) on ``val_batch`` or on the batches of
  ``val_dataloader`` in turn, in eval mode.
* **Logging.** At the end of a step that ended a window (or reverted one, or skipped a step) the
  callback asks the Trainer to log; the records' scalars (``glocal/hparams/lr``, hypergradients,
  estimator diagnostics, fallbacks, the closure's latest validation loss) join that log entry
  (``trainer.state.log_history`` and every reporter). Validation losses of record points in
  between join the Trainer's next regular log (``logging_steps``).
* **Checkpoints.** The Trainer saves ``optimizer.state_dict()`` and loads it with
  ``weights_only=True``; the drop-in's state dict holds the whole tuning state. The callback's
  position in ``val_dataloader`` is the number of record points so far (in the optimizer's
  history), so a resumed run draws the same validation batches.
* **Precision.** ``bf16=True`` is supported (the forward under bfloat16 autocast, tangents and
  hypergradients in float32); ``fp16=True`` is refused (``glocal.amp.FLOAT16_REFUSED``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..amp import FLOAT16_REFUSED
from ..records import Record
from ..torch_optim import GlocalAdamW, GlocalSGD

try:
    from transformers import Trainer, TrainerCallback
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("glocal.integrations.transformers needs the transformers package: "
                      "pip install \"glocal[transformers]\"") from error

__all__ = ["GlocalCallback", "TunedLR"]

ValLoss = Callable[[nn.Module, Any], Tensor]


class TunedLR(torch.optim.lr_scheduler.LRScheduler):
    """A scheduler that keeps the optimizer's current (tuned) lr and reports it in ``get_last_lr()``."""

    def get_lr(self) -> list[float]:  # type: ignore[override]
        return [float(group["lr"]) for group in self.optimizer.param_groups]


def model_loss(model: nn.Module, batch: Any) -> Tensor:
    """The loss a transformers model returns for a batch with labels: ``model(**batch).loss``."""
    output = model(**batch) if isinstance(batch, Mapping) else model(*batch)
    loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    if not isinstance(loss, Tensor):
        raise TypeError("GlocalCallback: the model returned no loss for the validation batch; give the batch "
                        "'labels', or pass val_loss=lambda model, batch: ... to GlocalCallback")
    return loss


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _glocal_optimizer(optimizer: Any) -> GlocalSGD | GlocalAdamW | None:
    """The drop-in optimizer, also behind accelerate's ``AcceleratedOptimizer`` wrapper."""
    for candidate in (optimizer, getattr(optimizer, "optimizer", None)):
        if isinstance(candidate, GlocalSGD | GlocalAdamW):
            return candidate
    return None


class GlocalCallback(TrainerCallback):
    """Connects a glocal drop-in optimizer to a ``transformers.Trainer`` (see the module docstring).

    ``val_batch``: a fixed held-out batch (a dict of tensors with ``labels``), or ``val_dataloader``:
    batches taken in turn (cycled). ``val_loss(model, batch)``: the validation loss (default the
    model's ``loss`` output). Call ``attach(trainer)`` once, after building the trainer.
    """

    def __init__(self, val_batch: Any = None, *, val_dataloader: Iterable[Any] | None = None,
                 val_loss: ValLoss | None = None, eval_mode: bool = True) -> None:
        if (val_batch is None) == (val_dataloader is None):
            raise ValueError("GlocalCallback: give exactly one of val_batch= (a held-out batch) and val_dataloader=")
        if val_loss is not None and not callable(val_loss):
            raise TypeError(f"val_loss: expected a callable (model, batch) -> loss tensor, got {type(val_loss)}")
        self.val_batch = val_batch
        self.val_dataloader = val_dataloader
        self.val_loss: ValLoss = val_loss or model_loss
        self.eval_mode = eval_mode
        self.trainer: Trainer | None = None
        self.optimizer: GlocalSGD | GlocalAdamW | None = None
        self._pending: dict[str, float] = {}
        self._urgent = False  # a window, revert or skipped step is pending: ask for a log entry
        self._iterator: Iterator[Any] | None = None
        self._drawn = 0

    # -- wiring ------------------------------------------------------------------------------
    def attach(self, trainer: Trainer) -> GlocalCallback:
        """Make ``trainer`` tune with its glocal optimizer; returns this callback."""
        if not isinstance(trainer, Trainer):
            raise TypeError(f"trainer: expected a transformers.Trainer, got {type(trainer).__name__}")
        if trainer.args.fp16:
            raise ValueError(f"GlocalCallback: TrainingArguments(fp16=True): {FLOAT16_REFUSED} (bf16=True)")
        optimizer = _glocal_optimizer(trainer.optimizer)
        if optimizer is None:
            raise TypeError("GlocalCallback: the trainer has no glocal optimizer; build it with "
                            "optimizers=(glocal.GlocalAdamW(...), TunedLR(opt)) (or GlocalSGD)")
        if isinstance(trainer.lr_scheduler, torch.optim.lr_scheduler.LambdaLR):
            raise ValueError("GlocalCallback: the trainer's LambdaLR scheduler would overwrite the tuned lr every "
                             "step; pass optimizers=(opt, glocal.integrations.transformers.TunedLR(opt))")
        if trainer.lr_scheduler is None:
            raise ValueError("GlocalCallback: pass optimizers=(opt, TunedLR(opt)): without a scheduler the Trainer "
                             "creates a LambdaLR that overwrites the tuned lr every step")
        self.trainer, self.optimizer = trainer, optimizer
        if optimizer.val_closure is None:
            optimizer.val_closure = self.val_closure
        optimizer.listeners.append(self._listen)
        callbacks = trainer.callback_handler.callbacks
        if self in callbacks:
            callbacks.remove(self)
        callbacks.insert(0, self)  # before the reporters: they see the values this callback adds to a log
        accelerator = trainer.accelerator
        backward = type(accelerator).backward.__get__(accelerator)

        def backward_with_graph(loss: Tensor, **kwargs: Any) -> None:
            kwargs.setdefault("create_graph", True)
            backward(loss, **kwargs)

        accelerator.backward = backward_with_graph  # type: ignore[method-assign]
        return self

    # -- the validation closure --------------------------------------------------------------
    def _next_val_batch(self) -> Any:
        if self.val_batch is not None:
            return self.val_batch
        assert self.val_dataloader is not None and self.optimizer is not None
        used = len(self.optimizer.history.val_loss)  # record points so far: restored from checkpoints
        # the global RNG is left as it was: starting a DataLoader iterator draws a seed from it, and the
        # training's dropout and shuffling must not depend on when validation batches were drawn
        with torch.random.fork_rng(devices=[]):
            if self._iterator is None or self._drawn != used:
                self._iterator, self._drawn = iter(self.val_dataloader), 0
                size = len(self.val_dataloader) if hasattr(self.val_dataloader, "__len__") else None
                for _ in range(used % size if size else used):
                    next(self._iterator)
                self._drawn = used
            try:
                batch = next(self._iterator)
            except StopIteration:
                self._iterator = iter(self.val_dataloader)
                batch = next(self._iterator)
        self._drawn += 1
        return batch

    def val_closure(self) -> Tensor:
        """The validation loss on the next held-out batch (what the optimizer calls at record points)."""
        trainer = self.trainer
        assert trainer is not None
        model = trainer.model
        batch = _to_device(self._next_val_batch(), trainer.args.device)
        was = model.training
        if self.eval_mode:
            model.eval()
        try:
            with trainer.autocast_smart_context_manager():
                loss = self.val_loss(model, batch)
        finally:
            model.train(was)
        return loss.float() if loss.is_floating_point() else loss

    # -- logging -----------------------------------------------------------------------------
    def _listen(self, record: Record) -> None:
        scalars = record.scalars
        if record.kind == "step":  # the Trainer logs the training loss; keep only skipped/diverged flags
            scalars = {k: v for k, v in scalars.items() if k != "train/loss"}
        self._pending.update({f"glocal/{tag}": value for tag, value in scalars.items()})
        self._urgent = self._urgent or (record.kind != "val" and bool(scalars))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self._urgent:  # validation losses alone wait for the Trainer's next log (the latest is kept)
            control.should_log = True
        return control

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
               **kwargs: Any) -> None:
        if not self._pending or logs is None or "loss" not in logs:  # training logs only (not evaluation's)
            return
        logs.update(self._pending)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(self._pending)
        self._pending, self._urgent = {}, False
