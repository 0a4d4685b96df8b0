"""A sweep trial's side of the Optuna study (no Prefect here): which trial a fine-tune is (`SweepTrial`, set by
the sweep flow), the study's storage and pruner, and `TrialReporter`, the `fit` callback that feeds the trial's
dev metric to the pruner.

A trial runs in its own process (a worker of the sweep's pool, or a flow run on any worker), so it opens the
study by storage URL and name. The storage and the pruner are therefore defined once, here, and the sweep
opens its study with the same ones (flows/sweep_study.py).

The storage is a real database (Optuna's RDB storage: SQLite by default, `$BERTFLOW_HOME/optuna.db`;
PostgreSQL or MySQL by URL) with heartbeats: the sweep that drives a study records one for each trial it
waits on; a running trial unheard of for `GRACE_SECONDS` belongs to a sweep that died, and is failed and
enqueued again with the same parameters (`RetryHeartbeatStaleTrialCallback`).

Trials report their primary dev metric at each evaluation, numbered 1, 2, ... (the k-th evaluation, the k-th
epoch by default), so trials with different batch sizes are compared at the same point of training; the
median pruner stops a trial whose metric falls below the median of earlier trials at the same evaluation.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Literal

import optuna
from pydantic import BaseModel, ConfigDict, Field

from bert_core.home import bertflow_home

HEARTBEAT_SECONDS = 30  # a sweep marks its running trials alive this often
GRACE_SECONDS = 120  # a running trial unheard of for this long belongs to a sweep that died
MAX_RETRIES = 2  # times a trial interrupted with its sweep is enqueued again
ENV_STORAGE = "BERTFLOW_OPTUNA_STORAGE"


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


def make_pruner(kind: Literal["median", "none"], startup_trials: int) -> optuna.pruners.BasePruner:
    if kind == "none":
        return optuna.pruners.NopPruner()
    # Compare from the first evaluation on: the startup trials already give the median something to stand on.
    return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=0)


class TrialReporter:
    """A `fit` callback: the primary dev metric of the k-th evaluation goes to the trial as its intermediate
    value at step k; `on_evaluate` returns True (fit stops, like early stopping) when the pruner says so.

    It runs in the trial's own process: it opens the study by storage URL and name, so the storage must be
    reachable from there.
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
