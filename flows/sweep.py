"""The `sweep` flow: a hyperparameter search over TrainConfig fields for one task, each trial a fine-tune.

- The search: an Optuna study (bert_core/search.py) in a real database, SQLite by default, so running the
  same sweep again resumes it; a grid over lists of values, or TPE over lists and ranges with a trial budget.
- The trials: the finetune flow with `sweep_trial` set, fanned out like the suite's (flows/suite.py): in a
  pool of `max_concurrency` processes here, or as runs of a finetune deployment on any worker. A trial
  reports its dev metric at each evaluation; the median pruner stops hopeless ones. A trial logs its model
  but registers none.
- The record: one parent MLflow run in the task's experiment with a child run per trial, a table of the
  trials and a plot of the metric against each parameter (a Prefect artifact and files of the parent run).
- The outcome: the best trial's model registered through the usual registry policy (champion or
  challenger), as if that fine-tune had run alone.

Trials that fail by their own error (e.g. a learning rate that diverges) are recorded and the search goes
on; when the first trials all fail, the sweep stops rather than spend its budget on the same error.
"""

from __future__ import annotations

import json
import os
import time
from typing import Literal

import mlflow
import optuna
from mlflow.tracking import MlflowClient
from prefect import flow, get_run_logger
from prefect.futures import wait
from prefect.runtime import flow_run
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
from pydantic import BaseModel, ConfigDict, Field, field_validator

from bert_core import search
from bert_core.home import runs_root
from bert_core.search import Space, SweepTrial
from bert_core.spec import TaskSpec, load_spec
from bert_core.training import TrainConfig
from flows.params import FinetuneParams, refuse_password
from flows.suite import finetune_here, finetune_on_worker, share_cores
from tasks.register import register_logged_run
from tasks.sweep import publish_sweep
from tracking import store as tracking

POLL_SECONDS = 5  # how often the sweep looks for finished trials


class SweepParams(BaseModel):
    """A search: the fine-tune every trial starts from, what varies, how it is searched, where it is kept."""

    model_config = ConfigDict(extra="forbid")

    base: FinetuneParams = Field(
        default_factory=FinetuneParams, description="The fine-tune each trial runs, its training fields overridden "
        "by the trial's values (fields set neither here nor by the trial take the task spec's defaults).")
    space: Space = Field(
        default_factory=lambda: {"learning_rate": [5e-5, 3e-5, 2e-5], "batch_size": [16, 32]},
        description="TrainConfig field -> a list of values (a grid axis; a categorical choice for TPE) or a range "
        "{low, high, log, step} (TPE only). Searchable: " + ", ".join(search.SEARCHABLE) + ". Default: the BERT "
        "paper's learning rates and batch sizes.")
    sampler: Literal["grid", "tpe"] = Field(
        "grid", description="'grid': every combination of the lists; 'tpe': Optuna's TPE sampler, n_trials trials.")
    n_trials: int | None = Field(
        None, ge=1, description="Trials to finish (complete or pruned), counting those of an earlier run of the same "
        "study; empty = the whole grid, or 10 for TPE.")
    max_concurrency: int = Field(1, ge=1, description="Trials running at once (they share the machine's cores).")
    deployment: str | None = Field(
        None, description="Run each trial as a run of this finetune deployment (e.g. 'bertflow-finetune/on-demand') "
        "on any worker of its pool; the storage must then be a database those workers reach. Empty = in "
        "processes here.")
    pruner: Literal["median", "none"] = Field(
        "median", description="'median': stop a trial whose dev metric at its k-th evaluation is below the median "
        "of earlier trials' at their k-th; 'none': never prune.")
    pruning_startup_trials: int = Field(
        3, ge=0, description="Trials that finish before the pruner stops any.")
    storage: str | None = Field(
        None, description="Optuna storage URL (e.g. postgresql://user@host/db, with the password in PGPASSWORD); "
        "empty = $BERTFLOW_OPTUNA_STORAGE, else sqlite:///$BERTFLOW_HOME/optuna.db.")
    study_name: str | None = Field(
        None, description="Empty = '<task>-<hash of this search>': the same sweep run again resumes its study.")
    seed: int = Field(0, description="Seeds the sampler (trial order, TPE's proposals); trials use base.training's seed.")
    register_best: bool = Field(True, description="Register the best trial's model (champion or challenger).")

    @field_validator("storage")
    @classmethod
    def _no_password_in_storage(cls, url: str | None) -> str | None:
        return refuse_password(url, "storage", f"put the URL in ${search.ENV_STORAGE} on the workers, or the "
                               "password where the database driver reads it (e.g. PGPASSWORD, ~/.pgpass)")

    def budget(self) -> int:
        size = search.grid_size(self.space) if self.sampler == "grid" else None
        return min(self.n_trials or size, size) if size else (self.n_trials or 10)

    def identity(self) -> dict:
        """What makes two sweeps the same study: not where results go or how many run at once."""
        base = self.base.model_dump(mode="json", exclude={"tracking_uri", "run_root", "sweep_trial"})
        return {"base": base, "space": json.loads(json.dumps(self.space, default=lambda r: r.model_dump())),
                "sampler": self.sampler, "seed": self.seed}


