"""The `finetune` flow: download -> tokenize -> fine_tune -> evaluate -> register, one MLflow run per flow run.

Runs the same with no Prefect server (ephemeral mode: `bertflow run sst2`) and as a
deployment picked up by a worker (prefect.yaml). Everything a run produces sits in its run folder
`<run_root>/<task>/<run name>` (flows/run_folder.py: a new run with the parameters of an interrupted one takes
its folder over and resumes) and in its MLflow run; a failed run ends FAILED in MLflow with the error
as the `error` tag and `error.txt`, records `failed` and the error in its folder's `run.json`, and
registers no model version. Errors of the input (spec, data, metric vs labels) fail at once; only what
may heal (tracking server or hub unreachable, I/O) is retried (tasks/retry_policy.py). A retry first
closes the MLflow run (and retracts the model version) of an earlier attempt that lost the tracking
server (tasks.lost_attempts).
"""

from __future__ import annotations

import traceback

import datasets
import mlflow
import yaml
from prefect import flow, get_run_logger
from prefect.runtime import deployment, flow_run

from bert_core.checkpoint import OFFLINE_DEFAULT
from bert_core.feature_cache import default_cache_dir
from bert_core.spec import TaskSpec, load_spec
from bert_core.training import TrainConfig, rows_name
from bert_core.training.state import list_checkpoints
from flows import run_folder
from flows.params import FinetuneParams
from flows.summary import FinetuneSummary
from tasks.data import download
from tasks.evaluate import evaluate
from tasks.lost_attempts import close_lost_attempts
from tasks.register import log_trained_model, register
from tasks.retry_policy import give_up_unless_transient
from tasks.tokenize import tokenize
from tasks.train import fine_tune
from tracking import store as tracking


