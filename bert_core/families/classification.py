"""Single-text and text-pair classification, and pair regression: the ``[CLS]`` family.

Head: the pooled ``[CLS]`` vector (dense + tanh, from pre-training) -> dropout -> linear, i.e. a
two-layer MLP on ``[CLS]``. With one output it scores a pair and trains with mean squared error
(STS-B); otherwise cross-entropy over the label names.

Features: ``[CLS] a [SEP]`` or ``[CLS] a [SEP] b [SEP]`` (pair when ``text_b`` is not None), longest-first
truncated to ``max_seq_length``; keys ``input_ids``, ``token_type_ids``, ``example_index`` and, when
the rows are labelled, ``labels`` (index into the label names; a float score for regression).
Predictions: ``{"label", "label_name", "score", "probabilities"}`` for classification (``label_name``: the
spec's display name of the label value, or the value), ``{"score"}`` for regression.
Metrics: GLUE's, from ``bert_core.metrics.METRICS``; F1 is the F1 of the positive class, which is
``label_names[1]`` (so a spec lists the negative label first, e.g. MRPC's ``["0", "1"]``).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch.nn.functional as F
from torch import nn

from bert_core import metrics
from bert_core.families.base import Family, Output
from bert_core.model import BertEncoder
from bert_core.spec import BINARY_METRICS, CLASSIFICATION_METRICS
from bert_core.tokenizer import BertTokenizer
from bert_core.validation import DataError, expected_one_of

REGRESSION_METRICS = ("pearson", "spearman")


class SequenceClassifier(nn.Module):
    """BERT + ``[CLS]`` head. ``num_labels == 1`` means regression."""

    def __init__(self, encoder: BertEncoder, num_labels: int):
        super().__init__()
        self.bert = encoder
        self.num_labels = num_labels
        self.dropout = nn.Dropout(encoder.config.hidden_dropout_prob)
        self.classifier = nn.Linear(encoder.config.hidden_size, num_labels)
        nn.init.normal_(self.classifier.weight, std=encoder.config.initializer_range)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None) -> Output:
        """labels: (B,) int64 class ids, or (B,) float scores for regression."""
        _, pooled = self.bert(input_ids, token_type_ids, attention_mask)  # (B, H)
        logits = self.classifier(self.dropout(pooled))  # (B, C)
        if self.num_labels == 1:
            logits = logits.squeeze(-1)  # (B,)
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.mse_loss(logits.float(), labels.float())
            else:
                loss = F.cross_entropy(logits.float(), labels)
        return Output(logits=logits, loss=loss)


def _as_list(rows) -> list[dict]:
    return rows.to_list() if hasattr(rows, "to_list") else list(rows)  # datasets.Dataset or list of dicts


def _is_labelled(rows: list[dict]) -> bool:
    """True when every row has a label, False when none has (prediction input); a mix is an error."""
    labelled = [row.get("label") is not None for row in rows]
    if any(labelled) and not all(labelled):
        row = rows[labelled.index(False)]
        raise ValueError(f"{row.get('_source', '?')}: field 'label' is missing, while other rows of the split have one")
    return any(labelled)


def _encode_untruncated(rows: list[dict], tokenizer: BertTokenizer, max_length: int | None = None):
    """Encodings of ``[CLS] a [SEP]`` or, when ``text_b`` is present, ``[CLS] a [SEP] b [SEP]``."""
    texts_b = [row.get("text_b") for row in rows]
    is_pair = any(b is not None for b in texts_b)
    if is_pair and not all(b is not None for b in texts_b):
        row = rows[texts_b.index(None)]
        raise ValueError(f"{row.get('_source', '?')}: field 'text_b' is None, while other rows of the split are pairs")
    return tokenizer.encode_batch([row["text_a"] for row in rows], texts_b if is_pair else None, max_length)


def _encode(rows: list[dict], tokenizer: BertTokenizer, max_length: int) -> list[dict]:
    """Model inputs shared by classification and regression; a pair when ``text_b`` is present."""
    encodings = _encode_untruncated(rows, tokenizer, max_length)
    return [
        {"input_ids": enc.input_ids, "token_type_ids": enc.token_type_ids, "example_index": i}
        for i, enc in enumerate(encodings)
    ]


def _by_row(logits: list[np.ndarray], features, n_rows: int) -> list[np.ndarray]:
    """One logits array per row, found through each feature's ``example_index``."""
    per_row: list[np.ndarray | None] = [None] * n_rows
    for logit, feature in zip(logits, features, strict=True):
        per_row[feature["example_index"]] = np.asarray(logit, dtype=np.float64)
    if any(x is None for x in per_row):
        raise ValueError("postprocess: some rows have no feature/logits; features and rows do not match")
    return per_row


