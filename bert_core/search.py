"""Hyperparameter search over TrainConfig fields with Optuna: the search space, the study, and the callback
that feeds a trial's dev metric to Optuna's pruner.

The study lives in a real database (Optuna's RDB storage: SQLite by default, `$BERTFLOW_HOME/optuna.db`;
PostgreSQL or MySQL by URL), so a sweep that was interrupted resumes where it stopped:
- the sweep that drives a study records a heartbeat for each trial it waits on; when a sweep starts on a
  study whose running trials' heartbeats are older than `GRACE_SECONDS` (their sweep died), Optuna
  fails them and enqueues each again with the same parameters (`RetryHeartbeatStaleTrialCallback`);
  the re-run fine-tune takes over the dead one's run folder and resumes from its checkpoint;
- the trial budget counts the study's finished trials (complete or pruned), so a resumed sweep runs
  only what is left.

A space maps TrainConfig fields to either a list of values (a grid axis; categorical for TPE) or a range
`{low, high, log, step}` (TPE only). Trials report their primary dev metric at each evaluation, numbered
1, 2, ... (the k-th evaluation, the k-th epoch by default), so trials with different batch sizes are
compared at the same point of training; the median pruner stops a trial whose metric falls below the
median of earlier trials at the same evaluation.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import random
import warnings
from pathlib import Path
from typing import Any, Literal

import optuna
from pydantic import BaseModel, ConfigDict, Field, model_validator

from bert_core.home import bertflow_home
from bert_core.training import TrainConfig
from bert_core.training.recipe import RESUME_INDIFFERENT

HEARTBEAT_SECONDS = 30  # a sweep marks its running trials alive this often
GRACE_SECONDS = 120  # a running trial unheard of for this long belongs to a sweep that died
MAX_RETRIES = 2  # times a trial interrupted with its sweep is enqueued again
ERROR_ATTR = "error"  # user attribute of a trial that failed by its own error (not its sweep's death)
State = optuna.trial.TrialState

# Fields a sweep may vary: the recipe. Not the evaluation (it defines the metric the trials are compared on)
# nor bookkeeping that does not change the model (checkpointing, logging, threads).
NOT_SEARCHABLE = RESUME_INDIFFERENT | {"max_eval_samples", "eval_every", "early_stopping_patience"}
SEARCHABLE = tuple(name for name in TrainConfig.model_fields if name not in NOT_SEARCHABLE)

Value = float | int | str | bool


class Range(BaseModel):
    """A range for TPE: floats, or ints when `low`, `high` (and `step`) are ints."""

    model_config = ConfigDict(extra="forbid")
    low: float | int
    high: float | int
    log: bool = Field(False, description="Sample on a log scale (e.g. learning rates).")
    step: float | int | None = Field(None, description="Only multiples of step above low (not with log).")

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"a range needs low < high, got low={self.low}, high={self.high}")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("a log range needs low > 0 and no step")
        return self

    @property
    def is_int(self) -> bool:
        return all(isinstance(v, int) for v in (self.low, self.high, self.step) if v is not None)


Space = dict[str, list[Value] | Range]


class SweepTrial(BaseModel):
    """Which Optuna trial a fine-tune is: set by the sweep flow (flows/sweep.py), never by hand."""

    model_config = ConfigDict(extra="forbid")
    storage: str | None = Field(None, description="Optuna storage URL of the study; empty = the default.")
    study: str = Field(description="The study's name.")
    trial_id: int = Field(description="The trial's id in the storage.")
    trial_number: int = Field(description="The trial's number in the study.")
    pruner: Literal["median", "none"] = "median"
    pruning_startup_trials: int = Field(3, ge=0)
    parent_run_id: str | None = Field(None, description="The sweep's MLflow run: the trial's run is its child.")


def check_space(space: Space, sampler: Literal["grid", "tpe"], base: TrainConfig) -> None:
    """Raise ValueError naming the field and what is expected when `space` cannot be searched: unknown or
    unsearchable fields, empty lists, ranges for a grid, values TrainConfig refuses."""
    if not space:
        raise ValueError(f"the search space is empty; give at least one of {', '.join(SEARCHABLE)}")
    for name, values in space.items():
        if name not in SEARCHABLE:
            raise ValueError(f"space field {name!r} cannot be searched; searchable TrainConfig fields: "
                             f"{', '.join(SEARCHABLE)}")
        if isinstance(values, Range):
            if sampler == "grid":
                raise ValueError(f"space field {name!r} is a range, which a grid cannot enumerate: give a list "
                                 "of values, or use sampler 'tpe'")
            probes = [values.low, values.high]
        else:
            if not values:
                raise ValueError(f"space field {name!r} has no values")
            if len(set(map(json.dumps, values))) != len(values):
                raise ValueError(f"space field {name!r} repeats a value: {values}")
            probes = values
        for value in probes:
            try:
                base.model_validate({**base.model_dump(exclude_unset=True), name: value})
            except ValueError as err:
                detail = err.errors()[0]["msg"] if hasattr(err, "errors") else str(err)
                raise ValueError(f"space field {name!r}: value {value!r} is not a valid {name}: {detail}") from None


def grid_size(space: Space) -> int | None:
    """Points of the grid, or None when the space has a range."""
    if any(isinstance(v, Range) for v in space.values()):
        return None
    return math.prod(len(v) for v in space.values())


def suggest(trial: optuna.Trial, space: Space) -> dict[str, Any]:
    """The trial's values of the space's fields."""
    chosen = {}
    for name, values in space.items():
        if isinstance(values, Range):
            kind = trial.suggest_int if values.is_int else trial.suggest_float
            extra = {"log": values.log} | ({"step": values.step} if values.step is not None else {})
            chosen[name] = kind(name, values.low, values.high, **extra)
        else:
            chosen[name] = trial.suggest_categorical(name, values)
    return chosen


def make_sampler(kind: Literal["grid", "tpe"], seed: int) -> optuna.samplers.BaseSampler:
    """TPE, or for a grid a random sampler that never samples: a grid's points are enqueued (`enqueue_grid`)."""
    # Not Optuna's GridSampler: it calls `Study.stop`, which raises outside `Study.optimize`, and a sweep
    # asks and tells trials itself.
    return optuna.samplers.TPESampler(seed=seed) if kind == "tpe" else optuna.samplers.RandomSampler(seed=seed)


