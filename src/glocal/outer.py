"""Global: exact hypergradients through the whole run, one outer step per full training run.

A driver above ``Tuner``: every outer step retrains from the same initial parameters with the same
batch order for ``total_steps`` steps with phi held fixed, takes H = d L_val(theta_T)/d phi (one
``Local`` window of ``total_steps`` steps), and updates phi. The final model is one more run with
the final phi. Reliable and expensive: it costs ``outer_steps + 1`` whole runs, which is what the
online strategies are judged against.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from . import defaults
from .hypergrad.engine import Validation
from .hypergrad.functional import Batch, LossFn
from .optim.base import InnerOptimizer
from .space import HyperSpace
from .strategies.base import check_mode, check_positive_int
from .strategies.fixed import Fixed
from .strategies.local import Local
from .tuner import Tuner

__all__ = ["Global", "GlobalResult"]


@dataclass
class GlobalResult:
    """The outer loop's record: phi and the final validation loss of each outer step."""

    outer: list[dict[str, Any]] = field(default_factory=list)
    inner_steps: int = 0
    skipped_updates: int = 0


@dataclass
class Global:
    outer_steps: int = defaults.OUTER_STEPS
    mode: str = "forward"
    name: str = "global"

    def __post_init__(self) -> None:
        check_positive_int("outer_steps", self.outer_steps)
        check_mode(self.mode)

    def run(
        self,
        model: nn.Module,
        optimizer: InnerOptimizer,
        space: HyperSpace,
        train_loss: LossFn,
        val_loss: LossFn,
        batches: Callable[[], Iterator[Batch]],
        total_steps: int,
        val: Validation,
        hyper_optimizer: torch.optim.Optimizer | None = None,
        clip_norm: float | None = defaults.CLIP_NORM,
        on_step: Callable[[int, dict[str, Any]], None] | None = None,
        compile: bool = False,
    ) -> GlobalResult:
        """Tune ``space`` with ``outer_steps`` full runs; leaves ``model`` trained with the final phi.

        ``batches()`` must return a fresh iterator with the same batch order every call.
        """
        check_positive_int("total_steps", total_steps)
        initial = copy.deepcopy(model.state_dict())
        rng = torch.get_rng_state()
        hyper_optimizer = hyper_optimizer or defaults.hyper_optimizer(space.raw)
        result = GlobalResult()
        for outer in range(self.outer_steps + 1):
            final_run = outer == self.outer_steps
            model.load_state_dict(initial)
            torch.set_rng_state(rng)
            strategy = Fixed() if final_run else Local(window=total_steps, mode=self.mode)
            tuner = Tuner(model, optimizer, space, train_loss, val_loss, strategy,
                          None if final_run else hyper_optimizer, val=val, clip_norm=clip_norm,
                          compile=compile)
            before = space.to_dict()
            iterator = batches()
            for _ in range(total_steps):
                record = tuner.step(next(iterator))
                if on_step is not None:
                    on_step(outer, record)
            result.inner_steps += total_steps
            result.skipped_updates += tuner.skipped_updates
            entry: dict[str, Any] = {"outer_step": outer, "hparams_used": before, "final_run": final_run}
            if not final_run:
                window = tuner.history.windows[-1]
                entry.update(val_loss=tuner.history.val_loss[-1], hypergradient=window["local"])
            result.outer.append(entry)
        return result
