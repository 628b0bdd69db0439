"""Outer Optuna search over the *initial* hyperparameters, each trial one online-tuned run.

Gradient-based tuning follows one path and settles in the basin it starts in;
black-box search finds basins but pays a whole run per trial. ``run_search`` combines them: Optuna's
TPE (seeded) samples initial values of the task's hyperparameters (log-uniform a factor ``spread``
each way around the task's defaults for positive ones, the logit likewise for ones in (0, 1), and
optionally the tuner's hyper learning rate), every trial is one training run tuned online by
``inner`` ("glocal" or "local"), or untuned ("fixed": the plain TPE baseline). Validation losses
are reported at window ends (every T/10 steps for fixed) so that a pruner stops hopeless trials,
and the study lives in an Optuna storage so that it persists, resumes, and can be shared by
several workers (an embedded SQLite file, or any RDB URL).

Cost is counted in *units of one plain training run* (inner steps / T): a pruned trial counts for
the steps it ran. Trials start only while the study's committed cost (finished trials plus one
unit per running trial) is below ``budget_runs``, so the budget is never exceeded by more than one
trial. A wall-time budget (``budget_seconds``) counts the trials' wall seconds instead (finished
trials plus the time running ones have taken so far; with several workers, worker-seconds): no trial
starts once it is spent, and a running trial is stopped at its next report when it runs out (an
online-tuned trial costs one unit but several times a fixed one's wall time). Trial ``n`` samples
with a TPE seeded from (seed, n) and trains with the task seed ``seed``,
so a study is reproducible from its seed; a trial interrupted (Ctrl-C, or a killed worker whose
heartbeat went stale) is re-queued with the same parameters and costs nothing against the budget.
"""

from __future__ import annotations

import math
import os
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import experiment, parallel, report
from .atomic import write_text
from .experiment import Settings
from .redact import redact

if TYPE_CHECKING:  # optuna is an optional dependency (the ``search`` extra)
    import optuna

INNER = ("fixed", "local", "glocal")
PRUNERS = ("median", "halving", "none")
#: reports per fixed run (online runs report at every window end)
FIXED_REPORTS = 10
#: seconds between heartbeats of a running trial in an RDB storage; stale after twice that
HEARTBEAT = 30

__all__ = ["INNER", "PRUNERS", "Dimension", "SearchError", "SearchResult", "best_within", "run_search", "search_space"]


class SearchError(ValueError):
    """A user-facing problem (bad storage URL, a study stored with another configuration)."""


def _optuna() -> Any:
    try:
        import optuna
    except ImportError as error:  # pragma: no cover - optuna is in the dev extra
        raise ImportError("glocal_bench.search needs optuna: pip install 'glocal[search]'") from error
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


# -- the search space ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Dimension:
    """One searched number: ``param`` in Optuna, ``target`` a hyperparameter name or "hyper_lr".

    ``kind`` "log": sampled log-uniformly in [low, high], the value itself. "logit": the logit is
    sampled uniformly in [low, high] and the value is its sigmoid.
    """

    param: str
    target: str
    kind: str
    low: float
    high: float
    #: the Optuna parameter of the initial value the range was built around
    centre: float

    def suggest(self, trial: optuna.Trial) -> float:
        """Sample from ``trial`` and return the constrained value."""
        if self.kind == "log":
            return float(trial.suggest_float(self.param, self.low, self.high, log=True))
        return 1.0 / (1.0 + math.exp(-trial.suggest_float(self.param, self.low, self.high)))


