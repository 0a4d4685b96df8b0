"""Single-text and text-pair classification: one label per row, out of the spec's label names.

Rows: ``text_a`` (``text_b`` for pairs) and ``label``, a label name; the spec may give ``display_names``.
Head: the ``[CLS]`` head (``cls_head.py``) with one output per label name, trained with cross-entropy.
Features: ``text_encoding.py``'s, the target the index of the row's label name.
Predictions: ``{"label", "label_name", "score", "probabilities"}`` (``label_name``: the spec's display name of
the label value, or the value). Metrics: GLUE's and the multi-class averages, from ``bert_core.metrics``; the
spec's ``f1`` is the F1 of the positive class, which is ``label_names[1]`` (so a spec lists the negative label
first, e.g. MRPC's ``["0", "1"]``).
Calibration (spec ``calibration``, default ``temperature``): the scores are the softmax of the logits divided by a
temperature fitted on the eval split (``bert_core/calibration.py``), saved with the model; it never changes the label.
Rare classes (``imbalance.py``): spec ``class_weights`` weigh the cross-entropy; a binary task answers the positive
class when its probability reaches the ``decision_threshold`` (0.5, a number, or ``tune``: tuned on dev).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np
import torch.nn.functional as F
from datasets import Value
from sklearn.metrics import classification_report
from torch import nn

from bert_core import metrics
from bert_core.calibration import fit_and_measure, measure, scaled, turned_off
from bert_core.families import imbalance
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
from bert_core.validation import DataError, expected_one_of, label_problem

# Spec metric name -> function(preds, labels, sample_weight=None) on label indices.
METRICS: dict[str, Callable[..., float]] = {
    "accuracy": metrics.accuracy,
    "f1": metrics.positive_class_f1,  # label_names[1] is the positive class
    "matthews_corr": metrics.matthews_corr,
    "f1_macro": metrics.f1_macro,
    "f1_micro": metrics.f1_micro,
    "f1_weighted": metrics.f1_weighted,
    "precision_macro": metrics.precision_macro,
    "recall_macro": metrics.recall_macro,
}
BINARY_METRICS = ("f1",)  # scores of one positive class, label_names[1]: defined for two labels only


def label_index(row: dict, label_names: list[str] | None) -> int:
    """The training target of a row: the index of its label name."""
    if row["label"] not in (label_names or []):
        raise ValueError(f"{row.get('_source', '?')}: field 'label' is {row['label']!r}; expected one of {label_names}")
    return label_names.index(row["label"])


def cross_entropy(logits, labels):
    """logits (B, C), labels (B,) int64 class ids."""
    return F.cross_entropy(logits.float(), labels)


def build_classifier(encoder: BertEncoder, label_names: list[str] | None) -> nn.Module:
    if not label_names or len(label_names) < 2:
        raise ValueError(f"classification needs at least two label names, got {label_names}")
    return SequenceClassifier(encoder, len(label_names), cross_entropy)


class LabelRows(Rows):
    """Text (pair) rows with one label name each."""

    spec_fields = ("display_names", "class_weights", "decision_threshold", "calibration", "long_text")

    def __init__(self, pair: bool):
        self.pair = pair
        self.fields = (*text_fields(pair), "label")
        self.request = text_request(pair)

    def check_spec(self, spec) -> None:
        check_long_text(spec, self.pair, pooled_loss=True)
        binary = [m for m in spec.metrics if m in BINARY_METRICS]
        if binary and spec.labels is not None and len(spec.labels) != 2:
            raise ValueError(f"metrics {binary}: the F1 of the positive class needs exactly two labels, and "
                             f"`labels` has {len(spec.labels)}; use f1_macro (or f1_micro, f1_weighted)")
        if spec.display_names is not None:
            unknown = sorted(set(spec.display_names) - set(spec.labels or spec.display_names))
            if unknown:
                raise ValueError(f"display_names: {unknown} are not among the labels {spec.labels}")
            shown = list(spec.display_names.values())
            if len(set(shown)) != len(shown):
                raise ValueError(f"display_names must show distinct names, got {shown}")
        problems = imbalance.label_problems(spec, spec.labels) if spec.labels is not None else []
        if problems:
            raise ValueError("; ".join(problems))

    def task_settings(self, spec) -> dict:
        settings = {"display_names": spec.display_names} if spec.display_names else {}
        return settings | imbalance.task_settings(spec) | turned_off(spec) | long_text_settings(spec)

    def arrow_features(self):
        return text_arrow_features(label=Value("string"))

    def normalise(self, rows, label_map, spec):
        """Label values as strings (JSON and the hub may give ints), through the source's ``label_map``;
        single texts get ``text_b = None``."""
        label_map = label_map or {}
        for row in rows:
            value = row.get("label")
            value = value if value is None or isinstance(value, str) else str(value)
            row["label"] = label_map.get(value, value)
            if not self.pair:
                row["text_b"] = None
        return rows

    def validate_row(self, row, label_set, expected):
        return text_row_problem(row, self.pair) or label_problem(row, label_set, expected)

    def infer_label_names(self, train):
        return sorted({r["label"] for r in train if isinstance(r.get("label"), str) and r["label"]})

    def check_data(self, spec, splits, label_names, origins) -> list[str]:
        """At least two labels; binary-only metrics on two labels; a warning per label train never shows."""
        if len(label_names) < 2:
            raise DataError(f"{origins['train']}: the training split holds only the label(s) {label_names}; a "
                            "classifier needs at least two (list them in the spec's `labels`)")
        binary = [m for m in spec.metrics if m in BINARY_METRICS]
        if binary and len(label_names) != 2:
            raise DataError(f"{spec.name}: metrics {binary} (spec field `metrics`) score the positive class of a binary "
                            f"task, but the data has {len(label_names)} labels, {expected_one_of(label_names)}; use "
                            "f1_macro (or f1_micro, f1_weighted)")
        if problems := imbalance.label_problems(spec, label_names):
            raise DataError(f"{origins['train']}: {'; '.join(problems)} (the labels seen in the data; spec `labels` "
                            "unset)")
        seen = Counter(row["label"] for row in splits["train"])
        return [f"{origins['train']}: label {name!r} never occurs in the training split; the model cannot learn it"
                for name in label_names if not seen[name]]

    def describe_labels(self, rows) -> str:
        counts = Counter(row["label"] for row in rows).most_common()
        shown = [f"{name} {n / len(rows):.1%}" for name, n in counts[:6]]
        return ", ".join(shown) + (f", +{len(counts) - 6} more" if len(counts) > 6 else "")


class LabelPredictions(Predictions):
    """Softmax over the label names; GLUE's metrics on label indices."""

    metrics = tuple(METRICS)
    response = {"label": "label_name", "label_value": "label", "score": "score"}

    def postprocess(self, logits, features, rows, label_names, settings: dict) -> list[dict]:
        """logits[k]: (C,) -> {"label": value, "label_name": its display name, "score": its softmax probability,
        "probabilities": {value: p}}."""
        display = settings.get("display_names") or {}
        predictions = []
        for row_logits in logits_by_row(logits, features, len(rows), window_pooling(settings)):
            row_logits = scaled(row_logits, settings)  # the fitted temperature: same argmax, truer scores
            probs = np.exp(row_logits - row_logits.max())
            probs /= probs.sum()
            best = imbalance.decide(probs, label_names, settings)
            predictions.append({
                "label": label_names[best],
                "label_name": display.get(label_names[best], label_names[best]),
                "score": float(probs[best]),
                "probabilities": {name: float(p) for name, p in zip(label_names, probs, strict=True)},
            })
        return predictions

    def calibrate(self, logits, features, rows, label_names, settings):
        """Temperature scaling of the softmax, fitted on these rows (``bert_core.calibration``)."""
        return fit_and_measure(*self._scores(logits, features, rows, label_names, settings), "softmax", settings)

    def measure_calibration(self, logits, features, rows, label_names, settings):
        return measure(*self._scores(logits, features, rows, label_names, settings), "softmax", settings)

    def _scores(self, logits, features, rows, label_names, settings) -> tuple[np.ndarray, np.ndarray]:
        """(logits (N, C), gold label indices (N,)) of labelled rows."""
        return (np.stack(logits_by_row(logits, features, len(rows), window_pooling(settings))),
                np.array([label_index(row, label_names) for row in as_rows(rows)]))
    def tune(self, predictions, rows, settings) -> dict:
        """``decision_threshold: tune``: the cut-off on the positive class's probability with the best primary metric
        on these rows (``imbalance.best_threshold``); nothing to learn otherwise."""
        if settings.get("decision_threshold") != imbalance.TUNE:
            return {}
        label_names = list(predictions[0]["probabilities"])
        if len(label_names) != 2:
            raise ValueError(f"decision_threshold 'tune' needs exactly two labels, got {label_names}")
        p1 = np.array([p["probabilities"][label_names[1]] for p in predictions])
        gold = np.array([label_index(row, label_names) for row in as_rows(rows)])
        metric = METRICS[settings["decision_threshold_tuned_for"]]
        return {"decision_threshold": imbalance.best_threshold(p1, gold, metric)}

    def compute_metrics(self, predictions, rows, metric_names, label_names=None, settings=None) -> dict[str, float]:
        """Metrics on label indices. Without ``label_names``, their order is read from the
        ``probabilities`` of the predictions, which ``postprocess`` writes in label order."""
        label_names = list(label_names or predictions[0]["probabilities"])
        self.check_metric_names(metric_names)
        rows = as_rows(rows)
        if not is_labelled(rows):
            raise ValueError("compute_metrics: the rows carry no gold labels")
        gold = [label_index(row, label_names) for row in rows]
        preds = [label_names.index(p["label"]) for p in predictions]
        for name in metric_names:
            if name in BINARY_METRICS and len(label_names) != 2:
                raise ValueError(f"metric {name!r} is the F1 of the positive class: binary tasks only, got {label_names}")
        return {name: METRICS[name](preds, gold) for name in metric_names}

    def weighted_metric(self, predictions, rows, metric, label_names=None, settings=None):
        """scikit-learn's metric with sample weights: the same numbers as the repeated rows."""
        label_names = list(label_names or predictions[0]["probabilities"])
        gold = np.array([label_index(row, label_names) for row in as_rows(rows)])
        pred = np.array([label_names.index(p["label"]) for p in predictions])
        fn = METRICS[metric]

        def score(weights: np.ndarray) -> float:
            drawn = weights > 0  # rows not drawn must not add their class to a macro average
            return fn(pred[drawn], gold[drawn], sample_weight=weights[drawn])
        return score

    def per_class_report(self, rows, predictions, label_names, spec) -> dict:
        """scikit-learn's report, keyed by the names people read (the spec's display names)."""
        return classification_report([r["label"] for r in rows], [p["label"] for p in predictions],
                                     labels=label_names, target_names=[spec.display_name(n) for n in label_names],
                                     output_dict=True, zero_division=0)

    def confusion(self, rows, predictions, label_names, spec):
        return ([spec.display_name(r["label"]) for r in rows], [spec.display_name(p["label"]) for p in predictions],
                [spec.display_name(n) for n in label_names])

    def card_lines(self, label_names, settings, report) -> list[str]:
        """The class weights training used and the decision threshold the model applies (``imbalance.py``)."""
        return imbalance.card_lines(label_names, settings, "each label's rows in the cross-entropy")

    def input_limit(self, spec, max_seq_length, label_names) -> str:
        return (f"{truncation_note(max_seq_length, spec.long_text)}; it always answers one of its {len(label_names or [])} labels, "
                "even for out-of-domain input")


def classification(name: str, pair: bool) -> Family:
    """Classification of one text (``pair=False``) or a text pair."""
    return Family(name, rows=LabelRows(pair), features=TextFeatures(target=label_index),
                  build_model=build_classifier, predictions=LabelPredictions(name), weigh_loss=imbalance.weigh_classes)


SINGLE_CLASSIFICATION = classification("single_classification", pair=False)
PAIR_CLASSIFICATION = classification("pair_classification", pair=True)
