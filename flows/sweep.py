"""The `sweep` flow: a hyperparameter search over TrainConfig fields for one task, each trial a fine-tune.

- The search: an Optuna study (flows/sweep_study.py) in a real database, SQLite by default, so running the
  same sweep again resumes it; a grid over lists of values, or TPE over lists and ranges with a trial budget.
- The trials: the finetune flow with `sweep_trial` set, fanned out like the suite's (flows/suite.py): in a
  pool of `max_concurrency` processes here, or as runs of a finetune deployment on any worker. A trial
  reports its dev metric at each evaluation; the median pruner stops hopeless ones. A trial logs its model
  but registers none.
- The record: one parent MLflow run in the task's experiment with a child run per trial, a table of the
  trials and a plot of the metric against each parameter (a Prefect artifact and files of the parent run).
- The outcome: the best trial's model registered through the usual registry policy (champion or
  challenger), as if that fine-tune had run alone; and, when the base fine-tune asks for `serving_precisions`,
  each gated against that version and registered beside it as that fine-tune would have
  (tasks/serving_precision.py `register_serving_precisions_of_run`: the model comes back from the trial's
  logged model, the dev rows from the task's data read again).

Trials that fail by their own error (e.g. a learning rate that diverges) are recorded and the search goes
on; when the first trials all fail, the sweep stops rather than spend its budget on the same error.
"""

from __future__ import annotations

import json
import os
import time

import optuna
from prefect import flow, get_run_logger
from prefect.futures import wait
from prefect.runtime import flow_run
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from bert_core.feature_cache import default_cache_dir
from bert_core.home import runs_root
from bert_core.spec import TaskSpec, load_spec
from bert_core.training import TrainConfig, effective_spec
from flows import sweep_study
from flows.params import FinetuneParams, SweepParams
from flows.suite import finetune_here, finetune_on_worker, share_cores
from flows.sweep_study import Range
from tasks import sweep_trial
from tasks.register import register_logged_run
from tasks.serving_precision import register_serving_precisions_of_run, serving_lines
from tasks.sweep import publish_sweep
from tasks.sweep_trial import SweepTrial
from tracking import store as tracking
from tracking.run import TrackedRun, create_run, read_run, reopen_run

POLL_SECONDS = 5  # how often the sweep looks for finished trials