def search_space(task: str, settings: Settings | None = None, spread: float = 30.0, tune_hyper_lr: bool = False,
                 inner: str = "glocal") -> list[Dimension]:
    """The dimensions searched on ``task``: its scalar hyperparameters around their initial values.

    Log hyperparameters range over [v / spread, v * spread], logit ones over logit(v) +- log(spread),
    both cut to the hyperparameter's bounds;
    other and vector hyperparameters keep their initial values. ``tune_hyper_lr`` adds the tuner's
    hyper learning rate (log-uniform a factor 10 each way; online inner strategies only).
    """
    if not (spread > 1 and math.isfinite(spread)):
        raise SearchError(f"spread={spread}: expected a finite number > 1")
    settings = settings or Settings()
    built = experiment.build_task(task, 0, settings)
    dims = []
    width = math.log(spread)
    for name, value in built.space.to_dict().items():
        if not isinstance(value, float):
            continue
        kind = built.space.transform_of(name).kind
        low, high = built.space.bounds_of(name)  # never sample outside the hyperparameter's bounds
        if kind == "log":
            dims.append(Dimension(name, name, "log", max(value / spread, low), min(value * spread, high), value))
        elif kind == "logit":
            logit = math.log(value / (1 - value))
            lo = logit - width if low <= 0 else max(logit - width, math.log(low / (1 - low)))
            hi = logit + width if high >= 1 else min(logit + width, math.log(high / (1 - high)))
            dims.append(Dimension(f"logit_{name}", name, "logit", lo, hi, logit))
    if tune_hyper_lr and inner != "fixed":
        dims.append(Dimension("hyper_lr", "hyper_lr", "log", settings.hyper_lr / 10, settings.hyper_lr * 10,
                              settings.hyper_lr))
    if not dims:
        raise SearchError(f"task {task!r} has no scalar log/logit hyperparameter to search")
    return dims


# -- sampling: TPE reseeded per trial ---------------------------------------------------------------
def _trial_seed(seed: int, index: int) -> int:
    import numpy as np

    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, index]).generate_state(1)[0])


def _seeded_sampler(seed: int, startup_trials: int, first: dict[str, float] | None = None) -> Any:
    """A sampler that draws trial ``n`` with a fresh TPE seeded from (seed, n); trial 0 is ``first``.

    ``n`` counts the study's trials before this one that did not fail, so a re-queued interrupted
    trial does not shift the seeds of the trials after it, and concurrent workers (distinct trial
    numbers) never draw with the same seed. ``first`` (Optuna parameters, e.g. the centre of the
    space = the task's defaults) is what trial 0 gets instead of a draw.
    """
    optuna = _optuna()
    from optuna.trial import TrialState

    class PerTrialTPE(optuna.samplers.BaseSampler):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            self._samplers: dict[int, tuple[int, Any]] = {}

        def _for(self, study: Any, trial: Any) -> tuple[int, Any]:
            if trial.number not in self._samplers:
                failed = sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                             if t.number < trial.number)
                index = trial.number - failed
                self._samplers[trial.number] = (index, optuna.samplers.TPESampler(
                    seed=_trial_seed(seed, index), n_startup_trials=startup_trials, multivariate=True))
            return self._samplers[trial.number]

        def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
            return self._for(study, trial)[1].infer_relative_search_space(study, trial)

        def sample_relative(self, study: Any, trial: Any, search_space: Any) -> Any:
            index, tpe = self._for(study, trial)
            if index == 0 and first:
                return {k: first[k] for k in search_space if k in first}
            return tpe.sample_relative(study, trial, search_space)

        def sample_independent(self, study: Any, trial: Any, name: str, distribution: Any) -> Any:
            index, tpe = self._for(study, trial)
            if index == 0 and first and name in first:
                return first[name]
            return tpe.sample_independent(study, trial, name, distribution)

        def before_trial(self, study: Any, trial: Any) -> None:
            self._for(study, trial)[1].before_trial(study, trial)

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            entry = self._samplers.pop(trial.number, None)
            if entry is not None:
                entry[1].after_trial(study, trial, state, values)

    return PerTrialTPE()


def _pruner(name: str, total: int) -> Any:
    optuna = _optuna()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=total // 5)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, total // 9), reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise SearchError(f"pruner={name!r}: expected one of {', '.join(PRUNERS)}")


