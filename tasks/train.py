"""The `train_model` task: `bert_core.training.fit` with its progress sent to MLflow (tracking.training_log) and to
a Prefect progress artifact.

Checkpoints go to `<run_dir>/training/checkpoints`; a retry of this task (same `run_dir`) resumes from
the newest complete one, so a crash costs at most `checkpoint_minutes` of training (or `checkpoint_every` steps).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from bert_core.checkpoint import OFFLINE_DEFAULT, read_finetuned_meta
from bert_core.spec import TaskSpec
from bert_core.training import TrainConfig, fit
from bert_core.training.identity import FinetuneIdentity
from tasks.data import DataInfo, load_split
from tasks.retry_policy import retry_if_transient
from tasks.sweep_trial import SweepTrial, TrialReporter
from tracking.run import TrackedRun
from tracking.training_log import TrainingMetrics, decision_params, log_training_summary


def artifact_key(task_name: str, what: str) -> str:
    """Prefect artifact keys allow only lowercase letters, digits and dashes."""
    slug = "".join(c if c.isalnum() else "-" for c in task_name.lower()).strip("-")
    return f"{slug}-{what}"


@dataclasses.dataclass
class Trained:
    """What `train_model` produced: the best model's folder and score, and how training went."""

    model_dir: str  # the best checkpoint, saved by `save_finetuned`
    primary_metric: str
    best_metric: float  # its dev score
    best_step: int
    metrics: dict[str, float]  # the best evaluation's dev metrics
    history_path: str  # every logged step and evaluation, as JSON
    train_rows: int
    eval_rows: int
    final_step: int
    train_seconds: float
    examples_per_second: float
    tokens_per_second: float
    precision: str
    threads: int
    resumed_from_step: int | None  # the checkpoint training resumed from
    stopped_early: bool
    feature_cache_hit: bool  # fit found the tokenize task's features (False: a key mismatch, a bug)
    pruned_at: int | None  # a sweep trial stopped by its pruner: at this evaluation
    # the thread count at the start and at each change ([{"step", "threads"}, ...]; bert_core/training/threads.py)
    threads_used: list[dict] = dataclasses.field(default_factory=list)


class ProgressArtifact:
    """A `fit` callback: a Prefect progress artifact, the optimizer steps done of the total. Updating it is a
    call to the Prefect API, so it happens at most every `TrainingMetrics.FLUSH_SECONDS`, at each evaluation
    and when `train_model` ends."""

    def __init__(self, task_name: str):
        self.task_name, self.total_steps, self.progress_id, self.step = task_name, 1, None, 0
        self.updated_at = time.monotonic()

    def on_train_start(self, info: dict) -> None:
        self.total_steps = max(info["total_steps"], 1)
        done = info["resumed_from_step"] or 0
        self.progress_id = create_progress_artifact(
            progress=100 * done / self.total_steps, key=artifact_key(self.task_name, "fine-tune-progress"),
            description=f"{self.task_name}: optimizer steps done of {info['total_steps']}")

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self.step = step
        if time.monotonic() - self.updated_at >= TrainingMetrics.FLUSH_SECONDS:
            self.update()

    def on_evaluate(self, step: int, metrics: dict[str, float]) -> None:
        self.update()

    def update(self) -> None:
        if self.progress_id is not None:
            update_progress_artifact(self.progress_id, progress=100 * self.step / self.total_steps)
        self.updated_at = time.monotonic()


# An immediate retry resumes from the newest checkpoint after a crash of unknown cause; a diverged loss or
# bad settings fail at once (tasks/retry_policy.py).
@task(retries=1, retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)
def train_model(spec: TaskSpec, cfg: TrainConfig, data: DataInfo, run_dir: str, run: TrackedRun,
                pretrained: str | None = None, cache_dir: str | None = None, trial: SweepTrial | None = None,
                identity: FinetuneIdentity | None = None, pretrained_name: str | None = None) -> Trained:
    """Fine-tune on the saved train split, select on the eval split; returns paths and numbers only.

    `cfg` must already hold the spec's defaults. `run`: the MLflow run receiving the metrics. `trial`: the
    sweep trial this fine-tune is, whose pruner may stop it (`pruned_at` in the result: that evaluation).
    `identity`: the run folder's (data root and code version included), recorded in every checkpoint.
    `pretrained`: a checkpoint or a fine-tuned folder; `pretrained_name`: how the identity and the model's meta
    name it when it was resolved from a registered model (tasks/pretrained.py).
    """
    train_rows = load_split(data, "train", cfg.max_train_samples)
    eval_rows = load_split(data, "eval", cfg.max_eval_samples)
    metrics, progress = TrainingMetrics(run.run_id), ProgressArtifact(spec.name)
    reporter = TrialReporter(trial, spec.primary_metric) if trial else None
    try:
        result = fit(spec, cfg, Path(run_dir) / "training", train_rows, eval_rows, data.label_names,
                     pretrained=pretrained, data_fingerprint=data.fingerprint,
                     callbacks=[metrics, progress, *([reporter] if reporter else [])], cache_dir=cache_dir,
                     identity=identity, pretrained_name=pretrained_name,
                     extra_meta={"data_fingerprint": data.fingerprint,
                                 "pretrained": pretrained_name or pretrained or OFFLINE_DEFAULT})
    finally:  # a failed or interrupted fine-tune keeps the curve up to its last step
        with contextlib.suppress(Exception):
            metrics.flush()
        with contextlib.suppress(Exception):
            progress.update()
    if result.best_metric is None:  # every evaluation gave NaN (e.g. a constant regression output)
        raise ValueError(f"{spec.name}: no evaluation gave a usable {result.primary_metric!r}, so no model was "
                         f"kept; dev-curve metrics are in the MLflow run {run.run_id}")
    if result.resumed_from_step:
        get_run_logger().info("resumed from the checkpoint at step %d", result.resumed_from_step)
    history_path = Path(run_dir) / "history.json"
    history_path.write_text(json.dumps(result.history, indent=1), encoding="utf-8")
    summary = log_training_summary(run.run_id, result)
    # What this machine chose where the recipe leaves it open: the math (precision) and the dropout masks drawn.
    run.log_params({"engine": {"precision": result.precision, "dropout_mask": result.dropout_mask}})
    run.log_params(decision_params(read_finetuned_meta(result.model_dir)))  # class weights used, threshold applied
    return Trained(
        model_dir=str(result.model_dir), primary_metric=result.primary_metric, best_metric=result.best_metric,
        metrics=result.eval_metrics, history_path=str(history_path), precision=result.precision,
        resumed_from_step=result.resumed_from_step, stopped_early=result.stopped_early,
        feature_cache_hit=result.feature_stats["feature_cache_hit"], threads=result.threads,
        threads_used=result.threads_used,
        pruned_at=reporter.pruned_at if reporter else None, **summary)
