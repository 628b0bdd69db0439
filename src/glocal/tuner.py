"""``Tuner``: the online loop around a model, for users who hand glocal the whole training step.

``tuner.step(train_batch, val_batch)`` trains the model in place (the engine computes the loss and
its gradient) and updates phi at window ends (``glocal.loop.OnlineLoop``). Users who keep their own
training step use the drop-in optimizers instead (``glocal.GlocalSGD`` / ``GlocalAdamW``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from . import defaults
from .amp import model_autocast
from .distributed import resolve_reducer
from .hypergrad.engine import Validation
from .hypergrad.factory import make_engine
from .hypergrad.functional import Batch, LossFn
from .hypergrad.tangents import Reducer
from .loop import History, OnlineLoop, check_like, check_strategy
from .optim.base import InnerOptimizer
from .records import Listener
from .space import HyperSpace
from .strategies.base import Strategy

__all__ = ["History", "Tuner"]


class Tuner(OnlineLoop):
    """Tunes ``space`` while training ``model`` in the user's own loop.

    ``tuner.step(train_batch, val_batch)`` once per batch trains the model in place (evaluate it
    as usual), records local hypergradients and, at each window's end, writes the strategy's
    hypergradient into ``space.raw.grad`` and steps ``hyper_optimizer`` (any ``torch.optim``
    optimizer over ``[space.raw]``; default: ``glocal.defaults.hyper_optimizer``, a
    ``glocal.RelativeSGD`` that is also given each window's local hypergradient through its
    ``set_reference``). ``val_batch`` may be omitted when
    ``val`` (a fixed batch or a callable returning one) was given here.

    Training steps run the model in train mode and validation in eval mode (BatchNorm statistics,
    dropout), whatever mode the model was left in; the mode is restored after each call.

    Failures never corrupt the model or phi: a step whose loss or new parameters are not finite is
    not applied, and a training loss above ``divergence_factor`` times the previous window's mean
    counts as divergence; either undoes the last phi update and restores the model and inner
    optimizer state saved when it was made (counted in ``skipped_steps``, ``divergences`` and
    ``reverted_updates``). ``compile=True`` runs the forward-mode step through ``torch.compile``
    (SGD/AdamW, models without buffers; speed in docs/benchmarks.md). ``listeners`` (functions of a
    ``glocal.records.Record``) receive every step's training loss, every record point's validation
    loss and every window's hyperparameters, hypergradients and estimator diagnostics, e.g.
    ``glocal.integrations.tensorboard.TensorBoardListener``.

    Data-parallel (``torchrun``): with ``reducer="auto"`` (the default) and an initialised default
    process group of more than one rank, every rank trains on its own shard of each batch and
    ``glocal.distributed.Reducer`` averages the training gradient and loss, the gradient tangents,
    the validation loss and h; parameters, buffers and phi start from rank 0's and are checked to
    agree at every window's end. ``reducer=None`` trains each process on its own; any callable
    (tensor -> its mean over ranks) may be given instead.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: InnerOptimizer,
        space: HyperSpace,
        train_loss: LossFn,
        val_loss: LossFn,
        strategy: Strategy,
        hyper_optimizer: torch.optim.Optimizer | None = None,
        *,
        val: Validation | None = None,
        clip_norm: float | None = defaults.CLIP_NORM,
        compile: bool = False,
        divergence_factor: float | None = 100.0,
        reducer: Reducer | str | None = "auto",
        listeners: Sequence[Listener] = (),
    ) -> None:
        check_strategy(strategy)
        reducer = resolve_reducer(reducer)
        sync = getattr(reducer, "sync_start", None)
        if sync is not None:
            sync(model, space.raw)
        engine = make_engine(strategy.mode, model, optimizer, space, train_loss, val_loss, compile=compile,
                             reducer=reducer)
        super().__init__(engine, space, strategy, hyper_optimizer, clip_norm=clip_norm,
                         divergence_factor=divergence_factor, listeners=listeners)
        self.model = model
        self.val = val

    def _agreement_params(self) -> list[torch.Tensor]:
        return list(self.model.parameters())

    def step(self, train_batch: Batch, val_batch: Validation | None = None) -> dict[str, Any]:
        """Train on one batch; at record points and window ends also validate and update phi.

        Inside ``torch.autocast(..., dtype=torch.bfloat16)`` only the model's forward passes run in
        bfloat16; tangents and hypergradients stay in the parameters' dtype (``glocal.amp``).
        """
        engine: Any = self.engine
        fmodel = getattr(engine, "fmodel", None)
        if fmodel is None:
            return self.run_step(train_batch, val_batch if val_batch is not None else self.val)
        with model_autocast(fmodel, engine.device.type):
            return self.run_step(train_batch, val_batch if val_batch is not None else self.val)

    # -- checkpointing -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: model, inner optimizer state, tangents, window buffer,
        hyperparameters, hyper-optimizer, divergence snapshot, RNG and history (at any step;
        reverse mode: at window ends)."""
        state = self.loop_state_dict()
        state["model"] = copy.deepcopy(self.model.state_dict())
        state["rng"] = torch.get_rng_state()
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def check_state_dict(self, state: Any) -> None:
        """Raise ValueError (naming the entry) unless ``state`` fits this Tuner; changes nothing."""
        self.check_loop_state_dict(state)
        for key in ("model", "rng"):
            if key not in state:
                raise ValueError(f"state: missing {key!r} (not a Tuner.state_dict())")
        own = self.model.state_dict()
        given = state["model"]
        if not isinstance(given, dict) or set(given) != set(own):
            extra = sorted(set(given) - set(own)) if isinstance(given, dict) else []
            missing = sorted(set(own) - set(given)) if isinstance(given, dict) else []
            raise ValueError(f"state['model']: not this model's state_dict (missing {missing[:3]}, "
                             f"unexpected {extra[:3]})")
        check_like(own, given, "state['model']")
        rng = state["rng"]
        if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8 or rng.shape != torch.get_rng_state().shape:
            raise ValueError("state['rng']: expected torch.get_rng_state() output")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from ``state_dict()`` output: everything is checked first, so a bad state (another
        model, another space, a corrupted entry) raises ValueError and changes nothing."""
        self.check_state_dict(state)
        self.model.load_state_dict(state["model"])
        self.load_loop_state_dict(state)
        torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
