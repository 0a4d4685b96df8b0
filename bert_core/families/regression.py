"""Pair regression: a text pair scored by one number (STS-B).

Rows: ``text_a``, ``text_b`` and ``label``, a finite number (numeric text is read as one); no label names.
Head: the ``[CLS]`` head (``cls_head.py``) with one output, trained with mean squared error.
Features: ``text_encoding.py``'s, the target the row's score as a float.
Predictions: ``{"score"}`` on the scale of the training scores, not clipped to it. Metrics: Pearson and
Spearman correlations (GLUE's STS-B), from ``bert_core.metrics``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

import numpy as np
import torch.nn.functional as F
from datasets import Value
from torch import nn

from bert_core import metrics
from bert_core.families.base import Family, Predictions, Rows, as_rows
from bert_core.families.cls_head import SequenceClassifier
from bert_core.families.text_encoding import (
    TextFeatures,
    check_long_text,
    is_labelled,
    logits_by_row,
    long_text_settings,
    text_arrow_features,
    text_fields,
    text_request,
    text_row_problem,
    truncation_note,
    window_pooling,
)
from bert_core.model import BertEncoder
from bert_core.validation import DataError, problem

# Spec metric name -> function(preds, labels) on scores.
METRICS: dict[str, Callable[..., float]] = {"pearson": metrics.pearson, "spearman": metrics.spearman}


def score_target(row: dict, label_names: list[str] | None) -> float:
    """The training target of a row: its gold score."""
    try:
        return float(row["label"])
    except (TypeError, ValueError):
        raise ValueError(f"{row.get('_source', '?')}: field 'label' is {row['label']!r}; expected a number") from None


def squared_error(logits, labels):
    """logits (B,), labels (B,) float scores."""
    return F.mse_loss(logits.float(), labels.float())


def build_regressor(encoder: BertEncoder, label_names: list[str] | None) -> nn.Module:
    return SequenceClassifier(encoder, 1, squared_error)


class ScoreRows(Rows):
    """Text pairs with a gold score each."""

    fields = (*text_fields(pair=True), "label")
    request = text_request(pair=True)
    spec_fields = ("long_text",)
    has_label_names = False

    def check_spec(self, spec) -> None:
        check_long_text(spec, pair=True)

    def task_settings(self, spec) -> dict:
        return long_text_settings(spec)

    def arrow_features(self):
        return text_arrow_features(label=Value("float64"))

    def validate_row(self, row, label_set, expected):
        """Scores stay numbers; numeric text becomes a float here."""
        found = text_row_problem(row, pair=True)
        if found:
            return found
        value, number = row.get("label"), None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
        if number is None or not math.isfinite(number):
            return problem("label", value, "a finite number (NaN, inf and text are rejected)")
        row["label"] = number
        return None

    def check_data(self, spec, splits, label_names, origins) -> list[str]:
        """Correlations are undefined on a constant gold score: every scored split needs two different ones."""
        for split, rows in splits.items():
            scores = {row["label"] for row in rows}
            if split != "train" and len(scores) < 2:
                raise DataError(f"{origins[split]}: every score of split {split!r} is {scores.pop()}; Pearson and "
                                "Spearman correlations need at least two different gold scores")
        return []

    def describe_labels(self, rows) -> str:
        values = [row["label"] for row in rows]
        return f"scores {min(values):g} to {max(values):g}, mean {statistics.fmean(values):.2f}"


class ScorePredictions(Predictions):
    """The head's one output is the score; correlations with the gold scores."""

    metrics = tuple(METRICS)
    response = {"score": "score"}

    def postprocess(self, logits, features, rows, label_names, settings: dict) -> list[dict]:
        """logits[k]: () -> {"score": float}, on the scale of the training labels (0-5 for STS-B)."""
        return [{"score": float(x)} for x in logits_by_row(logits, features, len(rows), window_pooling(settings))]

    def compute_metrics(self, predictions, rows, metric_names, label_names=None, settings=None) -> dict[str, float]:
        self.check_metric_names(metric_names)
        rows = as_rows(rows)
        if not is_labelled(rows):
            raise ValueError("compute_metrics: the rows carry no gold scores")
        gold = [score_target(row, None) for row in rows]
        preds = [p["score"] for p in predictions]
        return {name: METRICS[name](preds, gold) for name in metric_names}

    def weighted_metric(self, predictions, rows, metric, label_names=None, settings=None):
        gold = np.array([score_target(row, None) for row in as_rows(rows)])
        pred = np.array([p["score"] for p in predictions])
        positions = np.arange(len(gold))

        def score(weights: np.ndarray) -> float:  # correlations of the repeated scores: cheap, exact
            drawn = np.repeat(positions, weights)
            return METRICS[metric](pred[drawn], gold[drawn])
        return score

    def input_limit(self, spec, max_seq_length, label_names) -> str:
        return (f"{truncation_note(max_seq_length, spec.long_text)}; scores are on the scale of the training scores and are not "
                "clipped to it")


NAME = "pair_regression"
PAIR_REGRESSION = Family(NAME, rows=ScoreRows(), features=TextFeatures(target=score_target),
                         build_model=build_regressor, predictions=ScorePredictions(NAME))
