"""Does a faster serving precision keep the answers? The gate a bf16 or int8 model passes before it is registered.

    baseline = dev_predictions(model_dir, spec, rows, fingerprint, "fp32")
    candidate = dev_predictions(model_dir, spec, rows, fingerprint, "int8")
    result = judge(spec, rows, candidate, baseline, margin=0.005)
    result.passed, result.reason

Both precisions predict the same dev rows from the same saved weights (``evaluate_model_dir``), and the paired
bootstrap (``bert_core.bootstrap.paired_bootstrap``) resamples those rows: delta = metric(candidate) - metric(fp32)
on each resample, for the spec's primary metric (higher is better, as the registry assumes). The rule, a
non-inferiority test: the candidate passes iff the lower end of the two-sided ``confidence`` (95%) percentile
interval of delta is at least ``-margin``, i.e. with 97.5% confidence it loses no more than ``margin`` (0.005 =
half a point on a 0-1 metric). Identical predictions give delta = 0 on every resample and pass any margin >= 0;
the point delta alone never decides.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bert_core.bootstrap import paired_bootstrap
from bert_core.families import get_family
from bert_core.serving_precision import resolve
from bert_core.spec import TaskSpec
from bert_core.training.inference import evaluate_model_dir


@dataclasses.dataclass
class DevPredictions:
    """A saved model's predictions of the dev rows in one precision, and its metrics there."""

    precision: str  # as resolved (never "auto")
    metrics: dict[str, float]
    predictions: list[dict]


@dataclasses.dataclass
class GateResult:
    """The gate's verdict on one candidate precision against fp32, with its figures (all on the primary metric)."""

    precision: str
    passed: bool
    metric: str
    fp32_score: float
    candidate_score: float
    delta: float  # candidate - fp32 on all dev rows
    low: float  # the interval of delta
    high: float
    confidence: float
    margin: float
    n_rows: int
    reason: str

    def tags(self) -> dict[str, str]:
        """The figures as registry tags (``gate.<field>``)."""
        return {f"gate.{k}": (f"{v:.6g}" if isinstance(v, float) else str(v).lower() if isinstance(v, bool) else str(v))
                for k, v in dataclasses.asdict(self).items() if k not in ("precision", "reason")}


def dev_predictions(model_dir: str | Path, spec: TaskSpec, rows: list[dict], fingerprint: str, precision: str,
                    batch_size: int = 64, cache_dir=None) -> DevPredictions:
    """``model_dir``'s metrics and predictions on the labelled dev ``rows``, predicted in ``precision``."""
    precision = resolve(precision)
    metrics, predictions = evaluate_model_dir(model_dir, spec, rows, fingerprint, "eval", batch_size, precision,
                                              cache_dir)
    return DevPredictions(precision, metrics, predictions)


def judge(spec: TaskSpec, rows: list[dict], candidate: DevPredictions, baseline: DevPredictions, margin: float,
          label_names=None, confidence: float = 0.95, n_resamples: int = 1000) -> GateResult:
    """The paired bootstrap of candidate - baseline on the primary metric, and the verdict."""
    metric = spec.primary_metric
    settings = get_family(spec.family).rows.task_settings(spec)
    e = paired_bootstrap(spec.family, candidate.predictions, baseline.predictions, rows, metric,
                         label_names, n_resamples=n_resamples, confidence=confidence, settings=settings)
    passed = e.low >= -margin
    verdict = (f"passed: the interval starts at or above {-margin:+g}" if passed
               else f"refused: the interval starts below {-margin:+g}")
    reason = (f"{candidate.precision} vs fp32, paired bootstrap on {e.n_rows} dev rows: {metric} "
              f"{candidate.metrics[metric]:.4f} vs {baseline.metrics[metric]:.4f} ({e.delta:+.4f}), "
              f"{confidence:.0%} interval [{e.low:+.4f}, {e.high:+.4f}]; {verdict}")
    return GateResult(candidate.precision, passed, metric, float(baseline.metrics[metric]),
                      float(candidate.metrics[metric]), e.delta, e.low, e.high, confidence, margin, e.n_rows, reason)