# -- storage ------------------------------------------------------------------------------------
def _storage(url: str | None, heartbeat: int | None, on_stale: Callable[[Any, Any], None]) -> Any:
    """An Optuna storage: in memory for None, else an RDB (SQLite waits up to 60 s for locks)."""
    optuna = _optuna()
    if url is None:
        return optuna.storages.InMemoryStorage()
    import sqlalchemy

    shown = _mask(url)
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception:
        raise SearchError(f"storage {shown!r}: not a database URL (e.g. sqlite:///runs/search/study.db)") from None
    target = _postgres_url(url, parsed) if parsed.get_backend_name() == "postgresql" else url
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
        if not parsed.database or parsed.database == ":memory:" or parsed.database.startswith("file::memory:"):
            raise SearchError(f"storage {shown!r}: an in-memory SQLite database cannot hold a persistent study; "
                              "give a file, e.g. sqlite:///runs/search/study.db")
        try:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SearchError(f"storage {shown!r}: cannot create its folder ({error.strerror})") from None
    if heartbeat is not None:
        kwargs.update(heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                      heartbeat_stale_trial_callback=on_stale)
    last: Exception | None = None
    for attempt in range(5):  # concurrent first use of one database may race on creating its tables
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(target, **kwargs)
        except (ImportError, sqlalchemy.exc.ArgumentError) as error:
            raise SearchError(f"storage {shown!r}: {_first_line(error)}") from None
        except sqlalchemy.exc.SQLAlchemyError as error:  # locked, or another worker created the tables first
            last = error
            time.sleep(0.5 * (attempt + 1))
        except Exception as error:  # e.g. a database of another application: optuna's schema checks
            raise SearchError(f"storage {shown!r}: not an Optuna study database ({_first_line(error)})") from None
    raise SearchError(f"storage {shown!r}: {_first_line(last)}")


def _is_storage_error(error: BaseException) -> bool:
    import sqlalchemy

    optuna = _optuna()
    return isinstance(error, sqlalchemy.exc.SQLAlchemyError | optuna.exceptions.StorageInternalError)


def _first_line(error: BaseException | None) -> str:
    """The first line of an error message, credentials masked (database errors may quote the URL)."""
    text = str(error).strip().splitlines()
    return redact(text[0] if text else type(error).__name__)


def _postgres_url(url: str, parsed: Any) -> str:
    """``url`` with a PostgreSQL driver that is installed.

    A bare ``postgresql://`` means SQLAlchemy's default driver, which is psycopg 3 since SQLAlchemy 2.1
    and psycopg2 before; the ``postgres`` extra installs psycopg2 (``psycopg2-binary``), so a bare URL
    uses psycopg 3 where it is installed and psycopg2 otherwise. An explicit driver is kept as given.
    """
    import importlib.util

    if "+" in parsed.drivername:
        return url
    if importlib.util.find_spec("psycopg") is not None:
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    if importlib.util.find_spec("psycopg2") is not None:
        return parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    raise SearchError(f"storage {_mask(url)!r}: no PostgreSQL driver is installed; "
                      "install one with: pip install 'glocal[postgres]'")


def _mask(url: str | None) -> str:
    """The storage URL as it may be printed or stored: its password replaced by ``***``."""
    return "in-memory" if url is None else redact(url)


