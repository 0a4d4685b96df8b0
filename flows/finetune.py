"""The `finetune` flow: download -> tokenize -> train_model -> evaluate -> register, one MLflow run per flow run.

Runs the same with no Prefect server (ephemeral mode: `bertflow run sst2`) and as a
deployment picked up by a worker (prefect.yaml). Everything a run produces sits in its run folder
`<run_root>/<task>/<run name>` (flows/run_folder.py: a new run with the parameters of an interrupted one takes
its folder over and resumes) and in its MLflow run (tracking/run.py); a failed run ends FAILED in MLflow with
the error as the `error` tag and `error.txt`, records `failed` and the error in its folder's `run.json`, and
registers no model version.

Retrain on change (tracking/retrain.py): once the data is read, the fine-tune's identity (data fingerprint, task
spec, pretrained checkpoint, recipe, code version) is recorded on its MLflow run and compared with what the
task's champion was trained on. Nothing changed: nothing is trained or registered, the MLflow run ends FINISHED
tagged `skipped`, the run folder is removed (one taken over from an interrupted run is left as it was), and the
flow run ends Completed with the message "no change since models:/bert-<task>/<N>"; its summary lists the serving
precisions version N's run registered beside it (tasks/serving_precision.py). `force` and a sweep's trials
train anyway. From the comparison through registration a fine-tune holds the slot of its registered model's
Prefect concurrency limit (`bertflow-model:bert-<task>`, tasks/model_lock.py): a second fine-tune of the same
model started meanwhile waits, saying so, then compares with what the first registered. Sweep trials take no slot.

Errors of the input (spec, data, metric vs labels) fail at once; only what may heal (tracking server or hub
unreachable, I/O) is retried (tasks/retry_policy.py). A retry first closes the MLflow run (and retracts the
model version) of an earlier attempt that lost the tracking server (tasks.lost_attempts). A registered model as
`pretrained` (`models:/bert-snli@champion`) is pinned first (tasks/pretrained.py), so a wrong URI fails before
anything else, and its version is the parent named by the run's and the version's tags and by the model card
(tracking/parent_model.py).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import datasets
import yaml
from prefect import flow, get_run_logger
from prefect.runtime import deployment, flow_run
from prefect.states import Completed

from bert_core.checkpoint import OFFLINE_DEFAULT
from bert_core.feature_cache import default_cache_dir
from bert_core.spec import TaskSpec, load_spec
from bert_core.training import TrainConfig, effective_spec, rows_name
from flows import run_folder
from flows.params import FinetuneParams
from flows.summary import FinetuneSummary
from tasks.data import DataInfo, download
from tasks.evaluate import Evaluation, evaluate_model
from tasks.lost_attempts import close_lost_attempts
from tasks.model_lock import one_finetune_at_a_time
from tasks.pretrained import resolve_pretrained
from tasks.register import Registered, log_trained_model, register
from tasks.retrain import compare_with_champion, skip_unchanged
from tasks.retry_policy import give_up_unless_transient
from tasks.serving_precision import register_serving_precisions, serving_lines_of_version
from tasks.sweep_trial import SweepTrial
from tasks.tokenize import FeaturesInfo, tokenize
from tasks.train import Trained, train_model
from tracking import store as tracking
from tracking.parent_model import PretrainedSource
from tracking.registration import LoggedModel
from tracking.registry import model_name
from tracking.retrain import Comparison
from tracking.run import TrackedRun, start_run


# A retry heals what was briefly wrong (tracking server or hub unreachable, an I/O error, a lost worker),
# after a pause long enough for a restart; errors of the input fail at once (tasks/retry_policy.py).
@flow(name="bertflow-finetune", retries=1, retry_delay_seconds=60)
def finetune(params: FinetuneParams = FinetuneParams()) -> dict:  # noqa: B008 (pydantic default = the UI form's)
    """Fine-tune one task spec and register the model; returns the run's summary (`unchanged_since` set when
    nothing changed: then nothing was trained)."""
    try:
        # Fail fast, before any data or training, when MLflow cannot be reached (the message names the URI).
        uri = tracking.configure_tracking(tracking.check_tracking(params.tracking_uri))
        datasets.disable_progress_bars()  # one bar per split saved would drown the flow's log
        spec = load_spec(params.task)
        cfg = params.training.with_defaults(spec.defaults)
        # The training config's class weights and decision threshold in the spec's place, for every step (the data
        # check included), checked now, before any data is read.
        spec = effective_spec(spec, cfg)
        # A registered model as `pretrained` is pinned here, once: the identity names its version.
        source = resolve_pretrained(params.pretrained, spec, cfg)
        with run_folder.claim(params, spec, cfg, source.name) as folder:
            try:
                summary = _tracked_run(params, spec, cfg, folder, uri, source)
            except BaseException as err:
                folder.update(status=run_folder.FAILED, ended=run_folder.now(),
                              error=tracking.mask_secrets(f"{type(err).__name__}: {err}")[:2000])
                raise
            if summary.unchanged_since:  # nothing trained: the folder holds nothing worth keeping
                folder.release_unused()
                _say(f"{summary.decision} ({summary.alias or 'no alias'}): nothing trained, nothing registered; "
                     "`force` trains anyway")
                for line in summary.serving:  # the versions that serve it faster, registered by its run
                    _say(f"beside {summary.model_uri}, {line}")
                return Completed(message=summary.decision, data=summary.as_dict())
            if not params.keep_checkpoints_after_success:
                folder.keep_only_results()
            folder.update(status=run_folder.FINISHED, ended=run_folder.now())
            summary.run_dir_bytes = run_folder.size(folder.path)
        model = f"{summary.model_uri} is {summary.alias}" if summary.model_uri else "no model registered"
        _say(f"done: {spec.primary_metric} {summary.score:.4f}, {model}; run folder "
             f"{folder.path} keeps {summary.run_dir_bytes / 1e6:,.1f} MB")
        return summary.as_dict()
    except Exception as err:
        give_up_unless_transient(err)
        raise


def _say(message: str) -> None:
    """One line per step for people: `bertflow run` shows these and hides Prefect's own INFO lines."""
    get_run_logger(bertflow_step=True).info(message)


