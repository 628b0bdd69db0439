"""PyTorch Lightning: tune the optimizer online inside ``Trainer.fit`` (``pip install "glocal[lightning]"``).

The LightningModule returns a drop-in optimizer; the callback does the rest::

    class Net(L.LightningModule):
        def configure_optimizers(self):
            return glocal.GlocalSGD(self.parameters(), lr=0.01, momentum=0.9, tune=("lr",),
                                    strategy="glocal", window=50, total_steps=self.trainer.max_steps)

    L.Trainer(max_steps=1000, callbacks=[GlocalCallback()]).fit(Net(), train_loader, val_loader)

What the callback does, and why this way:

* **The validation closure.** Every glocal optimizer of the trainer gets ``val_closure``: the loss
  on ``val_batch`` (a fixed held-out batch) or, by default, on the batches of the trainer's
  validation dataloader in turn (cycled, one batch per record point). The loss is
  ``val_loss(module, batch)``, by default ``module.validation_step(batch, 0)`` (a tensor or a dict
  with ``"loss"``), run in eval mode, under the trainer's precision context, with the module's
  ``self.log`` muted (it would otherwise log the closure's values as the user's validation metrics).
* **The backward keeps its graph.** Under automatic optimization Lightning calls
  ``optimizer.step(closure)``, and the closure runs ``training_step`` and ``module.backward(loss)``;
  the drop-in's ``step`` runs that closure, so the gradient and its graph exist when the tangents
  are propagated. For the duration of ``fit`` the callback gives the module a ``backward`` that adds
  ``create_graph=True`` (Lightning calls ``module.backward`` for manual optimization's
  ``manual_backward`` too). A module that overrides ``backward`` itself is left alone and must pass
  ``create_graph=True`` (the optimizer's error says so otherwise). Automatic optimization is kept:
  the training loop, gradient accumulation, schedulers and checkpointing stay Lightning's.
* **Logging.** Each glocal record (``glocal.records``) except the plain per-step training loss
  (the module logs that itself) goes to every logger of the trainer under ``glocal/``: window
  hyperparameters, local and used hypergradients, estimator diagnostics and fallbacks, the
  closure's validation loss at record points, reverts; at the record's step (the optimizer's step
  count, equal to ``trainer.global_step``). The tuned lr is also in ``param_groups``, so
  ``LearningRateMonitor`` shows it.
* **Checkpoints.** The drop-in's ``state_dict`` holds the whole tuning state (tangents, window
  buffer, hyperparameters, hyper-optimizer, history); Lightning saves and restores it with the
  optimizer. The callback's own state (its position in the validation loader) is saved as
  callback state, so a resumed run continues exactly.
* **Precision.** ``"32-true"``, ``"64-true"`` and ``"bf16-mixed"`` (the forward in bfloat16 under
  autocast; gradients, tangents and hypergradients in the parameters' float32) are supported;
  float16 is refused (``glocal.amp.FLOAT16_REFUSED``), and so are ``"bf16-true"`` / ``"16-true"``
  (the tangents would be in half precision).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from ..amp import FLOAT16_REFUSED
from ..records import Record
from ..torch_optim import GlocalAdamW, GlocalSGD

try:
    import lightning.pytorch as pl
    from lightning.pytorch.utilities import move_data_to_device
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("glocal.integrations.lightning needs the lightning package: pip install \"glocal[lightning]\""
                      ) from error

__all__ = ["GlocalCallback"]

#: Trainer precisions the callback accepts
SUPPORTED_PRECISION = ("32-true", "64-true", "bf16-mixed")

ValLoss = Callable[["pl.LightningModule", Any], Tensor]


def validation_step_loss(module: pl.LightningModule, batch: Any) -> Tensor:
    """``module.validation_step(batch, 0)`` as a loss tensor (its return value, or its ``"loss"``)."""
    out = module.validation_step(batch, 0)
    if isinstance(out, dict):
        out = out.get("loss")
    if not isinstance(out, Tensor):
        raise TypeError("GlocalCallback: validation_step returned no loss tensor; return the loss from it "
                        "(or a dict with 'loss'), or pass val_loss=lambda module, batch: ... to GlocalCallback")
    return out


@contextmanager
def _muted_logging(module: pl.LightningModule) -> Iterator[None]:
    """``module.log`` / ``log_dict`` as no-ops (instance attributes, removed afterwards)."""
    module.__dict__["log"] = lambda *args, **kwargs: None
    module.__dict__["log_dict"] = lambda *args, **kwargs: None
    try:
        yield
    finally:
        module.__dict__.pop("log", None)
        module.__dict__.pop("log_dict", None)


class GlocalCallback(pl.Callback):
    """Connects the glocal drop-in optimizers of a LightningModule to the Trainer (module docstring).

    ``val_batch``: a fixed held-out batch for the validation closure (default: the trainer's
    validation dataloader, batch after batch). ``val_loss(module, batch)``: the validation loss
    (default: ``validation_step``'s returned loss). ``eval_mode``: run the closure in eval mode.
    ``log``: send the records to the trainer's loggers.
    """

    def __init__(self, val_batch: Any = None, *, val_loss: ValLoss | None = None, eval_mode: bool = True,
                 log: bool = True) -> None:
        if val_loss is not None and not callable(val_loss):
            raise TypeError(f"val_loss: expected a callable (module, batch) -> loss tensor, got {type(val_loss)}")
        self.val_batch = val_batch
        self.val_loss: ValLoss = val_loss or validation_step_loss
        self.eval_mode = eval_mode
        self.log = log
        #: validation batches drawn from the dataloader so far (saved in checkpoints)
        self.val_batches_used = 0
        self._iterator: Iterator[Any] | None = None
        self._trainer: pl.Trainer | None = None
        self._module: pl.LightningModule | None = None
        self._optimizers: list[GlocalSGD | GlocalAdamW] = []

    # -- fit ---------------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        precision = str(trainer.precision)
        if precision.startswith("16"):
            raise ValueError(f"GlocalCallback: Trainer(precision={precision!r}): {FLOAT16_REFUSED} "
                             "(Trainer(precision='bf16-mixed'))")
        if precision not in SUPPORTED_PRECISION:
            raise ValueError(f"GlocalCallback: Trainer(precision={precision!r}) is not supported; expected one of "
                             f"{', '.join(SUPPORTED_PRECISION)} (tangents and hypergradients need float32 or more)")
        self._trainer, self._module = trainer, pl_module
        self._optimizers = [opt for opt in trainer.optimizers if isinstance(opt, GlocalSGD | GlocalAdamW)]
        if not self._optimizers:
            raise TypeError("GlocalCallback: configure_optimizers returned no glocal optimizer; return "
                            "glocal.GlocalSGD or glocal.GlocalAdamW")
        for index, opt in enumerate(self._optimizers):
            if opt.val_closure is None:
                opt.val_closure = self.val_closure
            if self.log:
                prefix = "glocal/" if len(self._optimizers) == 1 else f"glocal/opt{index}/"
                opt.listeners.append(self._logger_listener(prefix))
        if type(pl_module).backward is pl.LightningModule.backward:  # not overridden by the user
            original = pl_module.backward

            def backward(loss: Tensor, *args: Any, **kwargs: Any) -> None:
                kwargs.setdefault("create_graph", True)
                original(loss, *args, **kwargs)

            pl_module.__dict__["backward"] = backward

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._detach(pl_module)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._detach(pl_module)

    def _detach(self, pl_module: pl.LightningModule) -> None:
        pl_module.__dict__.pop("backward", None)
        for opt in self._optimizers:
            if opt.val_closure == self.val_closure:
                opt.val_closure = None
            opt.listeners[:] = [f for f in opt.listeners if getattr(f, "__self__", None) is not self
                                and getattr(f, "glocal_callback", None) is not self]
        self._optimizers = []
        self._iterator = None

    # -- the validation closure --------------------------------------------------------------
    def _next_val_batch(self) -> Any:
        if self.val_batch is not None:
            return self.val_batch
        assert self._trainer is not None
        # the global RNG is left as it was: starting a DataLoader iterator draws a seed from it, and the
        # training's dropout and shuffling must not depend on when validation batches were drawn
        with torch.random.fork_rng(devices=[]):
            if self._iterator is None:
                loader = self._val_loader()
                skip = self.val_batches_used % max(1, len(loader)) if hasattr(loader, "__len__") else 0
                self._iterator = iter(loader)
                for _ in range(skip):
                    next(self._iterator)
            try:
                batch = next(self._iterator)
            except StopIteration:
                self._iterator = iter(self._val_loader())
                batch = next(self._iterator)
        self.val_batches_used += 1
        return batch

    def _val_loader(self) -> Any:
        trainer = self._trainer
        assert trainer is not None
        loader = trainer.val_dataloaders
        if loader is None:  # not set up yet (no sanity check ran): ask the data source as Lightning would
            source = trainer.datamodule if trainer.datamodule is not None else self._module
            try:
                loader = source.val_dataloader() if source is not None else None
            except Exception:  # e.g. not implemented: the loaders were given to fit(), validation is off
                loader = None
        if isinstance(loader, list | tuple):
            loader = loader[0] if loader else None
        if loader is None:
            raise ValueError("GlocalCallback: no validation dataloader is set up (none given, or Lightning's "
                             "validation is off, e.g. limit_val_batches=0); pass GlocalCallback(val_batch=...)")
        return loader

    def val_closure(self) -> Tensor:
        """The validation loss on the next held-out batch (what the optimizers call at record points)."""
        trainer, module = self._trainer, self._module
        assert trainer is not None and module is not None
        batch = move_data_to_device(self._next_val_batch(), module.device)
        was = module.training
        if self.eval_mode:
            module.eval()
        try:
            with trainer.precision_plugin.forward_context(), _muted_logging(module):
                loss = self.val_loss(module, batch)
        finally:
            module.train(was)
        return loss.float() if loss.is_floating_point() else loss

    # -- logging -----------------------------------------------------------------------------
    def _logger_listener(self, prefix: str) -> Callable[[Record], None]:
        def listener(record: Record) -> None:
            trainer = self._trainer
            if trainer is None or not trainer.loggers or not trainer.is_global_zero:
                return
            scalars = record.scalars
            if record.kind == "step":  # the module logs its training loss; only skipped/diverged flags here
                scalars = {k: v for k, v in scalars.items() if k != "train/loss"}
            if not scalars:
                return
            metrics = {prefix + tag: value for tag, value in scalars.items()}
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=record.step)

        listener.glocal_callback = self  # type: ignore[attr-defined]
        return listener

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"val_batches_used": self.val_batches_used}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.val_batches_used = int(state_dict["val_batches_used"])
        self._iterator = None
