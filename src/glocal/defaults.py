"""The default tuning settings, in one place: Glocal, Local, Tuner, the experiment runner and the CLI use them.

They were chosen on the benchmark suite (docs/benchmarks.md, "No-regret suite"). The outer step is
:class:`glocal.hyperopt.RelativeSGD` (per-coordinate steps in units of each coordinate's running
local-hypergradient RMS, with a per-window trust region), so no joint norm clip is needed; its
per-coordinate rates adapt (iRprop-), so a direction that holds travels further, and short windows
give a short run enough updates to move its hyperparameters.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

#: steps per window (the hyperparameters are updated at each window's end)
WINDOW = 20
#: Glocal records h every ``window // RECORD_POINTS`` steps (four points per window, every 5 steps)
RECORD_POINTS = 4
#: the hyper-optimizer: "relative" (RelativeSGD), "sgd" or "adam" (torch.optim over space.raw)
HYPER_OPTIMIZER = "relative"
#: its learning rate: RelativeSGD moves each raw coordinate by about this per window (local units)
HYPER_LR = 0.1
#: RelativeSGD's per-coordinate trust region on raw phi per window
MAX_STEP = 0.3
#: RelativeSGD's per-coordinate rate adaptation (grow while the sign holds, shrink on a flip; iRprop-),
#: up to RelativeSGD's default max_rate (twice its lr)
HYPER_ETAS: tuple[float, float] | None = (1.2, 0.5)
#: RelativeSGD's decay of the running mean square of the local hypergradients (per window)
RMS_BETA = 0.9
#: Global: outer steps (each one a whole training run; the final model is one more run)
OUTER_STEPS = 4
#: joint hypergradient norm clip applied by the Tuner before the hyper-optimizer (None: no clip)
CLIP_NORM: float | None = None
#: Glocal: options of ``glocal.koopman.extrapolate``
KOOPMAN: dict[str, Any] = {"model": "affine", "fallback": "weighted"}
#: Glocal: the trajectory starts at the run's start in forward mode (tangents carried across windows:
#: the realised hypergradient since then, extrapolated); reverse mode resets it at each window
ANCHOR = "run"
#: ... and starts a new trajectory every this many windows (None: never)
REANCHOR_EVERY: int | None = 10
#: Glocal: the Koopman fit uses at most the last this many recorded rows (the last 1000 steps at the default spacing)
FIT_ROWS = 200
#: Glocal: what the estimate of an untrusted fit becomes (held-out blend weight below TRUST_WEIGHT):
#: "last" (the last recorded row, the realised hypergradient since the anchor) or "guard" (below)
UNTRUSTED = "last"
#: Glocal, untrusted="guard": each coordinate of the estimate must agree in sign with the last row
#: (else that row is used) and be at most this many times as large ...
MAX_RATIO = 3.0
#: ... a coordinate that disagrees in sign becomes the local value ("local") or zero ("zero")
DISAGREE = "local"
#: A fit is trusted when its held-out error is 10x below the last value's (blend weight
#: w = e_last^2 / (e_model^2 + e_last^2) >= 0.99, as on smooth full-batch dynamics): its estimate is
#: then followed as is, sign changes included (the short-horizon bias glocal removes)
TRUST_WEIGHT = 0.99


def hyper_optimizer(raw: Tensor, name: str = HYPER_OPTIMIZER, lr: float = HYPER_LR,
                    max_step: float = MAX_STEP, etas: tuple[float, float] | None = HYPER_ETAS,
                    max_rate: float | None = None) -> torch.optim.Optimizer:
    """The default hyper-optimizer over ``raw`` (``space.raw``), or the named torch one with ``lr``."""
    from .hyperopt import RelativeSGD

    if name == "relative":
        return RelativeSGD([raw], lr=lr, beta=RMS_BETA, max_step=max_step, etas=etas, max_rate=max_rate)
    if name == "sgd":
        return torch.optim.SGD([raw], lr=lr)
    if name == "adam":
        return torch.optim.Adam([raw], lr=lr)
    raise ValueError(f"hyper_optimizer={name!r}: expected 'relative', 'sgd' or 'adam'")