def _tracked_run(params: FinetuneParams, spec: TaskSpec, cfg: TrainConfig, folder: run_folder.RunFolder,
                 uri: str, source: PretrainedSource) -> FinetuneSummary:
    """The five steps inside one MLflow run; a failure ends the run FAILED with the error recorded."""
    log, run_dir, cache_dir = get_run_logger(), str(folder.path), str(default_cache_dir())
    log.info("%s: run folder %s, MLflow %s", spec.name, run_dir, tracking.mask_secrets(uri))
    experiment_id = tracking.experiment_for(spec.name, uri)
    interrupted = folder.record.get("mlflow_run_id") if folder.taken_over else None
    if taking_over := folder.take_over():
        log.warning(taking_over)
    # End what an earlier attempt of this flow run (a retry), or the interrupted run, left open.
    close_lost_attempts(experiment_id, flow_run.id, interrupted, folder.record.get("tracking_uri"))
    tags = _run_tags(params, spec, interrupted) | source.tags()  # a parent model: its lineage
    trial = params.sweep_trial  # a sweep's trial: its run is a child of the sweep's run in the MLflow UI
    with start_run(experiment_id, folder.path.name, tags, trial.parent_run_id if trial else None) as run:
        folder.update(mlflow_run_id=run.run_id, tracking_uri=tracking.mask_secrets(uri), status=run_folder.RUNNING,
                      started=run_folder.now(), error=None)
        run.log_params(_run_params(params, spec, cfg, run_dir))
        run.log_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), "task_spec.yaml")
        data = download(spec, run_dir, params.data_dir, params.drop_bad_rows)
        _say(_data_line(data))
        run.set_tag("data_fingerprint", data.fingerprint)
        if set_aside := folder.set_aside_if_changed(data.fingerprint, tags["code_version"]):
            log.warning(set_aside)
        run.log_params({"data": {"source": data.source, "rows": data.rows, "dropped": data.dropped, "carve": data.carve}})
        # From the comparison through registration, one fine-tune of this registered model at a time: a second
        # one waits here, then compares with what the first registered (tasks/model_lock.py).
        with _model_slot(spec, trial):
            comparison = compare_with_champion(spec, folder.identity, run)
            if (since := comparison.unchanged) and not (params.force or trial):
                serving = serving_lines_of_version(since)  # what its run registered beside it: int8, ...
                skip_unchanged(spec, since, run, serving)
                return FinetuneSummary.unchanged(spec, run.run_id, tracking.mask_secrets(uri), since, serving)
            _say(_comparison_line(comparison, params))
            features = tokenize(spec, cfg, data, source.path, cache_dir)
            _say(_features_line(features))
            run.log_params({"features": features.settings})
            trained = train_model(spec, cfg, data, run_dir, run, source.path, cache_dir, trial, folder.identity,
                                  source.name if source.parent else None)
            _say(_trained_line(trained, spec.primary_metric))
            evaluation = evaluate_model(spec, cfg, data, trained, run_dir, run, cache_dir)
            _say(_evaluation_line(evaluation, spec.primary_metric))
            logged, registered, serving = _log_and_register(params, spec, cfg, data, trained, evaluation, run, source)
    return FinetuneSummary.from_steps(spec, run.run_id, tracking.mask_secrets(uri), run_dir, features, trained,
                                      evaluation, logged, registered, serving)