# -- results ------------------------------------------------------------------------------------
@dataclass
class SearchResult:
    """A finished (or budget-capped) study: its trials in number order and the best trial's record.

    ``trials``: one dict per trial (number, state, params, init, value, units, steps, wall_seconds,
    test_loss, reason, retry_of). ``best``: the best complete trial's full result record (as from
    ``experiment.run``) or None. ``record()`` is the results.json record of the whole search.
    """

    task: str
    inner: str
    seed: int
    study_name: str
    storage: str
    budget_runs: float
    pruner: str
    dimensions: list[Dimension]
    trials: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    #: the wall-time budget in seconds, if one was given
    budget_seconds: float | None = None

    @property
    def spent_runs(self) -> float:
        """Cost of all finished trials in plain-run units (pruned ones for the steps they ran)."""
        return sum(t["units"] for t in self.trials if t["state"] in ("COMPLETE", "PRUNED"))

    @property
    def interrupted_runs(self) -> float:
        """Work lost to interrupted trials (re-queued, not counted against the budget)."""
        return sum(t["units"] for t in self.trials if t["state"] == "FAIL" and t.get("reason") == "interrupted")

    def frontier(self) -> list[dict[str, float]]:
        """Cumulative cost (units, wall seconds) and best final validation loss after each trial."""
        return frontier_of(self.trials)

    def summary(self) -> dict[str, Any]:
        """The study summary stored with the record."""
        states = [t["state"] for t in self.trials]
        best_trial = min((t for t in self.trials if t["state"] == "COMPLETE" and _finite(t["value"])),
                         key=lambda t: t["value"], default=None)
        return {
            "study_name": self.study_name, "storage": self.storage, "inner": self.inner, "pruner": self.pruner,
            "budget_runs": self.budget_runs, "spent_runs": self.spent_runs,
            "budget_seconds": self.budget_seconds,
            "spent_seconds": sum(t["wall_seconds"] for t in self.trials if t["state"] in ("COMPLETE", "PRUNED")),
            "interrupted_runs": self.interrupted_runs,
            "n_trials": len(self.trials), "n_complete": states.count("COMPLETE"),
            "n_pruned": states.count("PRUNED"), "n_failed": states.count("FAIL"),
            "best_trial": None if best_trial is None else best_trial["number"],
            "best_params": None if best_trial is None else best_trial["init"],
            "dimensions": [asdict(d) for d in self.dimensions],
            "trials": self.trials, "frontier": self.frontier(),
        }

    def record(self) -> dict[str, Any]:
        """The best trial's record renamed ``search-<inner>``, with the study's total cost and summary.

        ``inner_steps`` and ``wall_seconds`` are the whole study's (all trials, pruned included);
        the best trial's own are ``trial_inner_steps`` and ``trial_wall_seconds``.
        """
        base = dict(self.best) if self.best is not None else {
            "task": self.task, "final_val_loss": math.nan, "test_loss": math.nan, "hparams": {},
            "skipped_updates": 0, "fallbacks": 0, "inner_steps": 0, "wall_seconds": 0.0}
        finished = [t for t in self.trials if t["state"] in ("COMPLETE", "PRUNED")]
        base.update(strategy=f"search-{self.inner}", seed=self.seed,
                    trial_inner_steps=base.get("inner_steps", 0), trial_wall_seconds=base.get("wall_seconds", 0.0),
                    inner_steps=sum(t["steps"] for t in finished),
                    wall_seconds=sum(t["wall_seconds"] for t in finished),
                    search_runs=self.spent_runs, study=self.summary())
        return base


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def frontier_of(trials: Sequence[dict[str, Any]]) -> list[dict[str, float]]:
    """Cost-versus-best-value points of finished trials taken in number (start) order."""
    units = wall = 0.0
    best = math.inf
    points = []
    for t in trials:
        if t["state"] not in ("COMPLETE", "PRUNED"):
            continue
        units += t["units"]
        wall += t["wall_seconds"]
        if t["state"] == "COMPLETE" and _finite(t["value"]):
            best = min(best, t["value"])
        points.append({"units": units, "wall_seconds": wall, "best": best})
    return points


def best_within(trials: Sequence[dict[str, Any]], budget_runs: float) -> dict[str, Any]:
    """What a study with budget ``budget_runs`` would have found, from the trials of a larger one.

    A study starts trial n only while the cost of the trials before it is below its budget, and the
    trials before n do not depend on the budget (seeded per trial, pruned on earlier trials only),
    so the smaller study is a prefix of the larger. Returns best (value), test_loss and trial of
    the best complete trial in that prefix, and its cost in units and wall seconds.
    """
    units = wall = 0.0
    best: dict[str, Any] | None = None
    for t in trials:
        if t["state"] not in ("COMPLETE", "PRUNED"):
            continue
        if units >= budget_runs:
            break
        units += t["units"]
        wall += t["wall_seconds"]
        if t["state"] == "COMPLETE" and _finite(t["value"]) and (best is None or t["value"] < best["value"]):
            best = t
    return {"best": math.nan if best is None else best["value"],
            "test_loss": math.nan if best is None else best.get("test_loss", math.nan),
            "trial": None if best is None else best["number"], "units": units, "wall_seconds": wall}