def enqueue_grid(study: optuna.Study, space: Space, seed: int) -> None:
    """Enqueue every point of a list-only space once, in an order shuffled by `seed` (so a budget below the
    grid's size samples it evenly); a study that already has trials is left as it is (a resumed sweep)."""
    if study.get_trials(deepcopy=False):
        return
    names = list(space)
    points = list(itertools.product(*(space[n] for n in names)))
    random.Random(seed).shuffle(points)
    for point in points:
        study.enqueue_trial(dict(zip(names, point, strict=True)))


def make_pruner(kind: Literal["median", "none"], startup_trials: int) -> optuna.pruners.BasePruner:
    if kind == "none":
        return optuna.pruners.NopPruner()
    # Compare from the first evaluation on: the startup trials already give the median something to stand on.
    return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=0)


ENV_STORAGE = "BERTFLOW_OPTUNA_STORAGE"


def default_storage() -> str:
    """`$BERTFLOW_OPTUNA_STORAGE`, else `sqlite:///$BERTFLOW_HOME/optuna.db`."""
    return os.environ.get(ENV_STORAGE) or f"sqlite:///{bertflow_home() / 'optuna.db'}"


def storage(url: str | None) -> optuna.storages.RDBStorage:
    """The study database at `url` (default `default_storage()`), with heartbeats so dead sweeps' trials
    are found and retried."""
    url = url or default_storage()
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
    # Trials in other processes write to the same SQLite file: wait for its lock rather than fail.
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else {}
    with warnings.catch_warnings():  # heartbeats and their retry callback are "experimental" since Optuna 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES))


