"""``Tuner``: the online loop around a model, for users who hand glocal the whole training step.

``tuner.step(train_batch, val_batch)`` trains the model in place (the engine computes the loss and
its gradient) and updates phi at window ends (``glocal.loop.OnlineLoop``). Users who keep their own
training step use the drop-in optimizers instead (``glocal.GlocalSGD`` / ``GlocalAdamW``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .hypergrad.engine import Validation
from .hypergrad.factory import make_engine
from .hypergrad.functional import Batch, LossFn
from .hypergrad.tangents import Reducer
from .loop import History, OnlineLoop, check_strategy
from .optim.base import InnerOptimizer
from .space import HyperSpace
from .strategies.base import Strategy

__all__ = ["History", "Tuner"]


class Tuner(OnlineLoop):
    """Tunes ``space`` while training ``model`` in the user's own loop.

    ``tuner.step(train_batch, val_batch)`` once per batch trains the model in place (evaluate it
    as usual), records local hypergradients and, at each window's end, writes the strategy's
    hypergradient into ``space.raw.grad`` and steps ``hyper_optimizer`` (any ``torch.optim``
    optimizer over ``[space.raw]``; default: SGD with lr 0.1). ``val_batch`` may be omitted when
    ``val`` (a fixed batch or a callable returning one) was given here.

    Training steps run the model in train mode and validation in eval mode (BatchNorm statistics,
    dropout), whatever mode the model was left in; the mode is restored after each call.

    Failures never corrupt the model or phi: a step whose loss or new parameters are not finite is
    not applied, and a training loss above ``divergence_factor`` times the previous window's mean
    counts as divergence; either undoes the last phi update and restores the model and inner
    optimizer state saved when it was made (counted in ``skipped_steps``, ``divergences`` and
    ``reverted_updates``). ``compile=True`` runs the forward-mode step through ``torch.compile``
    (SGD/AdamW, models without buffers; speed in docs/benchmarks.md). ``reducer``: the all-reduce
    hook for data-parallel training (None: one process).
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
        clip_norm: float | None = 1.0,
        compile: bool = False,
        divergence_factor: float | None = 100.0,
        reducer: Reducer | None = None,
    ) -> None:
        check_strategy(strategy)
        engine = make_engine(strategy.mode, model, optimizer, space, train_loss, val_loss, compile=compile,
                             reducer=reducer)
        super().__init__(engine, space, strategy, hyper_optimizer, clip_norm=clip_norm,
                         divergence_factor=divergence_factor)
        self.model = model
        self.val = val

    def step(self, train_batch: Batch, val_batch: Validation | None = None) -> dict[str, Any]:
        """Train on one batch; at record points and window ends also validate and update phi."""
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

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.load_loop_state_dict(state)
        torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