@flow(name="bertflow-sweep")
def sweep(params: SweepParams = SweepParams()) -> dict:  # noqa: B008 (pydantic default = the UI form's)
    """Search, then register the best trial (and its serving precisions); returns the study, the trials, the
    best trial, its version and a line per serving precision asked."""
    log = get_run_logger()
    base = params.base
    uri = tracking.configure_tracking(tracking.check_tracking(base.tracking_uri))
    spec = load_spec(base.task)
    sweep_study.check_space(params.space, params.sampler, base.training.with_defaults(spec.defaults))
    budget = params.budget()
    grid = params.sampler == "grid"
    name = params.study_name or sweep_study.study_name(spec.name, params.identity())
    study = sweep_study.open_study(name, params.storage, sweep_study.make_sampler(params.sampler, params.seed),
                                   sweep_trial.make_pruner(params.pruner, params.pruning_startup_trials))
    _check_same_search(study, params)
    if grid:
        sweep_study.enqueue_grid(study, params.space, params.seed)
    _take_over_stale_trials(study)
    parent = _parent_run(study, spec, params, uri)
    left = sweep_study.trials_to_ask(study, budget, grid)
    log.info("sweep %s: %s over %s, %d of %d trials to run, %d at once, %s; MLflow run %s", name, params.sampler,
             list(params.space), left, budget, params.max_concurrency, params.deployment or "in processes here",
             parent.run_id)

    try:
        _run_trials(study, params, spec, name, parent.run_id, budget, grid)
        trials = sweep_study.trial_rows(study)
        best = sweep_study.best_trial(study)
        registered, serving = None, []
        if best is not None and params.register_best:
            registered = _register_best(spec, base, best["mlflow_run_id"])
            log.info("best trial %d (%s %.4f): %s is %s", best["number"], spec.primary_metric, best["value"],
                     registered["model_uri"], registered["alias"])
            serving = _serve_best(spec, base, best, registered)
        folder = runs_root(base.run_root) / "_sweeps" / name
        log_axes = [field for field, values in params.space.items() if isinstance(values, Range) and values.log]
        published = publish_sweep(spec.name, spec.primary_metric, trials, best, registered, serving,
                                  list(params.space), log_axes, str(folder), parent)
        if best is None:
            raise RuntimeError(f"sweep {name}: no trial completed; see {published['markdown']}")
        parent.end("FINISHED")
    except BaseException as err:
        parent.record_error(err)
        parent.end("FAILED")
        raise
    return {"study": name, "storage": tracking.mask_secrets(params.storage or sweep_trial.default_storage()),
            "mlflow_run_id": parent.run_id, "trials": trials, "best": best, "registered": registered,
            "serving": serving, "plot": published["plot"], "table": published["markdown"]}


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
    deadline = time.monotonic() + sweep_trial.GRACE_SECONDS + 2 * sweep_trial.HEARTBEAT_SECONDS
    while True:
        alive = sweep_study.fail_stale(study)
        if not alive:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"study {study.study_name!r} has trials running ({[t.number for t in alive]}) whose "
                               "sweep is alive: another sweep drives it; wait for it to end or give a new study_name")
        get_run_logger().warning("study %s: trials %s were running %s s ago; waiting for their sweep to be declared "
                                 "dead (no heartbeat for %d s) before taking them over", study.study_name,
                                 [t.number for t in alive], sweep_trial.GRACE_SECONDS, sweep_trial.GRACE_SECONDS)
        time.sleep(sweep_trial.HEARTBEAT_SECONDS)


def _parent_run(study: optuna.Study, spec: TaskSpec, params: SweepParams, uri: str) -> TrackedRun:
    """The sweep's MLflow run: the one an earlier run of this study started (in this store), or a new one."""
    earlier = study.user_attrs.get("mlflow_run_id")
    if earlier and (reopened := reopen_run(earlier)):
        return reopened  # else another tracking store, or deleted: start a new one
    run = create_run(tracking.experiment_for(spec.name, uri), f"sweep-{study.study_name}", {
        "task": spec.name, "family": spec.family, "sweep_study": study.study_name, "code_version": tracking.code_version(),
        "prefect.flow_run_id": flow_run.id or "none", "prefect.flow_run_name": flow_run.name or "none"})
    run.log_params({
        "space": json.dumps(params.identity()["space"]), "sampler": params.sampler, "n_trials": params.budget(),
        "pruner": params.pruner, "pruning_startup_trials": params.pruning_startup_trials, "seed": params.seed,
        "study": study.study_name, "storage": tracking.mask_secrets(params.storage or sweep_trial.default_storage()),
        "base": params.base.model_dump(mode="json", exclude={"sweep_trial"})})
    study.set_user_attr("mlflow_run_id", run.run_id)
    return run


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
                stop_asking = first_error is not None and not sweep_study.finished(study)
                while (not stop_asking and len(pending) < params.max_concurrency
                       and sweep_study.trials_to_ask(study, budget, grid) > 0):  # running trials count already
                    trial = sweep_study.ask(study)
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
            sweep_study.release(study, [t._trial_id for t in pending.values()])
            raise
    if first_error and not sweep_study.finished(study):
        raise RuntimeError(f"sweep {name}: the first trials failed, so the sweep stopped: {first_error}")