def study_name(task: str, identity: dict) -> str:
    """`<task>-<hash>` of what defines a sweep (space, sampler, the fixed recipe, checkpoint, data): running the
    same sweep again finds its study and resumes it."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{task}-{digest}"


def open_study(name: str, url: str | None, sampler: optuna.samplers.BaseSampler,
               pruner: optuna.pruners.BasePruner) -> optuna.Study:
    """Create the study, or load it to resume; every metric a spec names is higher-is-better."""
    return optuna.create_study(study_name=name, storage=storage(url), sampler=sampler, pruner=pruner,
                               direction="maximize", load_if_exists=True)


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that count against the budget by their outcome: complete or pruned."""
    return study.get_trials(deepcopy=False, states=(State.COMPLETE, State.PRUNED))


def fail_stale(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Fail (and enqueue again) the running trials unheard of for `GRACE_SECONDS`; returns those still running."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return study.get_trials(deepcopy=False, states=(State.RUNNING,))


def trials_to_ask(study: optuna.Study, n_trials: int, grid: bool) -> int:
    """How many more trials to start: the budget `n_trials` less the trials that count (complete, pruned,
    running, or failed with an error of their own; not those failed because their sweep died, whose retry
    waits); for a grid, no more than its points still waiting."""
    trials = study.get_trials(deepcopy=False)
    counted = sum(t.state in (State.COMPLETE, State.PRUNED, State.RUNNING)
                  or (t.state == State.FAIL and ERROR_ATTR in t.user_attrs) for t in trials)
    left = n_trials - counted
    if grid:
        left = min(left, sum(t.state == State.WAITING for t in trials))
    return max(left, 0)


def ask(study: optuna.Study) -> optuna.Trial:
    """A new trial (a waiting one first: a grid point or a retry), marked alive."""
    with warnings.catch_warnings():  # Optuna expects heartbeats from `Study.optimize`; a sweep beats itself
        warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used", UserWarning)
        trial = study.ask()
    study._storage.record_heartbeat(trial._trial_id)
    return trial


def release(study: optuna.Study, trial_ids: list[int]) -> None:
    """Trials this sweep started but will not finish (it is stopping): failed and enqueued again, so the
    sweep's next run re-runs them."""
    retry = study._storage.get_heartbeat_stale_trial_callback()
    for trial_id in trial_ids:
        try:
            study._storage.set_trial_state_values(trial_id, state=State.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # told meanwhile
        if retry is not None:
            retry(study, study._storage.get_trial(trial_id))


class TrialReporter:
    """A `fit` callback: the primary dev metric of the k-th evaluation goes to the trial as its intermediate
    value at step k; `on_evaluate` returns True (fit stops, like early stopping) when the pruner says so.

    It runs in the trial's own process (a worker of the sweep's pool, or a flow run on any worker): it opens
    the study by storage URL and name, so the storage must be reachable from there.
    """

    def __init__(self, trial: SweepTrial, metric: str):
        loaded = optuna.load_study(study_name=trial.study, storage=storage(trial.storage),
                                   pruner=make_pruner(trial.pruner, trial.pruning_startup_trials))
        self.trial = optuna.trial.Trial(loaded, trial.trial_id)
        self.metric = metric
        # A resumed fine-tune continues the count where its interrupted run reported.
        self.evaluations = len(loaded._storage.get_trial(trial.trial_id).intermediate_values)
        self.pruned_at: int | None = None  # the evaluation that pruned the trial

    def on_evaluate(self, step: int, metrics: dict[str, float]) -> bool:
        self.evaluations += 1
        value = metrics.get(self.metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False  # nothing to compare: a NaN correlation of a constant model early on
        self.trial.report(float(value), self.evaluations)
        if self.trial.should_prune():
            self.pruned_at = self.evaluations
            return True
        return False