def _model_slot(spec: TaskSpec, trial: SweepTrial | None) -> AbstractContextManager:
    """The slot of the task's registered model (held as long as the block runs), or nothing for a sweep's trial:
    trials run side by side and register nothing (the sweep registers its best)."""
    return nullcontext() if trial else one_finetune_at_a_time(model_name(spec.name), _say)


def _run_tags(params: FinetuneParams, spec: TaskSpec, interrupted: str | None) -> dict[str, str]:
    """The MLflow run's tags: what ran, which code, which Prefect flow run, and which sweep trial it is."""
    tags = {"task": spec.name, "family": spec.family, "pretrained": params.pretrained or OFFLINE_DEFAULT,
            "code_version": tracking.code_version(),
            "prefect.flow_run_id": flow_run.id or "none", "prefect.flow_run_name": flow_run.name or "none",
            "prefect.deployment": deployment.name or "none"}
    if trial := params.sweep_trial:
        tags |= {"sweep_study": trial.study, "sweep_trial": str(trial.trial_number)}
    if interrupted:
        tags["resumed_from_run"] = interrupted
    return tags


def _run_params(params: FinetuneParams, spec: TaskSpec, cfg: TrainConfig, run_dir: str) -> dict:
    """The MLflow run's params before any data is read (the data's and the features' follow)."""
    return {"task": spec.name, "spec": params.task, "pretrained": params.pretrained or OFFLINE_DEFAULT,
            "training": cfg.model_dump(), "data_dir": params.data_dir, "drop_bad_rows": params.drop_bad_rows,
            "registry_policy": params.registry_policy, "registry_confidence": params.registry_confidence,
            "serving_precisions": params.serving_precisions, "precision_margin": params.precision_margin,
            "run_dir": run_dir}