# A retry heals what was briefly wrong (tracking server or hub unreachable, an I/O error, a lost worker),
# after a pause long enough for a restart; errors of the input fail at once (tasks/retry_policy.py).
@flow(name="bertflow-finetune", retries=1, retry_delay_seconds=60)
def finetune(params: FinetuneParams = FinetuneParams()) -> dict:  # noqa: B008 (pydantic default = the UI form's)
    """Fine-tune one task spec and register the model; returns the run's summary."""
    try:
        # Fail fast, before any data or training, when MLflow cannot be reached (the message names the URI).
        uri = tracking.configure_tracking(tracking.check_tracking(params.tracking_uri))
        datasets.disable_progress_bars()  # one bar per split saved would drown the flow's log
        spec = load_spec(params.task)
        cfg = params.training.with_defaults(spec.defaults)
        with run_folder.claim(params, spec, cfg) as folder:
            try:
                summary = _tracked_run(params, spec, cfg, folder, uri)
            except BaseException as err:
                folder.update(status=run_folder.FAILED, ended=run_folder.now(),
                              error=tracking.mask_secrets(f"{type(err).__name__}: {err}")[:2000])
                raise
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
                 uri: str) -> FinetuneSummary:
    """The five steps inside one MLflow run; a failure ends the run FAILED with the error recorded."""
    log = get_run_logger()
    run_dir = folder.path
    cache_dir = str(default_cache_dir())
    pretrained_id = params.pretrained or OFFLINE_DEFAULT
    tags = {"task": spec.name, "family": spec.family, "pretrained": pretrained_id,
            "code_version": tracking.code_version(),
            "prefect.flow_run_id": flow_run.id or "none", "prefect.flow_run_name": flow_run.name or "none",
            "prefect.deployment": deployment.name or "none"}
    if trial := params.sweep_trial:  # the trial's run is a child of the sweep's run in the MLflow UI
        tags |= {"sweep_study": trial.study, "sweep_trial": str(trial.trial_number)}
        if trial.parent_run_id:
            tags["mlflow.parentRunId"] = trial.parent_run_id
    log.info("%s: run folder %s, MLflow %s", spec.name, run_dir, tracking.mask_secrets(uri))

    experiment_id = tracking.experiment_for(spec.name, uri)
    interrupted = folder.record.get("mlflow_run_id") if folder.taken_over else None
    if folder.taken_over:
        was = run_folder.FAILED if folder.record.get("status") == run_folder.FAILED else run_folder.INTERRUPTED
        done = list_checkpoints(run_dir / "training" / "checkpoints")
        log.warning("%s: taking over the %s run folder %s (same task, data root, checkpoint and recipe): %s",
                    spec.name, was, run_dir, f"training resumes from its checkpoint {done[-1].name}" if done
                    else "it holds no checkpoint, so training starts from the beginning")
        folder.update(earlier=[*folder.record.get("earlier", []), {
            k: folder.record.get(k) for k in ("mlflow_run_id", "tracking_uri", "status", "error", "started", "ended")}])
        if interrupted:
            tags["resumed_from_run"] = interrupted
    # End what an earlier attempt of this flow run (a retry), or the interrupted run, left open.
    close_lost_attempts(experiment_id, flow_run.id, interrupted, folder.record.get("tracking_uri"))
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_dir.name, tags=tags,
                          log_system_metrics=True) as run:
        run_id = run.info.run_id
        folder.update(mlflow_run_id=run_id, tracking_uri=tracking.mask_secrets(uri), status=run_folder.RUNNING,
                      started=run_folder.now(), error=None)
        try:
            tracking.log_params_safely({
                "task": spec.name, "spec": params.task, "pretrained": pretrained_id, "training": cfg.model_dump(),
                "data_dir": params.data_dir, "drop_bad_rows": params.drop_bad_rows,
                "registry_policy": params.registry_policy, "registry_confidence": params.registry_confidence,
                "run_dir": str(run_dir)})
            mlflow.log_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), "task_spec.yaml")

            data = download(spec, str(run_dir), params.data_dir, params.drop_bad_rows)
            _say(f"1/5 data: {', '.join(f'{s} {n:,}' for s, n in data.rows.items())} rows from {data.source} "
                 f"(fingerprint {data.fingerprint[:12]})" + (f", {data.dropped} bad rows dropped" if data.dropped else ""))
            mlflow.set_tag("data_fingerprint", data.fingerprint)
            _set_aside_if_changed(folder, data.fingerprint, tags["code_version"])
            tracking.log_params_safely({"data": {"source": data.source, "rows": data.rows, "dropped": data.dropped,
                                                 "carve": data.carve}})
            features = tokenize(spec, cfg, data, params.pretrained, cache_dir)
            _say("2/5 features: " + ", ".join(f"{s} {f['features']:,}" for s, f in features["splits"].items())
                 + f" ({'from the cache' if features['cache_hit'] else 'built'}, max_seq_length "
                 f"{features['settings']['max_seq_length']})")
            tracking.log_params_safely({"features": features["settings"]})
            trained = fine_tune(spec, cfg, data, str(run_dir), run_id, params.pretrained, cache_dir, params.sweep_trial)
            resumed = f", resumed at step {trained['resumed_from_step']}" if trained["resumed_from_step"] else ""
            _say(f"3/5 fine-tune: {trained['train_rows']:,} rows, {trained['final_step']:,} steps in "
                 f"{trained['train_seconds']:.0f} s ({trained['examples_per_second']:.1f} examples/s, "
                 f"{trained['precision']}, {trained['threads']} thread{'s' if trained['threads'] > 1 else ''}{resumed}); best dev {spec.primary_metric} {trained['best_metric']:.4f} "
                 f"at step {trained['best_step']}")
            evaluation = evaluate(spec, cfg, data, trained, str(run_dir), run_id, cache_dir)
            low, high = evaluation["intervals"][spec.primary_metric]
            _say("4/5 evaluate: " + "; ".join(
                f"{split} " + ", ".join(f"{m} {v:.4f}" for m, v in scores.items())
                for split, scores in evaluation["splits"].items())
                + f" (eval {spec.primary_metric} 95% interval {low:.4f} to {high:.4f})")
            # The registry notes when versions were scored on different dev rows: other data or eval cap.
            dev_rows = rows_name(data.fingerprint, "eval", cfg.max_eval_samples)
            decision, logged = None, None
            if trained["pruned_at"]:
                mlflow.set_tag("sweep_pruned_at", trained["pruned_at"])
                _say(f"5/5 pruned by the sweep at evaluation {trained['pruned_at']}: no model logged")
            else:
                logged = log_trained_model(spec, cfg, data, trained, evaluation, run_id, dev_rows, params.pretrained)
                if params.sweep_trial:
                    _say(f"5/5 logged {logged['logged_model_uri']}; a sweep trial registers nothing (the sweep "
                         "registers its best trial)")
                else:
                    decision = register(spec, run_id, logged, evaluation["splits"]["eval"], dev_rows,
                                        params.registry_policy, params.registry_confidence, data.label_names,
                                        {k: trained[k] for k in ("train_seconds", "examples_per_second")})
                    _say(f"5/5 register: {decision['model_uri']} is {decision['alias']}: {decision['reason']}")
        except BaseException as err:  # noqa: BLE001 (record it, then let Prefect see the failure)
            mlflow.set_tag("error", tracking.mask_secrets(f"{type(err).__name__}: {err}")[:5000])
            mlflow.log_text(tracking.mask_secrets(traceback.format_exc()), "error.txt")
            raise  # start_run's context manager ends the MLflow run as FAILED

    decision = decision or {}
    return FinetuneSummary(
        task=spec.name, family=spec.family, mlflow_run_id=run_id, tracking_uri=tracking.mask_secrets(uri),
        model_name=decision.get("model_name"), model_version=decision.get("version"),
        model_uri=decision.get("model_uri"), alias=decision.get("alias"), champion=decision.get("became_champion"),
        decision=decision.get("reason"), primary_metric=spec.primary_metric,
        score=evaluation["splits"]["eval"][spec.primary_metric],
        interval=evaluation["intervals"][spec.primary_metric], champion_score_before=decision.get("champion_score"),
        metrics=evaluation["metrics"], train_rows=trained["train_rows"], eval_rows=trained["eval_rows"],
        steps=trained["final_step"], train_seconds=trained["train_seconds"],
        examples_per_second=trained["examples_per_second"], run_dir=str(run_dir), run_dir_bytes=None,
        # tokenize found its features cached; fit found tokenize's (False there = a key mismatch, a bug).
        feature_cache={"tokenize_hit": features["cache_hit"], "fit_hit": trained["feature_cache_hit"]},
        logged_model_uri=logged["logged_model_uri"] if logged else None, pruned_at=trained["pruned_at"])


def _set_aside_if_changed(folder: run_folder.RunFolder, fingerprint: str, code_version: str) -> None:
    """A taken-over folder whose data or code changed since: its checkpoints belong to another fine-tune
    (fit would refuse them, or resume a recipe that no longer exists), so they are set aside and training
    starts over."""
    changed = [f"{what} changed ({before[:12]} -> {now[:12]})"
               for what, key, now in (("the data", "data_fingerprint", fingerprint), ("the code", "code_version", code_version))
               if (before := folder.record.get(key)) not in (None, now)]
    if changed:
        stale = folder.set_aside("; ".join(changed))
        if stale is not None:
            get_run_logger().warning("%s since this folder's earlier run: its checkpoints moved to %s, training "
                                     "starts over", " and ".join(changed), stale)
    folder.update(data_fingerprint=fingerprint, code_version=code_version)
