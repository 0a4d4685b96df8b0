"""A fine-tune's training in its MLflow run: the curves while `fit` runs (`TrainingMetrics`, a fit callback)
and the training summary once it is done (`log_training_summary`), with the params saying how the saved model
weighs labels and decides (`decision_params`).

Per-step metrics go under `train/` and the evaluations made during training under `dev_curve/`, so the MLflow
UI shows them as two chart sections; the final scores of the best model are logged by the evaluate task as
`eval_<metric>`.
"""

from __future__ import annotations

import json
import time

import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from mlflow.utils.time import get_current_time_millis

MAX_METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch call

# Logged once per run, beside the evaluate task's `<split>_<metric>` scores.
TRAINING_METRICS = ("train_seconds", "examples_per_second", "tokens_per_second", "best_step", "final_step",
                    "train_rows", "eval_rows")


class TrainingMetrics:
    """fit's progress -> metrics of MLflow run `run_id`, without slowing training down.

    Every step's metrics keep their own step and time, but reach the store in one batch every `FLUSH_SECONDS`,
    at each evaluation and when the caller calls `flush` at the end (also on failure): one call instead of one
    per log event. The call is made on the training thread on purpose: MLflow's background sender takes its CPU
    from the training threads anyway when they use every core, and it did not pay when measured
    (docs/benchmarks.md).
    """

    FLUSH_SECONDS = 30.0

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.client, self.pending, self.flushed_at = MlflowClient(), [], time.monotonic()

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self._add("train", step, metrics)
        if time.monotonic() - self.flushed_at >= self.FLUSH_SECONDS:
            self.flush()

    def on_evaluate(self, step: int, metrics: dict[str, float]) -> None:
        self._add("dev_curve", step, metrics)
        self.flush()

    def flush(self) -> None:
        """Send the metrics gathered since the last flush."""
        for start in range(0, len(self.pending), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=self.pending[start:start + MAX_METRICS_PER_BATCH])
        self.pending = []
        self.flushed_at = time.monotonic()

    def _add(self, section: str, step: int, metrics: dict[str, float]) -> None:
        now = get_current_time_millis()
        self.pending += [Metric(f"{section}/{k}", float(v), now, step) for k, v in metrics.items()]


def log_training_summary(run_id: str, result) -> dict[str, float]:
    """`TRAINING_METRICS` of a `FitResult` logged as metrics of run `run_id`; returns them."""
    summary = {name: getattr(result, name) for name in TRAINING_METRICS}
    mlflow.log_metrics({k: float(v) for k, v in summary.items()}, run_id=run_id)
    return summary


def decision_params(meta: dict) -> dict[str, str]:
    """Run params from a saved model's meta: ``class_weights``, the weight of each label in the training loss (compact
    JSON, bert_core/families/imbalance.py), and ``decision_threshold``, the cut-off the model applies (with
    ``decision_threshold_tuned_for``, the metric it was tuned for); {} when the model has neither."""
    params = {}
    if meta.get("class_weights"):
        params["class_weights"] = json.dumps(meta["class_weights"], separators=(",", ":"))
    if isinstance(meta.get("decision_threshold"), float):
        params["decision_threshold"] = str(meta["decision_threshold"])
        if meta.get("decision_threshold_tuned_for"):
            params["decision_threshold_tuned_for"] = meta["decision_threshold_tuned_for"]
    return params
