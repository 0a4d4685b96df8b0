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

import math
import statistics
from collections import Counter

import numpy as np
import torch.nn.functional as F
from datasets import Features, Value
from sklearn.metrics import classification_report
from torch import nn

from bert_core import metrics
from bert_core.families.base import Family, Output, as_rows
from bert_core.model import BertEncoder
from bert_core.tokenizer import BertTokenizer
from bert_core.validation import DataError, expected_one_of, label_problem, problem, text_problem

CLASSIFICATION_METRICS = ("accuracy", "f1", "matthews_corr", "f1_macro", "f1_micro", "f1_weighted",
                          "precision_macro", "recall_macro")
BINARY_METRICS = ("f1",)  # scores of one positive class, label_names[1]: defined for two labels only
REGRESSION_METRICS = ("pearson", "spearman")


class SequenceClassifier(nn.Module):
    """BERT + ``[CLS]`` head. ``num_labels == 1`` means regression."""

    # The head reads [CLS] alone, so the encoder's last layer computes that position only: the same logits, a
    # training step 1.07x faster on MiniLM-L6. False runs the whole last layer (bench/step_variants.py compares).
    cls_only = True

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
        _, pooled = self.bert(input_ids, token_type_ids, attention_mask, cls_only=self.cls_only)  # (B, H)
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
    """Single-text (``pair=False``) or text-pair classification."""

    metrics = CLASSIFICATION_METRICS
    spec_fields = ("display_names",)
    response = {"label": "label_name", "label_value": "label", "score": "score"}

    def __init__(self, name: str, pair: bool):
        self.name, self.pair = name, pair
        self.fields = ("text_a", "text_b", "label") if pair else ("text_a", "label")
        self.request = ({"text_a": ("text_a", "text"), "text_b": ("text_b", "text_pair")} if pair
                        else {"text_a": ("text", "text_a")})

    # ---- the spec and the data ------------------------------------------------------------------------
    def check_spec(self, spec) -> None:
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

    def task_settings(self, spec) -> dict:
        return {"display_names": spec.display_names} if spec.display_names else {}

    def arrow_features(self) -> Features:
        return Features(text_a=Value("string"), text_b=Value("string"), label=self._label_type(),
                        _source=Value("string"))

    def _label_type(self) -> Value:
        return Value("string")

    def normalise(self, rows, label_map):
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
        return (text_problem(row, "text_a") or (text_problem(row, "text_b") if self.pair else None)
                or label_problem(row, label_set, expected))

    def infer_label_names(self, train):
        return sorted({r["label"] for r in train if isinstance(r.get("label"), str) and r["label"]})

    def describe_labels(self, rows) -> str:
        counts = Counter(row["label"] for row in rows).most_common()
        shown = [f"{name} {n / len(rows):.1%}" for name, n in counts[:6]]
        return ", ".join(shown) + (f", +{len(counts) - 6} more" if len(counts) > 6 else "")

    def input_limit(self, spec, max_seq_length, label_names) -> str:
        return (f"each input is cut to {max_seq_length} word pieces ([CLS]/[SEP] included), longest text "
                f"first; it always answers one of its {len(label_names or [])} labels, even for out-of-domain input")

    # ---- model and features -----------------------------------------------------------------------------
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
        rows = as_rows(rows)
        features = _encode(rows, tokenizer, settings["max_seq_length"])
        if _is_labelled(rows):
            for feature, row in zip(features, rows, strict=True):
                feature["labels"] = self._target(row, label_names)
        return features

    def token_lengths(self, rows, tokenizer: BertTokenizer) -> list[int]:
        return [len(enc) for enc in _encode_untruncated(as_rows(rows), tokenizer)]

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
        gold = np.array([self._target(row, label_names) for row in as_rows(rows)])
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
        self.check_metric_names(metric_names)
        rows = as_rows(rows)
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

    def per_class_report(self, rows, predictions, label_names, spec) -> dict:
        """scikit-learn's report, keyed by the names people read (the spec's display names)."""
        return classification_report([r["label"] for r in rows], [p["label"] for p in predictions],
                                     labels=label_names, target_names=[spec.display_name(n) for n in label_names],
                                     output_dict=True, zero_division=0)

    def confusion(self, rows, predictions, label_names, spec):
        return ([spec.display_name(r["label"]) for r in rows], [spec.display_name(p["label"]) for p in predictions],
                [spec.display_name(n) for n in label_names])


class RegressionFamily(ClassificationFamily):
    """A text pair scored by one number, trained with mean squared error (STS-B)."""

    metrics = REGRESSION_METRICS
    spec_fields = ()
    has_label_names = False
    response = {"score": "score"}

    def __init__(self, name: str = "pair_regression"):
        super().__init__(name, pair=True)

    def check_spec(self, spec) -> None:
        pass

    def task_settings(self, spec) -> dict:
        return {}

    def _label_type(self) -> Value:
        return Value("float64")

    def normalise(self, rows, label_map):
        return rows  # scores stay numbers (validate_row turns numeric text into floats)

    def validate_row(self, row, label_set, expected):
        found = text_problem(row, "text_a") or text_problem(row, "text_b")
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

    def infer_label_names(self, train):
        return None

    def describe_labels(self, rows) -> str:
        values = [row["label"] for row in rows]
        return f"scores {min(values):g} to {max(values):g}, mean {statistics.fmean(values):.2f}"

    def input_limit(self, spec, max_seq_length, label_names) -> str:
        return (f"each input is cut to {max_seq_length} word pieces ([CLS]/[SEP] included), longest text first; "
                "scores are on the scale of the training scores and are not clipped to it")

    def per_class_report(self, rows, predictions, label_names, spec):
        return None

    def confusion(self, rows, predictions, label_names, spec):
        return None

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
        gold = np.array([self._target(row, None) for row in as_rows(rows)])
        pred = np.array([p["score"] for p in predictions])
        positions = np.arange(len(gold))

        def score(weights: np.ndarray) -> float:  # correlations of the repeated scores: cheap, exact
            drawn = np.repeat(positions, weights)
            return metrics.METRICS[metric](pred[drawn], gold[drawn])
        return score

    def compute_metrics(self, predictions, rows, metric_names, label_names=None, settings=None) -> dict[str, float]:
        self.check_metric_names(metric_names)
        rows = as_rows(rows)
        if not _is_labelled(rows):
            raise ValueError("compute_metrics: the rows carry no gold scores")
        gold = [self._target(row, None) for row in rows]
        preds = [p["score"] for p in predictions]
        return {name: metrics.METRICS[name](preds, gold) for name in metric_names}

