"""Drop-in ``torch.optim`` optimizers that tune their own hyperparameters: ``GlocalSGD``, ``GlocalAdamW``.

Used in the user's own loop::

    opt = glocal.GlocalSGD(model.parameters(), lr=0.01, momentum=0.9, tune=("lr",), strategy="glocal",
                           window=100, total_steps=T, val_closure=lambda: F.cross_entropy(model(xv), yv))
    for x, y in loader:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward(create_graph=True)   # the gradient's graph: H . Z
        opt.step()

How it works: the hyperparameters named in ``tune`` live in a ``HyperSpace`` (``opt.space``; one
value per param group), the update is ``glocal.optim.SGD`` / ``AdamW`` (the same as
``torch.optim.SGD`` / ``AdamW``), the tangents and the window logic are those of ``glocal.Tuner``
(``glocal.hypergrad.params_engine.ParamEngine`` + ``glocal.loop.OnlineLoop``): in float64 the
trajectory equals ``Tuner``'s on the same batches.

``param_groups`` are the source of truth between steps: after every step they hold the current
tuned values; a value written into them (by the user or an lr scheduler) is adopted at the next
``step()`` as the new current value and tuning continues from it. So a multiplicative scheduler
(``StepLR``, ``ExponentialLR``, ``MultiStepLR``: "multiply the current lr") composes with tuning by
scaling the tuned lr; a scheduler that sets absolute values (``LambdaLR``, ``OneCycleLR``) overrides
the tuned value at each of its steps.

Forward mode only: reverse mode would need the graph of every step of a window, which a loop that
calls ``zero_grad`` every step does not keep.

Mixed precision: run the forward (and ``val_closure``) under ``torch.autocast(..., dtype=torch.bfloat16)``
as usual; ``step()`` propagates tangents and takes hypergradients with autocast off, in the
parameters' dtype, and calls ``val_closure`` under the autocast it was itself called in. float16
is refused (``glocal.amp``), also through ``torch.amp.GradScaler.step``.

Data-parallel (``torchrun``, see ``glocal.distributed``): with an initialised default process group
every rank's ``.grad`` (and its graph's tangents), the closure's loss, the validation loss and h are
averaged over the ranks before they are used, so every rank applies the same update.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from . import defaults
from .amp import FLOAT16_REFUSED, full_precision, under_autocast
from .distributed import resolve_reducer
from .hypergrad.params_engine import ParamEngine
from .loop import OnlineLoop
from .optim.adamw import AdamW
from .optim.base import InnerOptimizer
from .optim.sgd import SGD
from .records import Listener
from .space import HyperSpace, Log, Logit, Transform
from .strategies import Fixed, Glocal, Local
from .strategies.base import Strategy

__all__ = ["GlocalAdamW", "GlocalSGD"]

STRATEGIES = ("glocal", "local", "fixed")
#: engine state kept in torch.optim's per-parameter state rather than in state_dict()["glocal"]
_IN_PARAM_STATE = ("inner_state", "tangent_params", "tangent_state")


class _GlocalOptimizer(torch.optim.Optimizer):
    """Shared machinery of the drop-in optimizers (subclasses fix the inner optimizer and the names)."""

    #: GradScaler.step then passes itself as ``grad_scaler`` rather than unscaling .grad in place
    _step_supports_amp_scaling = True
    #: tunable name -> its transform (positive: Log, in (0, 1): Logit)
    _TUNABLE: ClassVar[dict[str, type[Transform]]] = {}
    #: per-parameter state names of the inner optimizer, in the order of its state tuple
    _STATE_NAMES: tuple[str, ...] = ()

    def __init__(
        self,
        params: Iterable[Any],
        defaults: dict[str, Any],
        *,
        tune: Iterable[str],
        strategy: str,
        window: int,
        total_steps: int | None,
        val_closure: Callable[[], Tensor] | None,
        record_every: int | None,
        hyper_lr: float,
        hyper_optimizer: Callable[[list[Tensor]], torch.optim.Optimizer] | None,
        clip_norm: float | None,
        divergence_factor: float | None,
        koopman: Mapping[str, Any] | None,
        model: nn.Module | None,
        reducer: Any = "auto",
    ) -> None:
        super().__init__(params, defaults)
        if isinstance(tune, str):
            tune = (tune,)
        self.tuned = tuple(tune)
        unknown = [n for n in self.tuned if n not in self._TUNABLE]
        if unknown:
            raise ValueError(f"tune: unknown hyperparameter(s) {unknown}; {type(self).__name__} can tune "
                             f"{', '.join(self._TUNABLE)}")
        if len(set(self.tuned)) != len(self.tuned):
            raise ValueError(f"tune={self.tuned!r}: a name appears twice")
        self.val_closure = val_closure
        self.strategy = _make_strategy(strategy, window, total_steps, record_every, koopman)
        if self.strategy.window > 0 and not self.tuned:
            raise ValueError(f"tune: name at least one of {', '.join(self._TUNABLE)} for strategy={strategy!r}")
        if val_closure is not None and not callable(val_closure):
            raise TypeError(f"val_closure: expected a callable returning a loss tensor, "
                            f"got {type(val_closure).__name__}")
        trainable, groups = [], []
        for g, group in enumerate(self.param_groups):
            for p in group["params"]:
                if p.requires_grad:  # frozen parameters are skipped (as torch.optim skips them: no .grad)
                    trainable.append(p)
                    groups.append(g)
        if not trainable:
            raise ValueError("params: no parameter with requires_grad=True")
        if len({(p.dtype, p.device) for p in trainable}) != 1:
            raise ValueError("params: all trainable parameters must share one dtype and device")
        self._trainable, self._group_of = trainable, groups
        self._check_groups()
        n_groups = len(self.param_groups)
        entries: dict[str, Transform] = {}
        for name in self.tuned:
            values = [self._read(group, name) for group in self.param_groups]
            value = values[0] if n_groups == 1 else torch.tensor(values, dtype=torch.float64)
            entries[name] = self._TUNABLE[name](value)
        self.space = HyperSpace(dtype=trainable[0].dtype, device=trainable[0].device, **entries) if entries else None
        inner = self._inner(self.param_groups)
        space = self.space if self.space is not None else HyperSpace(
            dtype=trainable[0].dtype, device=trainable[0].device, _unused=Log(1.0))
        reducer = resolve_reducer(reducer)
        if hasattr(reducer, "sync_start"):  # every rank starts from rank 0's parameters, buffers and phi
            reducer.broadcast_(trainable, "parameters")
            if model is not None:
                reducer.broadcast_(list(model.buffers()), "model buffers")
            reducer.sync_start(None, space.raw)
        self.engine = ParamEngine(trainable, groups, inner, space, {n: n for n in self.tuned},
                                  tuned=self.strategy.window > 0, model=model, reducer=reducer)
        self.loop = OnlineLoop(
            self.engine, space, self.strategy,
            hyper_optimizer([space.raw]) if hyper_optimizer is not None and self.strategy.window > 0 else None,
            clip_norm=clip_norm, divergence_factor=divergence_factor, hyper_lr=hyper_lr)
        self._written: list[dict[str, float]] = []
        self._write_back()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Param groups are fixed at construction (the tangents and the space are sized for them)."""
        if hasattr(self, "engine"):
            raise RuntimeError(f"{type(self).__name__}: add_param_group after construction is not supported; "
                               "pass every group to the constructor")
        super().add_param_group(param_group)

    # -- subclass hooks ---------------------------------------------------------------------
    def _inner(self, groups: list[dict[str, Any]]) -> InnerOptimizer:
        raise NotImplementedError

    def _check_groups(self) -> None:
        """Options that must agree across param groups (e.g. nesterov) raise here."""

    @staticmethod
    def _read(group: dict[str, Any], name: str) -> float:
        return float(group[name])

    @staticmethod
    def _write(group: dict[str, Any], name: str, value: float) -> None:
        group[name] = value

    # -- values between param_groups and the space ------------------------------------------
    def _adopt_group_values(self) -> None:
        """Values changed in param_groups since the last step (a scheduler, the user) become current."""
        if self.space is None:
            return
        for g, group in enumerate(self.param_groups):
            for name in self.tuned:
                value = self._read(group, name)
                if value != self._written[g][name]:
                    transform = self._TUNABLE[name](value)
                    checked = transform.check(f"param_groups[{g}][{name!r}]")
                    index = self.space.slice_of(name).start + (g if len(self.param_groups) > 1 else 0)
                    with torch.no_grad():
                        self.space.raw[index] = transform.to_raw(checked).to(self.space.raw)
        self.engine.constants = {name: [self._read(group, name) for group in self.param_groups]
                                 for name in self._TUNABLE if name not in self.tuned}

    def _write_back(self) -> None:
        """The current tuned values into param_groups (so schedulers, loggers and users see them)."""
        if self.space is not None:
            values = self.space.to_dict()
            for g, group in enumerate(self.param_groups):
                for name in self.tuned:
                    v = values[name]
                    self._write(group, name, float(v[g] if isinstance(v, list) else v))
        self._written = [{name: self._read(group, name) for name in self.tuned} for group in self.param_groups]

    def _expose_state(self) -> None:
        """Per-parameter views in ``self.state[p]``: the inner optimizer state and the tangents."""
        engine = self.engine
        n = len(self._trainable)
        tangents = engine.tangents
        for i, p in enumerate(self._trainable):
            entry = self.state[p]
            for j, name in enumerate(self._STATE_NAMES[:len(engine.state) // n]):
                entry[name] = engine.state[j * n + i]
                if tangents is not None:
                    entry[f"{name}_tangent"] = tangents.tangent_state[j * n + i]
            if tangents is not None:
                entry["tangent"] = tangents.tangent_params[i]

    def _collect_state(self) -> dict[str, list[Tensor]]:
        """The engine's state tensors back from ``self.state[p]`` (after ``load_state_dict``)."""
        names = self._STATE_NAMES[:len(self.engine.state) // len(self._trainable)]
        out: dict[str, list[Tensor]] = {"inner_state": [self.state[p][name] for name in names for p in self._trainable]}
        if self.engine.tangents is not None:
            out["tangent_params"] = [self.state[p]["tangent"] for p in self._trainable]
            out["tangent_state"] = [self.state[p][f"{name}_tangent"] for name in names for p in self._trainable]
        return out

    # -- the step ---------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None, *,  # type: ignore[override]
             grad_scaler: Any = None) -> Tensor | None:
        """One training step from the parameters' ``.grad``; at record points and window ends also
        validate (``val_closure``) and update the tuned hyperparameters. ``closure`` (optional, as in
        torch.optim) recomputes the loss and calls ``backward(create_graph=True)``. ``grad_scaler``
        is how ``torch.amp.GradScaler.step`` announces float16 loss scaling: refused."""
        if grad_scaler is not None:
            raise ValueError(f"{type(self).__name__}: torch.amp.GradScaler: {FLOAT16_REFUSED}")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.val_closure is None and self.strategy.window > 0:
            raise ValueError(f"val_closure: required for strategy={self.strategy.name!r} (a callable returning the "
                             "validation loss, e.g. lambda: F.cross_entropy(model(x_val), y_val)); pass it to the "
                             "constructor or set opt.val_closure before the first step (the Lightning and "
                             "transformers integrations set it)")
        self._adopt_group_values()
        device_type = self.engine.device.type
        with full_precision(device_type) as ambient, torch.enable_grad():  # the tangents in full precision
            val = None if self.val_closure is None else under_autocast(self.val_closure, device_type, ambient)
            self.last_record = self.loop.run_step(None if loss is None else float(loss.detach()), val)
        self._write_back()
        self._expose_state()
        return loss

    # -- reading ----------------------------------------------------------------------------
    @property
    def listeners(self) -> list[Listener]:
        """Functions called with a ``glocal.records.Record`` per step, record point and window
        (append a logger, e.g. ``glocal.integrations.tensorboard.TensorBoardListener``)."""
        return self.loop.listeners

    @property
    def history(self):
        """Per step training losses (NaN unless a closure gave them), records and windows (see ``Tuner``)."""
        return self.loop.history

    @property
    def hparams(self) -> dict[str, float | list[float]]:
        """The tuned values (a list, one per param group, when there are several groups)."""
        return {} if self.space is None else self.space.to_dict()

    # -- checkpointing ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """torch.optim's state dict (param_groups with the current values; per-parameter state with the
        inner optimizer state and the tangents) plus ``"glocal"``: the window buffer, phi, the
        hyper-optimizer, the divergence snapshot, counters and history. Loads with weights_only=True."""
        self._expose_state()
        state = super().state_dict()
        extra = self.loop.loop_state_dict()
        for key in _IN_PARAM_STATE:  # stored once, per parameter, in state["state"]
            extra["engine"].pop(key, None)
        state["glocal"] = _plain(extra)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume from ``state_dict()`` output; a state that does not fit raises and changes nothing
        (the loop's part is checked before loading; if a later check fails, the previous state returns)."""
        backup = self.state_dict()
        try:
            self._load(state_dict)
        except BaseException:
            self._load(backup)
            raise

    def _load(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("glocal", None)
        super().load_state_dict(state_dict)
        if extra is not None:
            extra = dict(extra)
            extra["engine"] = {**extra["engine"], **self._collect_state()}
            self.loop.load_loop_state_dict(extra)
        self._expose_state()
        self._written = [{name: self._read(group, name) for name in self.tuned} for group in self.param_groups]


def _plain(value: Any) -> Any:
    """Containers of Python numbers, strings and tensors only (``torch.load(weights_only=True)``)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, Tensor | str | bool | int | float) or value is None:
        return value
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


def _make_strategy(strategy: str, window: int, total_steps: int | None, record_every: int | None,
                   koopman: Mapping[str, Any] | None) -> Strategy:
    if strategy == "fixed":
        return Fixed()
    if strategy == "local":
        return Local(window=window)
    if strategy == "glocal":
        if total_steps is None:
            raise ValueError("total_steps: required for strategy='glocal' (the planned number of training steps)")
        return Glocal(window=window, total_steps=total_steps, record_every=record_every, koopman=dict(koopman or {}))
    raise ValueError(f"strategy={strategy!r}: expected one of {', '.join(repr(s) for s in STRATEGIES)}")


class GlocalSGD(_GlocalOptimizer):
    """``torch.optim.SGD`` (momentum, dampening, Nesterov, L2 weight decay) that tunes ``tune`` online.

    Tunable: ``lr``, ``momentum``, ``weight_decay``, ``dampening`` (a tuned value must start inside
    its range: > 0 for lr and weight_decay, in (0, 1) for momentum and dampening). ``strategy``:
    "glocal" (needs ``total_steps``), "local" or "fixed". ``val_closure``: returns the validation
    loss (with ``model=`` given it runs in eval mode). ``hyper_optimizer``: a factory
    ``lambda params: torch.optim.Adam(params, lr=...)``; default ``glocal.defaults.hyper_optimizer`` with ``hyper_lr``.
    ``reducer``: data-parallel under ``torchrun`` as in ``glocal.Tuner`` ("auto": averaged over the
    ranks of an initialised default process group; each rank computes its gradient on its shard, and
    ``val_closure`` on its shard of the validation set; do not also wrap the model in DDP).
    """

    _TUNABLE: ClassVar[dict[str, type[Transform]]] = {"lr": Log, "momentum": Logit, "weight_decay": Log,
                                                      "dampening": Logit}
    _STATE_NAMES = ("momentum_buffer",)

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        tune: Iterable[str] = ("lr",),
        strategy: str = "glocal",
        window: int = defaults.WINDOW,
        total_steps: int | None = None,
        val_closure: Callable[[], Tensor] | None = None,
        record_every: int | None = None,
        hyper_lr: float = defaults.HYPER_LR,
        hyper_optimizer: Callable[[list[Tensor]], torch.optim.Optimizer] | None = None,
        clip_norm: float | None = defaults.CLIP_NORM,
        divergence_factor: float | None = 100.0,
        koopman: Mapping[str, Any] | None = None,
        model: nn.Module | None = None,
        reducer: Any = "auto",
    ) -> None:
        SGD(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov, dampening=dampening)  # checks
        defaults = {"lr": lr, "momentum": momentum, "dampening": dampening, "weight_decay": weight_decay,
                    "nesterov": nesterov}
        super().__init__(params, defaults, tune=tune, strategy=strategy, window=window, total_steps=total_steps,
                         val_closure=val_closure, record_every=record_every, hyper_lr=hyper_lr,
                         hyper_optimizer=hyper_optimizer, clip_norm=clip_norm, divergence_factor=divergence_factor,
                         koopman=koopman, model=model, reducer=reducer)

    def _check_groups(self) -> None:
        if len({bool(g["nesterov"]) for g in self.param_groups}) != 1:
            raise ValueError("nesterov: must be the same in every param group")

    def _inner(self, groups: list[dict[str, Any]]) -> InnerOptimizer:
        first = groups[0]
        momentum = max(float(g["momentum"]) for g in groups)  # any group with momentum: buffers for all
        return SGD(lr=first["lr"], momentum=momentum, weight_decay=first["weight_decay"],
                   nesterov=first["nesterov"], dampening=first["dampening"])


class GlocalAdamW(_GlocalOptimizer):
    """``torch.optim.AdamW`` that tunes ``tune`` online (see ``GlocalSGD`` for the options).

    Tunable: ``lr``, ``weight_decay``, ``eps`` (> 0) and ``beta1``, ``beta2`` (in (0, 1); the two
    entries of ``param_groups[i]["betas"]``).
    """

    _TUNABLE: ClassVar[dict[str, type[Transform]]] = {"lr": Log, "weight_decay": Log, "beta1": Logit,
                                                      "beta2": Logit, "eps": Log}
    _STATE_NAMES = ("exp_avg", "exp_avg_sq")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        tune: Iterable[str] = ("lr",),
        strategy: str = "glocal",
        window: int = defaults.WINDOW,
        total_steps: int | None = None,
        val_closure: Callable[[], Tensor] | None = None,
        record_every: int | None = None,
        hyper_lr: float = defaults.HYPER_LR,
        hyper_optimizer: Callable[[list[Tensor]], torch.optim.Optimizer] | None = None,
        clip_norm: float | None = defaults.CLIP_NORM,
        divergence_factor: float | None = 100.0,
        koopman: Mapping[str, Any] | None = None,
        model: nn.Module | None = None,
        reducer: Any = "auto",
    ) -> None:
        AdamW(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)  # checks the values
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults, tune=tune, strategy=strategy, window=window, total_steps=total_steps,
                         val_closure=val_closure, record_every=record_every, hyper_lr=hyper_lr,
                         hyper_optimizer=hyper_optimizer, clip_norm=clip_norm, divergence_factor=divergence_factor,
                         koopman=koopman, model=model, reducer=reducer)

    @staticmethod
    def _read(group: dict[str, Any], name: str) -> float:
        if name in ("beta1", "beta2"):
            return float(group["betas"][0 if name == "beta1" else 1])
        return float(group[name])

    @staticmethod
    def _write(group: dict[str, Any], name: str, value: float) -> None:
        if name in ("beta1", "beta2"):
            b1, b2 = group["betas"]
            group["betas"] = (value, b2) if name == "beta1" else (b1, value)
        else:
            group[name] = value

    def _inner(self, groups: list[dict[str, Any]]) -> InnerOptimizer:
        first = groups[0]
        return AdamW(lr=first["lr"], betas=first["betas"], eps=first["eps"], weight_decay=first["weight_decay"])