@flow(name="bertflow-sweep")
def sweep(params: SweepParams = SweepParams()) -> dict:  # noqa: B008 (pydantic default = the UI form's)
    """Search, then register the best trial; returns the study, the trials and the best trial."""
    log = get_run_logger()
    base = params.base
    uri = tracking.configure_tracking(tracking.check_tracking(base.tracking_uri))
    spec = load_spec(base.task)
    search.check_space(params.space, params.sampler, base.training.with_defaults(spec.defaults))
    budget = params.budget()
    grid = params.sampler == "grid"
    name = params.study_name or search.study_name(spec.name, params.identity())
    study = search.open_study(name, params.storage, search.make_sampler(params.sampler, params.seed),
                              search.make_pruner(params.pruner, params.pruning_startup_trials))
    _check_same_search(study, params)
    if grid:
        search.enqueue_grid(study, params.space, params.seed)
    _take_over_stale_trials(study)
    parent = _parent_run(study, spec, params, uri)
    left = search.trials_to_ask(study, budget, grid)
    log.info("sweep %s: %s over %s, %d of %d trials to run, %d at once, %s; MLflow run %s", name, params.sampler,
             list(params.space), left, budget, params.max_concurrency, params.deployment or "in processes here", parent)

    try:
        _run_trials(study, params, spec, name, parent, budget, grid)
        trials = _trial_rows(study)
        best = _best(study)
        registered = None
        if best is not None and params.register_best:
            registered = _register_best(spec, base, best["mlflow_run_id"])
            log.info("best trial %d (%s %.4f): %s is %s", best["number"], spec.primary_metric, best["value"],
                     registered["model_uri"], registered["alias"])
        folder = runs_root(base.run_root) / "_sweeps" / name
        published = publish_sweep(spec.name, spec.primary_metric, trials, best, registered, params.space,
                                  str(folder), parent)
        if best is None:
            raise RuntimeError(f"sweep {name}: no trial completed; see {published['markdown']}")
        MlflowClient().set_terminated(parent, "FINISHED")
    except BaseException as err:
        MlflowClient().set_tag(parent, "error", tracking.mask_secrets(f"{type(err).__name__}: {err}")[:5000])
        MlflowClient().set_terminated(parent, "FAILED")
        raise
    return {"study": name, "storage": tracking.mask_secrets(params.storage or search.default_storage()),
            "mlflow_run_id": parent, "trials": trials, "best": best, "registered": registered,
            "plot": published["plot"], "table": published["markdown"]}


def _check_same_search(study: optuna.Study, params: SweepParams) -> None:
    """A named study resumed by a different search would mix trials of two spaces: refuse it."""
    stored = study.user_attrs.get("identity")
    if stored is None:
        study.set_user_attr("identity", params.identity())
    elif stored != params.identity():
        raise ValueError(f"study {study.study_name!r} holds another search (task, space, sampler or base "
                         "fine-tune differ); give a new study_name, or leave it empty for one named after the search")