def _submit(runner, params: SweepParams, spec: TaskSpec, name: str, parent: str, trial: optuna.Trial):
    values = sweep_study.suggest(trial, params.space)
    base = params.base
    trial_params = base.model_copy(update={"training": _trial_training(base, values), "sweep_trial": SweepTrial(
        storage=_storage_for_trials(params.storage), study=name, trial_id=trial._trial_id, trial_number=trial.number,
        pruner=params.pruner, pruning_startup_trials=params.pruning_startup_trials, parent_run_id=parent)})
    get_run_logger().info("trial %d: %s", trial.number, ", ".join(f"{k} {v}" for k, v in values.items()))
    if params.deployment:
        return runner.submit(finetune_on_worker, {"deployment": params.deployment, "params": trial_params})
    return runner.submit(finetune_here, {"params": trial_params})


def _trial_training(base: FinetuneParams, values: dict) -> TrainConfig:
    """A trial's training config: the sweep's values over the base fine-tune's (the spec's defaults fill the rest
    when the trial's fine-tune starts)."""
    return TrainConfig(**{**base.training.model_dump(exclude_unset=True), **values})


def _storage_for_trials(url: str | None) -> str | None:
    """The storage URL a trial opens: the sweep's own, so trials on this machine reach its default SQLite file;
    None when it comes from $BERTFLOW_OPTUNA_STORAGE, which each worker then reads (a URL from the environment
    may hold a password, and a trial's parameters are stored in the clear)."""
    if url or os.environ.get(sweep_trial.ENV_STORAGE):
        return url
    return sweep_trial.default_storage()


def _tell(study: optuna.Study, trial: optuna.Trial, future, spec: TaskSpec) -> str | None:
    """Record a finished trial in the study; returns its error, if it failed."""
    log = get_run_logger()
    try:
        summary = future.result()
    except Exception as err:  # noqa: BLE001 (a failed trial is an outcome of the search, not its end)
        error = tracking.mask_secrets(f"{type(err).__name__}: {err}")[:2000]
        study._storage.set_trial_user_attr(trial._trial_id, sweep_study.ERROR_ATTR, error)
        study.tell(trial, state=sweep_study.State.FAIL)
        log.error("trial %d failed: %s", trial.number, error)
        return error
    study._storage.set_trial_user_attr(trial._trial_id, "mlflow_run_id", summary["mlflow_run_id"])
    if summary["pruned_at"]:
        study.tell(trial, state=sweep_study.State.PRUNED)
        log.info("trial %d pruned at evaluation %d", trial.number, summary["pruned_at"])
    else:
        study.tell(trial, summary["score"])
        log.info("trial %d: %s %.4f", trial.number, spec.primary_metric, summary["score"])
    return None


def _register_best(spec: TaskSpec, base: FinetuneParams, run_id: str) -> dict:
    """The best trial's logged model registered under the usual policy; once (a resumed sweep finds it done)."""
    tags = read_run(run_id).tags
    if "model_version" in tags:
        name, version = tags["model_name"], tags["model_version"]
        return {"model_name": name, "version": version, "model_uri": f"models:/{name}/{version}",
                "alias": tags["model_alias"], "reason": tags.get("model_decision", ""), "already": True}
    return register_logged_run(spec, run_id, base.registry_policy, base.registry_confidence).as_dict()


def _serve_best(spec: TaskSpec, base: FinetuneParams, best: dict, registered: dict) -> list[str]:
    """The base fine-tune's `serving_precisions`, each gated against the best trial's version and registered
    beside it, as that trial's fine-tune run alone would have; a line per precision. Once: a resumed sweep whose
    best trial was registered already reads the lines back from that trial's run."""
    run_id = best["mlflow_run_id"]
    if not base.serving_precisions:
        return []
    if registered.get("already"):
        return serving_lines(read_run(run_id).tags)
    # The trial's own config and spec, as its fine-tune made them: its dev rows and features, not the base's.
    cfg = _trial_training(base, best["params"]).with_defaults(spec.defaults)
    return register_serving_precisions_of_run(effective_spec(spec, cfg), cfg, run_id, registered["model_name"],
                                              registered["version"], base.serving_precisions, base.precision_margin,
                                              base.data_dir, base.drop_bad_rows, str(default_cache_dir()))
