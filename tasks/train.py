"""The `fine_tune` task: `bert_core.training.fit` with its progress sent to MLflow and to Prefect.

Checkpoints go to `<run_dir>/training/checkpoints`; a retry of this task (same `run_dir`) resumes from
the newest complete one, so a crash costs at most `checkpoint_minutes` of training (or `checkpoint_every` steps).
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import mlflow
from mlflow.entities import Metric
from mlflow.utils.time import get_current_time_millis
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from bert_core.checkpoint import OFFLINE_DEFAULT
from bert_core.search import SweepTrial, TrialReporter
from bert_core.spec import TaskSpec
from bert_core.training import TrainConfig, fit
from tasks.data import DataInfo, load_split
from tasks.retry_policy import retry_if_transient

MAX_METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch call

# Logged once per run, beside the evaluate task's `<split>_<metric>` scores.
TRAINING_METRICS = ("train_seconds", "examples_per_second", "tokens_per_second", "best_step", "final_step",
                    "train_rows", "eval_rows")


def artifact_key(task_name: str, what: str) -> str:
    """Prefect artifact keys allow only lowercase letters, digits and dashes."""
    slug = "".join(c if c.isalnum() else "-" for c in task_name.lower()).strip("-")
    return f"{slug}-{what}"


class TrackingCallback:
    """fit's progress -> MLflow metrics of run `run_id` and a Prefect progress artifact.

    Per-step metrics go under `train/` and the evaluations made during training under `dev_curve/`,
    so the MLflow UI shows them as two chart sections; the final scores of the best model are logged
    by the evaluate task as `eval_<metric>`.

    Neither may slow training down. Every step's metrics keep their own step and time, but reach the store in
    one batch every `FLUSH_SECONDS`, at each evaluation and when `fine_tune` ends (also on failure): one call
    instead of one per log event. The call is made on the training thread on purpose: MLflow's background sender takes its CPU from the
    training threads anyway when they use every core, and it did not pay when measured (docs/benchmarks.md).
    The progress artifact, a call to the Prefect API, is updated at most every `FLUSH_SECONDS` too.
    """

    FLUSH_SECONDS = 30.0

    def __init__(self, run_id: str, task_name: str):
        self.run_id, self.task_name = run_id, task_name
        self.total_steps, self.progress_id, self.step = 1, None, 0
        self.client, self.pending, self.flushed_at = mlflow.MlflowClient(), [], time.monotonic()

    def on_train_start(self, info: dict) -> None:
        self.total_steps = max(info["total_steps"], 1)
        done = info["resumed_from_step"] or 0
        self.progress_id = create_progress_artifact(
            progress=100 * done / self.total_steps, key=artifact_key(self.task_name, "fine-tune-progress"),
            description=f"{self.task_name}: optimizer steps done of {info['total_steps']}")

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self.step = step
        self._add("train", step, metrics)
        if time.monotonic() - self.flushed_at >= self.FLUSH_SECONDS:
            self.flush()

    def on_evaluate(self, step: int, metrics: dict[str, float]) -> None:
        self._add("dev_curve", step, metrics)
        self.flush()

    def flush(self) -> None:
        """Send the metrics gathered since the last flush and update the progress artifact."""
        for start in range(0, len(self.pending), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=self.pending[start:start + MAX_METRICS_PER_BATCH])
        self.pending = []
        if self.progress_id is not None:
            update_progress_artifact(self.progress_id, progress=100 * self.step / self.total_steps)
        self.flushed_at = time.monotonic()

    def _add(self, section: str, step: int, metrics: dict[str, float]) -> None:
        now = get_current_time_millis()
        self.pending += [Metric(f"{section}/{k}", float(v), now, step) for k, v in metrics.items()]


# An immediate retry resumes from the newest checkpoint after a crash of unknown cause; a diverged loss or
# bad settings fail at once (tasks/retry_policy.py).
@task(retries=1, retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)
def fine_tune(spec: TaskSpec, cfg: TrainConfig, data: DataInfo, run_dir: str, run_id: str,
              pretrained: str | None = None, cache_dir: str | None = None, trial: SweepTrial | None = None) -> dict:
    """Fine-tune on the saved train split, select on the eval split; returns paths and numbers only.

    `cfg` must already hold the spec's defaults. `run_id`: the MLflow run receiving the metrics. `trial`: the
    sweep trial this fine-tune is, whose pruner may stop it (`pruned_at` in the result: that evaluation).
    """
    train_rows = load_split(data, "train", cfg.max_train_samples)
    eval_rows = load_split(data, "eval", cfg.max_eval_samples)
    output_dir = Path(run_dir) / "training"
    callbacks = [TrackingCallback(run_id, spec.name)]
    reporter = TrialReporter(trial, spec.primary_metric) if trial else None
    if reporter:
        callbacks.append(reporter)
    try:
        result = fit(spec, cfg, output_dir, train_rows, eval_rows, data.label_names, pretrained=pretrained,
                     data_fingerprint=data.fingerprint, callbacks=callbacks,
                     cache_dir=cache_dir,
                     extra_meta={"data_fingerprint": data.fingerprint, "pretrained": pretrained or OFFLINE_DEFAULT})
    finally:  # a failed or interrupted fine-tune keeps the curve up to its last step
        with contextlib.suppress(Exception):
            callbacks[0].flush()
    if result.best_metric is None:  # every evaluation gave NaN (e.g. a constant regression output)
        raise ValueError(f"{spec.name}: no evaluation gave a usable {result.primary_metric!r}, so no model was "
                         f"kept; dev-curve metrics are in the MLflow run {run_id}")
    if result.resumed_from_step:
        get_run_logger().info("resumed from the checkpoint at step %d", result.resumed_from_step)
    history_path = Path(run_dir) / "history.json"
    history_path.write_text(json.dumps(result.history, indent=1), encoding="utf-8")
    summary = {name: getattr(result, name) for name in TRAINING_METRICS}
    mlflow.log_metrics({k: float(v) for k, v in summary.items()}, run_id=run_id)
    return {
        "model_dir": str(result.model_dir), "primary_metric": result.primary_metric, "best_metric": result.best_metric,
        "metrics": result.eval_metrics, "history_path": str(history_path), "precision": result.precision,
        "resumed_from_step": result.resumed_from_step, "stopped_early": result.stopped_early,
        "feature_cache_hit": result.feature_stats["feature_cache_hit"], "threads": result.threads,
        "pruned_at": reporter.pruned_at if reporter else None, **summary,
    }