def _trial_summary(t: Any, total: int) -> dict[str, Any]:
    attrs = t.user_attrs
    steps = int(attrs.get("steps", 0))
    reason = attrs.get("reason")
    if t.state.name == "FAIL" and reason is None:
        reason = "interrupted"
    return {
        "number": t.number, "state": t.state.name, "params": dict(t.params), "init": attrs.get("init"),
        "value": t.value if t.state.name == "COMPLETE" else None, "units": steps / total, "steps": steps,
        "wall_seconds": float(attrs.get("wall_seconds", 0.0)), "test_loss": attrs.get("test_loss"),
        "final_hparams": attrs.get("final_hparams"), "reason": reason, "retry_of": attrs.get("retry_of"),
        "worker": attrs.get("worker"),
    }


# -- the search ---------------------------------------------------------------------------------
def _committed(trials: Sequence[Any], total: int, before: int | None = None) -> float:
    """Units finished plus one per running (and, for ``before``, waiting) trial."""
    cost = 0.0
    for t in trials:
        if before is not None and t.number >= before:
            continue
        state = t.state.name
        if state in ("COMPLETE", "PRUNED"):
            cost += int(t.user_attrs.get("steps", 0)) / total
        elif state == "RUNNING" or (before is not None and state == "WAITING"):
            cost += 1.0
    return cost


def _spent_seconds(trials: Sequence[Any], before: int | None = None) -> float:
    """Wall seconds of the finished trials plus those the running ones have reported so far."""
    return sum(float(t.user_attrs.get("wall_seconds", 0.0)) for t in trials
               if (before is None or t.number < before) and t.state.name in ("COMPLETE", "PRUNED", "RUNNING"))


def _requeue(study: Any, trial: Any) -> None:
    """Re-queue an interrupted (Ctrl-C, or stale: its worker died) trial with its parameters, once."""
    if trial.user_attrs.get("reason") is not None or not trial.params:
        return
    if any(t.user_attrs.get("retry_of") == trial.number for t in study.get_trials(deepcopy=False)):
        return
    study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})


def _study_config(task: str, inner: str, seed: int, settings: Settings, dims: Sequence[Dimension],
                  pruner: str, startup_trials: int) -> dict[str, Any]:
    return {"task": task, "inner": inner, "seed": seed, "pruner": pruner, "startup_trials": startup_trials,
            "settings": {k: v for k, v in asdict(settings).items() if k != "curve_points"},
            "dimensions": [asdict(d) for d in dims]}