def _take_over_stale_trials(study: optuna.Study) -> None:
    """Fail (and enqueue again) the running trials of a sweep that died; refuse a study that a live sweep drives."""
    deadline = time.monotonic() + search.GRACE_SECONDS + 2 * search.HEARTBEAT_SECONDS
    while True:
        alive = search.fail_stale(study)
        if not alive:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"study {study.study_name!r} has trials running ({[t.number for t in alive]}) whose "
                               "sweep is alive: another sweep drives it; wait for it to end or give a new study_name")
        get_run_logger().warning("study %s: trials %s were running %s s ago; waiting for their sweep to be declared "
                                 "dead (no heartbeat for %d s) before taking them over", study.study_name,
                                 [t.number for t in alive], search.GRACE_SECONDS, search.GRACE_SECONDS)
        time.sleep(search.HEARTBEAT_SECONDS)


def _parent_run(study: optuna.Study, spec: TaskSpec, params: SweepParams, uri: str) -> str:
    """The sweep's MLflow run: the one an earlier run of this study started (in this store), or a new one."""
    client = MlflowClient()
    earlier = study.user_attrs.get("mlflow_run_id")
    if earlier:
        try:
            client.get_run(earlier)
            client.update_run(earlier, status="RUNNING")
            return earlier
        except mlflow.exceptions.MlflowException:
            pass  # another tracking store, or deleted: start a new one
    experiment = tracking.experiment_for(spec.name, uri)
    run = client.create_run(experiment, run_name=f"sweep-{study.study_name}", tags={
        "task": spec.name, "family": spec.family, "sweep_study": study.study_name, "code_version": tracking.code_version(),
        "prefect.flow_run_id": flow_run.id or "none", "prefect.flow_run_name": flow_run.name or "none"})
    run_id = run.info.run_id
    tracking.log_params_safely({
        "space": json.dumps(params.identity()["space"]), "sampler": params.sampler, "n_trials": params.budget(),
        "pruner": params.pruner, "pruning_startup_trials": params.pruning_startup_trials, "seed": params.seed,
        "study": study.study_name, "storage": tracking.mask_secrets(params.storage or search.default_storage()),
        "base": params.base.model_dump(mode="json", exclude={"sweep_trial"})}, run_id=run_id)
    study.set_user_attr("mlflow_run_id", run_id)
    return run_id


def _run_trials(study: optuna.Study, params: SweepParams, spec: TaskSpec, name: str, parent: str, budget: int,
                grid: bool) -> None:
    """Keep `max_concurrency` trials running until the budget is spent; tell Optuna each outcome."""
    if params.deployment:
        runner = ThreadPoolTaskRunner(max_workers=params.max_concurrency)
    else:
        runner = ProcessPoolTaskRunner(max_workers=params.max_concurrency, initializer=share_cores,
                                       initargs=(params.max_concurrency,))
    pending: dict = {}  # future -> optuna trial
    first_error = None
    with runner:
        try:
            while True:
                stop_asking = first_error is not None and not search.finished(study)
                while (not stop_asking and len(pending) < params.max_concurrency
                       and search.trials_to_ask(study, budget, grid) > 0):  # running trials count already
                    trial = search.ask(study)
                    pending[_submit(runner, params, spec, name, parent, trial)] = trial
                if not pending:
                    break
                done, _ = wait(list(pending), timeout=POLL_SECONDS)
                for trial in pending.values():
                    study._storage.record_heartbeat(trial._trial_id)  # this sweep is alive: its trials are too
                for future in done:
                    error = _tell(study, pending.pop(future), future, spec)
                    first_error = first_error or error
        except BaseException:
            search.release(study, [t._trial_id for t in pending.values()])
            raise
    if first_error and not search.finished(study):
        raise RuntimeError(f"sweep {name}: the first trials failed, so the sweep stopped: {first_error}")