class ClassificationFamily(Family):
    name = "classification"

    def build_model(self, encoder: BertEncoder, label_names: list[str] | None) -> nn.Module:
        if not label_names or len(label_names) < 2:
            raise ValueError(f"classification needs at least two label names, got {label_names}")
        return SequenceClassifier(encoder, len(label_names))

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
        seen = Counter(row["label"] for row in splits["train"])
        return [f"{origins['train']}: label {name!r} never occurs in the training split; the model cannot learn it"
                for name in label_names if not seen[name]]

    def build_features(self, rows, tokenizer: BertTokenizer, label_names: list[str] | None, settings: dict) -> list[dict]:
        rows = _as_list(rows)
        features = _encode(rows, tokenizer, settings["max_seq_length"])
        if _is_labelled(rows):
            for feature, row in zip(features, rows, strict=True):
                feature["labels"] = self._target(row, label_names)
        return features

    def token_lengths(self, rows, tokenizer: BertTokenizer) -> list[int]:
        return [len(enc) for enc in _encode_untruncated(_as_list(rows), tokenizer)]

    def _target(self, row: dict, label_names: list[str]) -> int:
        """The training target of a row: the index of its label name."""
        if row["label"] not in (label_names or []):
            raise ValueError(f"{row.get('_source', '?')}: field 'label' is {row['label']!r}; expected one of {label_names}")
        return label_names.index(row["label"])

    def postprocess(self, logits, features, rows, label_names, settings: dict) -> list[dict]:
        """logits[k]: (C,) -> {"label": value, "label_name": its display name, "score": its softmax probability,
        "probabilities": {value: p}}."""
        display = settings.get("display_names") or {}
        predictions = []
        for row_logits in _by_row(logits, features, len(rows)):
            probs = np.exp(row_logits - row_logits.max())
            probs /= probs.sum()
            best = int(probs.argmax())
            predictions.append({
                "label": label_names[best],
                "label_name": display.get(label_names[best], label_names[best]),
                "score": float(probs[best]),
                "probabilities": {name: float(p) for name, p in zip(label_names, probs, strict=True)},
            })
        return predictions

    def weighted_metric(self, predictions, rows, metric, label_names=None, settings=None):
        """scikit-learn's metric with sample weights: the same numbers as the repeated rows."""
        label_names = list(label_names or predictions[0]["probabilities"])
        gold = np.array([self._target(row, label_names) for row in _as_list(rows)])
        pred = np.array([label_names.index(p["label"]) for p in predictions])
        fn = metrics.METRICS[metric]

        def score(weights: np.ndarray) -> float:
            drawn = weights > 0  # rows not drawn must not add their class to a macro average
            return fn(pred[drawn], gold[drawn], sample_weight=weights[drawn])
        return score

    def compute_metrics(self, predictions, rows, metric_names, label_names=None, settings=None) -> dict[str, float]:
        """Metrics on label indices. Without ``label_names``, their order is read from the
        ``probabilities`` of the predictions, which ``postprocess`` writes in label order."""
        label_names = list(label_names or predictions[0]["probabilities"])
        _check_metric_names(metric_names, CLASSIFICATION_METRICS, self.name)
        rows = _as_list(rows)
        if not _is_labelled(rows):
            raise ValueError("compute_metrics: the rows carry no gold labels")
        gold = [self._target(row, label_names) for row in rows]
        preds = [label_names.index(p["label"]) for p in predictions]
        results = {}
        for name in metric_names:
            if name == "f1":
                if len(label_names) != 2:
                    raise ValueError(f"metric 'f1' is the F1 of the positive class: binary tasks only, got {label_names}")
                results[name] = metrics.f1_binary(preds, gold, positive=1)  # label_names[1] is the positive class
            else:
                results[name] = metrics.METRICS[name](preds, gold)
        return results


class RegressionFamily(ClassificationFamily):
    name = "regression"

    def build_model(self, encoder: BertEncoder, label_names: list[str] | None) -> nn.Module:
        return SequenceClassifier(encoder, 1)

    def check_data(self, spec, splits, label_names, origins) -> list[str]:
        """Correlations are undefined on a constant gold score: every scored split needs two different ones."""
        for split, rows in splits.items():
            scores = {row["label"] for row in rows}
            if split != "train" and len(scores) < 2:
                raise DataError(f"{origins[split]}: every score of split {split!r} is {scores.pop()}; Pearson and "
                                "Spearman correlations need at least two different gold scores")
        return []

    def _target(self, row: dict, label_names: list[str] | None) -> float:
        try:
            return float(row["label"])
        except (TypeError, ValueError):
            raise ValueError(f"{row.get('_source', '?')}: field 'label' is {row['label']!r}; expected a number") from None

    def postprocess(self, logits, features, rows, label_names, settings: dict) -> list[dict]:
        """logits[k]: () -> {"score": float}, on the scale of the training labels (0-5 for STS-B)."""
        return [{"score": float(x)} for x in _by_row(logits, features, len(rows))]

    def weighted_metric(self, predictions, rows, metric, label_names=None, settings=None):
        gold = np.array([self._target(row, None) for row in _as_list(rows)])
        pred = np.array([p["score"] for p in predictions])
        positions = np.arange(len(gold))

        def score(weights: np.ndarray) -> float:  # correlations of the repeated scores: cheap, exact
            drawn = np.repeat(positions, weights)
            return metrics.METRICS[metric](pred[drawn], gold[drawn])
        return score

    def compute_metrics(self, predictions, rows, metric_names, label_names=None, settings=None) -> dict[str, float]:
        _check_metric_names(metric_names, REGRESSION_METRICS, self.name)
        rows = _as_list(rows)
        if not _is_labelled(rows):
            raise ValueError("compute_metrics: the rows carry no gold scores")
        gold = [self._target(row, None) for row in rows]
        preds = [p["score"] for p in predictions]
        return {name: metrics.METRICS[name](preds, gold) for name in metric_names}


def _check_metric_names(names, known, family: str) -> None:
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"metrics {unknown} are not defined for the {family} family; expected some of {list(known)}")
