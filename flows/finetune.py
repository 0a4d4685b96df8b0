"""The `finetune` flow: download -> tokenize -> fine_tune -> evaluate -> register, one MLflow run per flow run.

Runs the same with no Prefect server (ephemeral mode: `bertflow run sst2`) and as a
deployment picked up by a worker (prefect.yaml). Everything a run produces sits in its run folder
`<run_root>/<task>/<run name>` and in its MLflow run; a failed run ends FAILED in MLflow with the error
as the `error` tag and `error.txt`, and registers no model version. A retry first closes the MLflow run
(and retracts the model version) of an earlier attempt that lost the tracking server (tasks.lost_attempts).
"""

from __future__ import annotations

import os
import traceback
from datetime import UTC, datetime
from pathlib import Path

import datasets
import mlflow
import yaml
from prefect import flow, get_run_logger
from prefect.runtime import deployment, flow_run

from bert_core.checkpoint import OFFLINE_DEFAULT
from bert_core.spec import TaskSpec, load_spec
from flows.params import FinetuneParams
from tasks import tracking
from tasks.data import download
from tasks.evaluate import evaluate
from tasks.lost_attempts import close_lost_attempts
from tasks.register import register
from tasks.tokenize import tokenize
from tasks.train import fine_tune


@flow(name="bertflow-finetune")
def finetune(params: FinetuneParams = FinetuneParams()) -> dict:  # noqa: B008 (pydantic default = the UI form's)
    """Fine-tune one task spec and register the model; returns the run's summary."""
    log = get_run_logger()
    # Fail fast, before any data or training, when MLflow cannot be reached (the message names the URI).
    uri = tracking.configure_tracking(tracking.check_tracking(params.tracking_uri))
    datasets.disable_progress_bars()  # one bar per split saved would drown the flow's log
    spec = load_spec(params.task)
    cfg = params.training.with_defaults(spec.defaults)
    run_dir = _run_dir(params, spec)
    cache_dir = os.environ.get("BERTFLOW_CACHE_DIR") or str(tracking.bertflow_home() / "cache" / "features")
    pretrained_id = params.pretrained or OFFLINE_DEFAULT
    tags = {"task": spec.name, "family": spec.family, "pretrained": pretrained_id,
            "code_version": tracking.code_version(),
            "prefect.flow_run_id": flow_run.id or "none", "prefect.flow_run_name": flow_run.name or "none",
            "prefect.deployment": deployment.name or "none"}
    log.info("%s: run folder %s, MLflow %s", spec.name, run_dir, tracking.mask_secrets(uri))

    experiment_id = tracking.experiment_for(spec.name, uri)
    if flow_run.id:  # a retry: end what an attempt that lost the tracking server left open
        close_lost_attempts(experiment_id, flow_run.id)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_dir.name, tags=tags,
                          log_system_metrics=True) as run:
        run_id = run.info.run_id
        try:
            tracking.log_params_safely({
                "task": spec.name, "spec": params.task, "pretrained": pretrained_id, "training": cfg.model_dump(),
                "data_dir": params.data_dir, "drop_bad_rows": params.drop_bad_rows,
                "registry_policy": params.registry_policy, "registry_confidence": params.registry_confidence,
                "run_dir": str(run_dir)})
            mlflow.log_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), "task_spec.yaml")

            data = download(spec, str(run_dir), params.data_dir, params.drop_bad_rows)
            mlflow.set_tag("data_fingerprint", data.fingerprint)
            tracking.log_params_safely({"data": {"source": data.source, "rows": data.rows, "dropped": data.dropped,
                                                 "carve": data.carve}})
            features = tokenize(spec, cfg, data, params.pretrained, cache_dir)
            tracking.log_params_safely({"features": features["settings"]})
            trained = fine_tune(spec, cfg, data, str(run_dir), run_id, params.pretrained, cache_dir)
            evaluation = evaluate(spec, cfg, data, trained, str(run_dir), run_id, cache_dir)
            # The registry notes when versions were scored on different dev rows: other data or eval cap.
            dev_rows = f"{data.fingerprint}|eval[:{cfg.max_eval_samples}]"
            decision = register(spec, data, trained, evaluation, run_id, params.registry_policy, dev_rows,
                                params.registry_confidence)
        except BaseException as err:  # noqa: BLE001 (record it, then let Prefect see the failure)
            mlflow.set_tag("error", tracking.mask_secrets(f"{type(err).__name__}: {err}")[:5000])
            mlflow.log_text(tracking.mask_secrets(traceback.format_exc()), "error.txt")
            raise  # start_run's context manager ends the MLflow run as FAILED

    return {
        "task": spec.name, "family": spec.family, "mlflow_run_id": run_id,
        "tracking_uri": tracking.mask_secrets(uri),
        "model_name": decision["model_name"], "model_version": decision["version"],
        "model_uri": decision["model_uri"], "alias": decision["alias"], "champion": decision["became_champion"],
        "decision": decision["reason"], "primary_metric": spec.primary_metric, "score": decision["new_score"],
        "champion_score_before": decision["champion_score"], "metrics": evaluation["metrics"],
        "train_seconds": trained["train_seconds"], "examples_per_second": trained["examples_per_second"],
        # tokenize found its features cached; fit found tokenize's (False there = a key mismatch, a bug).
        "feature_cache": {"tokenize_hit": features["cache_hit"], "fit_hit": trained["feature_cache_hit"]},
        "run_dir": str(run_dir),
    }


def _run_dir(params: FinetuneParams, spec: TaskSpec) -> Path:
    """`<run_root>/<task>/<start time>-<flow run name>`: the same folder when Prefect retries the flow run,
    so the fine-tune resumes from its checkpoints."""
    root = Path(params.run_root).expanduser() if params.run_root else tracking.bertflow_home() / "runs"
    if flow_run.id:
        name = f"{flow_run.scheduled_start_time:%Y%m%d-%H%M%S}-{flow_run.name}"
    else:  # called as plain Python (`finetune.fn(...)`): no flow run to name the folder after
        name = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    folder = root / spec.name / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder
