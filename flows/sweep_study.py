"""The sweep flow's Optuna study: the search space, the study's bookkeeping, and its trials read back for the
table (no Prefect here; the storage and pruner a trial shares with its sweep are in tasks/sweep_trial.py).

The study lives in a real database (tasks/sweep_trial.py `storage`), so a sweep that was interrupted resumes
where it stopped:
- the sweep records a heartbeat for each trial it waits on; when a sweep starts on a study whose running
  trials' heartbeats are older than `GRACE_SECONDS` (their sweep died), Optuna fails them and enqueues each
  again with the same parameters (`fail_stale`); the re-run fine-tune takes over the dead one's run folder
  and resumes from its checkpoint;
- the trial budget counts the study's finished trials (complete or pruned), so a resumed sweep runs
  only what is left (`trials_to_ask`).

A space maps TrainConfig fields to either a list of values (a grid axis; categorical for TPE) or a range
`{low, high, log, step}` (TPE only).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import warnings
from typing import Any, Literal

import optuna
from pydantic import BaseModel, ConfigDict, Field, model_validator

from bert_core.training import TrainConfig
from bert_core.training.identity import RESUME_INDIFFERENT
from tasks.sweep_trial import storage

ERROR_ATTR = "error"  # user attribute of a trial that failed by its own error (not its sweep's death)
State = optuna.trial.TrialState

# Fields a sweep may vary: the recipe. Not the evaluation (it defines the metric the trials are compared on)
# nor bookkeeping that does not change the model (checkpointing, logging, threads).
NOT_SEARCHABLE = RESUME_INDIFFERENT | {"max_eval_samples", "eval_every", "early_stopping_patience"}
SEARCHABLE = tuple(name for name in TrainConfig.model_fields if name not in NOT_SEARCHABLE)

Value = float | int | str | bool | None  # None: the task spec's value (e.g. class_weights: [balanced, null])


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


def trial_rows(study: optuna.Study) -> list[dict]:
    """The study's trials for the table and plot: a pruned trial's value is its last reported one."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        value = t.value if t.state == State.COMPLETE else (
            t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None)
        start, end = t.datetime_start, t.datetime_complete
        rows.append({"number": t.number, "state": t.state.name, "params": t.params, "value": value,
                     "evaluations": len(t.intermediate_values),
                     "seconds": (end - start).total_seconds() if start and end else None,
                     "started": start.isoformat() if start else None, "ended": end.isoformat() if end else None,
                     "mlflow_run_id": t.user_attrs.get("mlflow_run_id"), "error": t.user_attrs.get(ERROR_ATTR)})
    return rows


def best_trial(study: optuna.Study) -> dict | None:
    """The best complete trial: number, params, value and MLflow run; None when no trial completed."""
    if not study.get_trials(deepcopy=False, states=(State.COMPLETE,)):
        return None
    best = study.best_trial
    return {"number": best.number, "params": best.params, "value": best.value,
            "mlflow_run_id": best.user_attrs["mlflow_run_id"]}