def _log_and_register(params: FinetuneParams, spec: TaskSpec, cfg: TrainConfig, data: DataInfo, trained: Trained,
                      evaluation: Evaluation, run: TrackedRun,
                      source: PretrainedSource) -> tuple[LoggedModel | None, Registered | None, list[str]]:
    """Step 5: nothing for a pruned sweep trial, the logged model for a trial that finished (the sweep registers
    its best), the logged model and its registered version otherwise; and a line per serving precision asked
    (its own version, or why not)."""
    if trained.pruned_at:
        run.set_tag("sweep_pruned_at", trained.pruned_at)
        _say(f"5/5 pruned by the sweep at evaluation {trained.pruned_at}: no model logged")
        return None, None, []
    # The registry notes when versions were scored on different dev rows: other data or eval cap.
    dev_rows = rows_name(data.fingerprint, "eval", cfg.max_eval_samples)
    logged = log_trained_model(spec, cfg, data, trained, evaluation, run, dev_rows, source)
    if params.sweep_trial:
        _say(f"5/5 logged {logged.model_uri}; a sweep trial registers nothing (the sweep registers its best trial)")
        return logged, None, []
    registered = register(spec, run, logged, evaluation.splits["eval"], dev_rows, params.registry_policy,
                          params.registry_confidence, data.label_names,
                          {"train_seconds": trained.train_seconds, "examples_per_second": trained.examples_per_second})
    _say(f"5/5 register: {registered.model_uri} is {registered.decision.alias}: {registered.decision.reason}")
    serving = []
    if params.serving_precisions:  # each gated on dev against this fp32 version; logs its own line
        serving = register_serving_precisions(spec, cfg, data, trained.model_dir, run, logged,
                                              registered.decision.name, registered.decision.version,
                                              params.serving_precisions, params.precision_margin,
                                              str(default_cache_dir()))
    return logged, registered, serving


# ---- the step lines for people ------------------------------------------------------------------------------
def _comparison_line(comparison: Comparison, params: FinetuneParams) -> str:
    """Why this fine-tune trains, said before it does."""
    if comparison.unchanged:
        return (f"no change since {comparison.unchanged.uri}; trained anyway "
                f"({'a sweep trial' if params.sweep_trial else 'force'})")
    if comparison.champion is None:
        return "no champion yet: training"
    return f"changed since {comparison.champion.uri}: {'; '.join(comparison.changes)}"


def _data_line(data: DataInfo) -> str:
    dropped = f", {data.dropped} bad rows dropped" if data.dropped else ""
    return (f"1/5 data: {', '.join(f'{s} {n:,}' for s, n in data.rows.items())} rows from {data.source} "
            f"(fingerprint {data.fingerprint[:12]}){dropped}")


def _features_line(features: FeaturesInfo) -> str:
    return ("2/5 features: " + ", ".join(f"{s} {f.features:,}" for s, f in features.splits.items())
            + f" ({'from the cache' if features.cache_hit else 'built'}, max_seq_length "
            f"{features.settings['max_seq_length']})")


def _threads_story(used: list[dict]) -> str:
    """``1 thread, 2 from step 37``: the count at the start and each change the load made (bert_core/training/threads.py)."""
    first = used[0]["threads"]
    return f"{first} thread{'s' if first > 1 else ''}" + "".join(f", {u['threads']} from step {u['step']}" for u in used[1:])


def _trained_line(trained: Trained, metric: str) -> str:
    resumed = f", resumed at step {trained.resumed_from_step}" if trained.resumed_from_step else ""
    threads = _threads_story(trained.threads_used) if len(trained.threads_used) > 1 else \
        f"{trained.threads} thread{'s' if trained.threads > 1 else ''}"
    return (f"3/5 fine-tune: {trained.train_rows:,} rows, {trained.final_step:,} steps in "
            f"{trained.train_seconds:.0f} s ({trained.examples_per_second:.1f} examples/s, {trained.precision}, "
            f"{threads}{resumed}); best dev {metric} {trained.best_metric:.4f} at step {trained.best_step}")


def _evaluation_line(evaluation: Evaluation, metric: str) -> str:
    low, high = evaluation.intervals[metric]
    scores = "; ".join(f"{split} " + ", ".join(f"{m} {v:.4f}" for m, v in split_scores.items())
                       for split, split_scores in evaluation.splits.items())
    return f"4/5 evaluate: {scores} (eval {metric} 95% interval {low:.4f} to {high:.4f})"
