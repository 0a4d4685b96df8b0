"""How sure is a dev score? Bootstrap confidence intervals over the dev examples, and the paired
bootstrap of the difference between two models scored on the same examples (Koehn, 2004;
Berg-Kirkpatrick et al., 2012).

Every resample recomputes the family's official metric on the resampled rows, so corpus-level
metrics (F1, Matthews correlation, entity F1, Pearson) get honest intervals, not per-example
approximations.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from bert_core.families import get_family


@dataclasses.dataclass
class Interval:
    point: float  # the metric on all rows
    low: float
    high: float
    confidence: float


@dataclasses.dataclass
class PairedComparison:
    delta: float  # metric(candidate) - metric(baseline) on all rows
    low: float
    high: float
    p_candidate_better: float  # share of resamples where the candidate scores strictly higher
    confidence: float
    n_rows: int


def _score(family, predictions, rows, metric: str, label_names, settings) -> float:
    value = family.compute_metrics(predictions, rows, [metric], label_names, settings)[metric]
    return float(value) if value is not None and not math.isnan(value) else 0.0


def _take(items: list[dict], idx: np.ndarray) -> list[dict]:
    """The drawn items; ones keyed by ``id`` (QA rows and answers) get a fresh id per draw, because the
    SQuAD metric matches predictions to questions by id and would count a question drawn twice once."""
    if items and "id" in items[0]:
        return [{**items[i], "id": f"{items[i]['id']}#{k}"} for k, i in enumerate(idx)]
    return [items[i] for i in idx]


def _resamples(n_rows: int, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n_rows) row indices drawn with replacement; fixed by the seed."""
    return np.random.default_rng(seed).integers(0, n_rows, size=(n_resamples, n_rows))


def bootstrap_interval(family_name: str, predictions: list[dict], rows: list[dict], metric: str,
                       label_names=None, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
                       settings: dict | None = None) -> Interval:
    """Percentile bootstrap interval of ``metric`` over the rows (``settings``: the task's, e.g. its tag scheme)."""
    if not rows or len(rows) != len(predictions):
        raise ValueError(f"need one prediction per row, got {len(predictions)} predictions for {len(rows)} rows")
    family = get_family(family_name)
    scores = [_score(family, _take(predictions, idx), _take(rows, idx), metric, label_names, settings)
              for idx in _resamples(len(rows), n_resamples, seed)]
    alpha = (1 - confidence) / 2
    low, high = np.quantile(scores, [alpha, 1 - alpha])
    return Interval(_score(family, predictions, rows, metric, label_names, settings), float(low), float(high),
                    confidence)


def paired_bootstrap(family_name: str, candidate: list[dict], baseline: list[dict], rows: list[dict], metric: str,
                     label_names=None, n_resamples: int = 1000, confidence: float = 0.95,
                     seed: int = 0, settings: dict | None = None) -> PairedComparison:
    """Difference candidate - baseline, both resampled on the same rows each time."""
    if not (len(candidate) == len(baseline) == len(rows)) or not rows:
        raise ValueError(f"paired bootstrap needs both models' predictions on the same rows "
                         f"(got {len(candidate)} and {len(baseline)} for {len(rows)} rows)")
    family = get_family(family_name)
    deltas = []
    for idx in _resamples(len(rows), n_resamples, seed):
        sample = _take(rows, idx)
        deltas.append(_score(family, _take(candidate, idx), sample, metric, label_names, settings)
                      - _score(family, _take(baseline, idx), sample, metric, label_names, settings))
    alpha = (1 - confidence) / 2
    low, high = np.quantile(deltas, [alpha, 1 - alpha])
    delta = (_score(family, candidate, rows, metric, label_names, settings)
             - _score(family, baseline, rows, metric, label_names, settings))
    return PairedComparison(delta, float(low), float(high), float(np.mean(np.array(deltas) > 0)), confidence, len(rows))