def _submit(runner, params: SweepParams, spec: TaskSpec, name: str, parent: str, trial: optuna.Trial):
    values = search.suggest(trial, params.space)
    base = params.base
    training = TrainConfig(**{**base.training.model_dump(exclude_unset=True), **values})
    trial_params = base.model_copy(update={"training": training, "sweep_trial": SweepTrial(
        storage=_storage_for_trials(params.storage), study=name, trial_id=trial._trial_id, trial_number=trial.number,
        pruner=params.pruner, pruning_startup_trials=params.pruning_startup_trials, parent_run_id=parent)})
    get_run_logger().info("trial %d: %s", trial.number, ", ".join(f"{k} {v}" for k, v in values.items()))
    if params.deployment:
        return runner.submit(finetune_on_worker, {"deployment": params.deployment, "params": trial_params})
    return runner.submit(finetune_here, {"params": trial_params})


def _storage_for_trials(url: str | None) -> str | None:
    """The storage URL a trial opens: the sweep's own, so trials on this machine reach its default SQLite file;
    None when it comes from $BERTFLOW_OPTUNA_STORAGE, which each worker then reads (a URL from the environment
    may hold a password, and a trial's parameters are stored in the clear)."""
    if url or os.environ.get(search.ENV_STORAGE):
        return url
    return search.default_storage()


def _tell(study: optuna.Study, trial: optuna.Trial, future, spec: TaskSpec) -> str | None:
    """Record a finished trial in the study; returns its error, if it failed."""
    log = get_run_logger()
    try:
        summary = future.result()
    except Exception as err:  # noqa: BLE001 (a failed trial is an outcome of the search, not its end)
        error = tracking.mask_secrets(f"{type(err).__name__}: {err}")[:2000]
        study._storage.set_trial_user_attr(trial._trial_id, search.ERROR_ATTR, error)
        study.tell(trial, state=search.State.FAIL)
        log.error("trial %d failed: %s", trial.number, error)
        return error
    study._storage.set_trial_user_attr(trial._trial_id, "mlflow_run_id", summary["mlflow_run_id"])
    if summary["pruned_at"]:
        study.tell(trial, state=search.State.PRUNED)
        log.info("trial %d pruned at evaluation %d", trial.number, summary["pruned_at"])
    else:
        study.tell(trial, summary["score"])
        log.info("trial %d: %s %.4f", trial.number, spec.primary_metric, summary["score"])
    return None


def _trial_rows(study: optuna.Study) -> list[dict]:
    """The study's trials for the table and plot: a pruned trial's value is its last reported one."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        value = t.value if t.state == search.State.COMPLETE else (
            t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None)
        start, end = t.datetime_start, t.datetime_complete
        rows.append({"number": t.number, "state": t.state.name, "params": t.params, "value": value,
                     "evaluations": len(t.intermediate_values),
                     "seconds": (end - start).total_seconds() if start and end else None,
                     "started": start.isoformat() if start else None, "ended": end.isoformat() if end else None,
                     "mlflow_run_id": t.user_attrs.get("mlflow_run_id"), "error": t.user_attrs.get(search.ERROR_ATTR)})
    return rows


def _best(study: optuna.Study) -> dict | None:
    if not study.get_trials(deepcopy=False, states=(search.State.COMPLETE,)):
        return None
    best = study.best_trial
    return {"number": best.number, "params": best.params, "value": best.value,
            "mlflow_run_id": best.user_attrs["mlflow_run_id"]}


def _register_best(spec: TaskSpec, base: FinetuneParams, run_id: str) -> dict:
    """The best trial's logged model registered under the usual policy; once (a resumed sweep finds it done)."""
    tags = MlflowClient().get_run(run_id).data.tags
    if "model_version" in tags:
        name, version = tags["model_name"], tags["model_version"]
        return {"model_name": name, "version": version, "model_uri": f"models:/{name}/{version}",
                "alias": tags["model_alias"], "reason": tags.get("model_decision", ""), "already": True}
    return register_logged_run(spec, run_id, base.registry_policy, base.registry_confidence)