def run_search(task: str, inner: str = "glocal", budget_runs: float | None = 8, seed: int = 0,
               storage: str | None = None, study_name: str | None = None, pruner: str = "median",
               settings: Settings | None = None,
               spread: float = 30.0, tune_hyper_lr: bool = False, startup_trials: int = 4,
               heartbeat: int | None = HEARTBEAT, on_trial: Callable[[dict[str, Any]], None] | None = None,
               start_at_defaults: bool = True, budget_seconds: float | None = None) -> SearchResult:
    """Run (or resume, or join) the study and return its result (see the module docstring).

    ``storage``: None (in memory) or a database URL such as ``sqlite:///runs/search/study.db``; the
    study ``study_name`` (default ``<task>-<inner>-seed<seed>``) is created or loaded, and must have
    been created with the same configuration. ``settings`` are the inner runs' (window, hyper-lr,
    steps, init = the centre of the search space...). ``on_trial`` gets each finished trial's summary.
    ``start_at_defaults``: trial 0 runs the centre of the space (the task's defaults, or ``init``)
    rather than a random draw. ``budget_seconds``: a wall-time budget, alone (``budget_runs=None``)
    or with the budget in runs (whichever is spent first ends the study).
    """
    optuna = _optuna()
    from optuna.trial import TrialState

    settings = settings or Settings()
    if inner not in INNER:
        raise SearchError(f"inner={inner!r}: expected one of {', '.join(INNER)}")
    if budget_runs is None and budget_seconds is None:
        raise SearchError("budget_runs and budget_seconds are both None: give at least one budget")
    if budget_runs is not None and not (budget_runs > 0 and math.isfinite(budget_runs)):
        raise SearchError(f"budget_runs={budget_runs}: expected a finite number > 0")
    if budget_seconds is not None and not (budget_seconds > 0 and math.isfinite(budget_seconds)):
        raise SearchError(f"budget_seconds={budget_seconds}: expected a finite number > 0")
    runs_cap = math.inf if budget_runs is None else budget_runs
    seconds_cap = math.inf if budget_seconds is None else budget_seconds
    if startup_trials < 1:
        raise SearchError(f"startup_trials={startup_trials}: expected an integer >= 1")
    probe = experiment.build_task(task, seed, settings)
    total = probe.total_steps
    settings.validate(total)
    dims = search_space(task, settings, spread, tune_hyper_lr, inner)
    pruner_obj = _pruner(pruner, total)
    name = study_name or f"{task}-{inner}-seed{seed}"
    first = {d.param: d.centre for d in dims} if start_at_defaults else None
    db = _storage(storage, heartbeat, lambda study, trial: _requeue(study, trial))
    config = _study_config(task, inner, seed, settings, dims, pruner, startup_trials)
    config["start_at_defaults"] = start_at_defaults
    config = report._clean(config)
    try:
        study = optuna.create_study(study_name=name, storage=db, direction="minimize", load_if_exists=True,
                                    sampler=_seeded_sampler(seed, startup_trials, first), pruner=pruner_obj)
        stored = study.user_attrs.get("config")
        if stored is None:
            study.set_user_attr("config", config)
    except Exception as error:  # a database of another application (tables with another schema)
        if not _is_storage_error(error):
            raise
        raise SearchError(f"storage {_mask(storage)!r}: not an Optuna study database ({_first_line(error)})") from None
    if stored is not None and stored != config:
        differs = sorted(k for k in config if stored.get(k) != config[k])
        raise SearchError(f"study {name!r} exists in {_mask(storage)} with different settings ({', '.join(differs)}; "
                         "use another --study-name")
    # fixed runs report FIXED_REPORTS times, online runs at every window end
    points = FIXED_REPORTS if inner == "fixed" else max(1, total // settings.window)

    current: dict[str, int] = {}

    def objective(trial: optuna.Trial) -> float:
        current["number"] = trial.number
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # also on a trial pruned below
        earlier = study.get_trials(deepcopy=False)
        if (_committed(earlier, total, before=trial.number) >= runs_cap
                or _spent_seconds(earlier, before=trial.number) >= seconds_cap):
            trial.set_user_attr("reason", "budget")  # lost the race for the last budget: pruned at step 0
            raise optuna.TrialPruned
        values = {d.target: d.suggest(trial) for d in dims}
        hyper_lr = values.pop("hyper_lr", settings.hyper_lr)
        init = {**settings.init, **values}
        trial.set_user_attr("init", {**init, **({"hyper_lr": hyper_lr} if "hyper_lr" in [d.target for d in dims]
                                                else {})})
        run_settings = replace(settings, init=init, hyper_lr=hyper_lr, curve_points=points)
        started = time.perf_counter()
        spent_before = _spent_seconds(study.get_trials(deepcopy=False), before=trial.number)

        def on_curve(step: int, val_loss: float) -> None:
            trial.set_user_attr("steps", step)
            elapsed = time.perf_counter() - started
            trial.set_user_attr("wall_seconds", elapsed)
            if spent_before + elapsed >= seconds_cap and step < total:
                trial.set_user_attr("reason", "budget")  # the wall-time budget ran out during this trial
                raise optuna.TrialPruned
            if not math.isfinite(val_loss):
                trial.set_user_attr("reason", "diverged")
                raise optuna.TrialPruned
            trial.report(val_loss, step)
            if trial.should_prune():
                trial.set_user_attr("reason", "pruned")
                raise optuna.TrialPruned

        try:
            # under torchrun the other ranks join this run (glocal_bench.parallel); else experiment.run
            record = parallel.lead_run(experiment.run, task, inner, seed, run_settings, on_curve)
        except optuna.TrialPruned:
            raise
        except Exception as error:  # a genuine failure is not retried (interruptions are)
            trial.set_user_attr("reason", f"error: {type(error).__name__}: {error}"[:200])
            raise
        value = record["final_val_loss"]
        trial.set_user_attr("steps", record["inner_steps"])
        trial.set_user_attr("wall_seconds", time.perf_counter() - started)
        trial.set_user_attr("test_loss", record["test_loss"])
        trial.set_user_attr("final_hparams", record["hparams"])
        trial.set_user_attr("record", report._clean(record))
        return value if math.isfinite(value) else math.inf

    if storage is not None and heartbeat is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        _requeue(study, t)  # trials interrupted by Ctrl-C in an earlier session
    def remaining() -> bool:
        trials = study.get_trials(deepcopy=False)
        return _committed(trials, total) < runs_cap and _spent_seconds(trials) < seconds_cap

    while remaining():
        current.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(objective, n_trials=1)
        if "number" not in current:
            break
        last = study.get_trials(deepcopy=False)[current["number"]]
        if on_trial is not None and (last.user_attrs.get("reason") != "budget" or last.user_attrs.get("steps")):
            on_trial(_trial_summary(last, total))
        if last.user_attrs.get("reason") == "budget":
            break
    return _result(study, task, inner, seed, name, storage, math.nan if budget_runs is None else budget_runs,
                   pruner, dims, total, budget_seconds)


def load_search(task: str, inner: str, seed: int, storage: str, study_name: str | None = None,
                budget_runs: float = math.nan, pruner: str = "median", settings: Settings | None = None,
                spread: float = 30.0, tune_hyper_lr: bool = False) -> SearchResult:
    """The current state of a stored study, without running anything."""
    optuna = _optuna()
    settings = settings or Settings()
    name = study_name or f"{task}-{inner}-seed{seed}"
    study = optuna.load_study(study_name=name, storage=_storage(storage, None, lambda s, t: None))
    total = experiment.build_task(task, seed, settings).total_steps
    dims = search_space(task, settings, spread, tune_hyper_lr, inner)
    return _result(study, task, inner, seed, name, storage, budget_runs, pruner, dims, total)


def _result(study: Any, task: str, inner: str, seed: int, name: str, storage: str | None, budget: float,
            pruner: str, dims: list[Dimension], total: int, budget_seconds: float | None = None) -> SearchResult:
    frozen = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    result = SearchResult(task=task, inner=inner, seed=seed, study_name=name, storage=_mask(storage),
                          budget_runs=budget, pruner=pruner, dimensions=dims, budget_seconds=budget_seconds,
                          trials=[_trial_summary(t, total) for t in frozen])
    complete = [t for t in frozen if t.state.name == "COMPLETE" and t.value is not None and math.isfinite(t.value)]
    if complete:
        best = min(complete, key=lambda t: (t.value, t.number))
        result.best = dict(best.user_attrs["record"])
    return result


# -- the command line's work: several studies, baselines, the frontier report ----------------------------
def frontier_points(record: dict[str, Any]) -> list[dict[str, float]]:
    """Cost (units, wall seconds) versus best validation loss so far, for any result record.

    A search record gives its study's frontier, a grid record one point per configuration (the
    grid's wall time split evenly), any other record one point at its own cost.
    """
    if "study" in record:
        return list(record["study"]["frontier"])
    total = max(1, int(record.get("total_steps") or 1))
    if record.get("grid"):
        grid = record["grid"]
        per = record["wall_seconds"] / len(grid)
        best = math.inf
        points = []
        for i, g in enumerate(grid, 1):
            if _finite(g["final_val_loss"]):
                best = min(best, g["final_val_loss"])
            points.append({"units": float(i), "wall_seconds": per * i, "best": best})
        return points
    return [{"units": record["inner_steps"] / total, "wall_seconds": record["wall_seconds"],
             "best": record["final_val_loss"]}]


def best_at_seconds(record: dict[str, Any], seconds: float) -> float:
    """Best final validation loss a method reaches within ``seconds`` of wall time (NaN if it needs more).

    Read off the record's frontier: the best value among the points whose cumulative wall time is
    within the budget (for a study, the complete trials that finished within it).
    """
    inside = [p["best"] for p in frontier_points(record) if p["wall_seconds"] <= seconds + 1e-9 and _finite(p["best"])]
    return float(inside[-1]) if inside else math.nan


def best_at(record: dict[str, Any], budget_runs: float) -> float:
    """Best final validation loss a method reaches within ``budget_runs`` (NaN if it needs more)."""
    if "study" in record:
        return float(best_within(record["study"]["trials"], budget_runs)["best"])
    last = frontier_points(record)[-1]  # a grid counts only when complete
    return float(last["best"]) if last["units"] <= budget_runs + 1e-9 else math.nan


def budget_table(records: Sequence[dict[str, Any]], budgets: Sequence[float],
                 seconds: Sequence[float] = ()) -> str:
    """Markdown: per method, the mean (over seeds) best validation loss at each budget in runs and in
    wall seconds (``seconds``), and the wall time of all its trials."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(r["strategy"], []).append(r)
    head = ["method", "seeds", *(f"best val @ {b:g} runs" for b in budgets),
            *(f"best val @ {b:.0f} s" for b in seconds), "wall s (all trials)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, group in groups.items():
        cells = [name, str(len(group))]
        for b in budgets:
            values = [best_at(r, b) for r in group]
            ok = [v for v in values if _finite(v)]
            cells.append(f"{sum(ok) / len(ok):.4f}" if ok and len(ok) == len(values) else "-")
        for b in seconds:
            values = [best_at_seconds(r, b) for r in group]
            ok = [v for v in values if _finite(v)]
            cells.append(f"{sum(ok) / len(ok):.4f}" if ok and len(ok) == len(values) else "-")
        cells.append(f"{sum(r['wall_seconds'] for r in group) / len(group):.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_frontier(path: Path, records: Sequence[dict[str, Any]]) -> bool:
    """Frontier PNG: best validation loss against cost in plain-run units and in wall seconds."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors: dict[str, Any] = {}
    for r in records:
        points = [p for p in frontier_points(r) if _finite(p["best"])]
        if not points:
            continue
        color = colors.setdefault(r["strategy"], f"C{len(colors)}")
        label = r["strategy"] if sum(1 for x in records if x["strategy"] == r["strategy"]) == 1 or r["seed"] == min(
            x["seed"] for x in records if x["strategy"] == r["strategy"]) else None
        for ax, key in zip(axes, ("units", "wall_seconds"), strict=True):
            xs = [p[key] for p in points]
            ys = [p["best"] for p in points]
            if len(points) == 1:
                ax.plot(xs, ys, "o", color=color, label=label)
            else:
                ax.step(xs, ys, where="post", color=color, alpha=0.8, label=label)
    axes[0].set_xlabel("cost (plain training runs: inner steps / T)")
    axes[1].set_xlabel("cost (wall seconds)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_ylabel("best final validation loss so far")
        if ax.get_legend_handles_labels()[0]:  # nothing to label when no trial finished
            ax.legend(fontsize=7)
    fig.tight_layout()
    report.save_figure(fig, path)
    plt.close(fig)
    return True


def append_frontier_report(out: Path, records: Sequence[dict[str, Any]], budget_runs: float | None,
                           budget_seconds: float | None = None) -> None:
    """Add the cost-versus-best-validation-loss frontier (table and ``frontier.png``) to report.md.

    Budgets in runs up to ``budget_runs``, and in wall seconds: 1/8, 1/4, 1/2 and all of
    ``budget_seconds`` (default: of the longest method's total wall time).
    """
    top = budget_runs if budget_runs is not None else max(
        (max((p["units"] for p in frontier_points(r)), default=1.0) for r in records), default=1.0)
    budgets = sorted({b for b in (1.0, 2.0, 4.0, 8.0, 16.0, 32.0) if b <= top} | {float(top)})
    longest = budget_seconds or max((r["wall_seconds"] for r in records), default=0.0)
    seconds = [longest * f for f in (0.125, 0.25, 0.5, 1.0)] if longest > 0 else []
    text = ["", "## Cost versus best validation loss", "",
            "Cost in units of one plain training run (inner steps / T; pruned trials count for the steps they "
            "ran) and in wall seconds (all trials). An online-tuned run costs one unit but several times the "
            "wall time of a fixed one, so compare at equal wall time too.", "",
            budget_table(records, budgets, seconds)]
    if plot_frontier(out / "frontier.png", records):
        text.append("![frontier.png](frontier.png)")
    path = out / "report.md"
    before = path.read_text() if path.exists() else ""
    write_text(path, before + "\n".join(text) + "\n")
