"""Multi-label classification: any number of labels per text (or text pair), out of the spec's label names, or none.

Rows: ``text_a`` (``text_b`` for pairs) and ``labels``, the row's label names, sorted; ``[]`` is a valid row, "none of
them". A source spells a row's labels in one of three ways, the spec says which (``normalise`` reads them):
- one ``labels`` column holding the names between a ``label_separator`` (``;``, ``,`` or ``|``): ``anger;joy``, and
  an empty cell for none;
- one ``labels`` column holding a list (``label_separator`` null): ``["anger", "joy"]`` in JSON, JSONL or parquet, or
  that JSON as the text of a TSV/CSV cell;
- ``label_columns``: one 0/1 column per label, named after it (SemEval-2018 E-c); ``labels`` defaults to them.
A value that cannot be read is kept with its problem, which ``validate_row`` reports like any bad row (file, row,
field, what was expected): an empty label between separators, an indicator cell that is not 0/1, a label outside
the label set (with ``labels`` inferred from train: a label the training split lacks, bert_core/validation.py).

Head: the ``[CLS]`` head (``cls_head.py``) with one output per label, each trained with binary cross-entropy on its
logit (``BCEWithLogits``); spec ``pos_weight: true`` (or ``class_weights: balanced``) weighs each label's positive
rows by its negatives / positives in the training split, spec ``class_weights: {label: weight}`` by those weights
(``imbalance.py``). Features: ``text_encoding.py``'s; the target is the row's multi-hot vector (L floats, stacked
to (B, L) by ``collate``).

Predictions: ``{"labels": [...], "probabilities": {label: p}}``, p the sigmoid of the label's logit divided by the
temperature fitted on the eval split before the thresholds (spec ``calibration``, bert_core/calibration.py); a label is on
when p > its threshold (``settings["label_thresholds"]``; 0.5 until tuned). ``tune`` picks the thresholds on the
labelled split a run selects on, from ``THRESHOLDS`` (0.05, 0.10, ..., 0.95: never below the floor 0.05, so a label
is never switched on for every row by a threshold at 0):
- ``global``: one threshold for every label, the one with the best micro-F1 (pooled counts: defined however rare
  a label is);
- ``per_label``: each label the threshold with its own best F1 (which makes macro-F1 the best these thresholds
  give) when the split holds at least ``MIN_POSITIVES`` (10) rows with that label on; a rarer label keeps the global
  threshold, as the F1 of a handful of rows would pick one by chance;
- spec ``thresholds`` null (the default): ``per_label`` when every label has ``MIN_POSITIVES`` rows, else ``global``.
Ties go to the threshold nearest 0.5. ``fit`` saves them with the best model (meta ``label_thresholds``, one of
``TASK_SETTINGS``), so ``Predictor``, the served model and batch scoring apply them. They are tuned on the split they
are scored on, so dev scores are slightly optimistic (as SQuAD 2.0's, with its tuned no-answer threshold).

Metrics: scikit-learn's on the (N, L) 0/1 arrays of gold and predicted labels, each with sample weights (the
bootstrap). ``f1_samples`` and ``jaccard_samples`` score a row with no gold and no predicted label 1 (answering "none
of them" is right), every other undefined ratio 0. ``hamming_loss`` (the share of wrong row-label cells) is the one
lower-is-better metric: reported, never the primary one (model selection and the registry keep the higher score).
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from datasets import List, Value
from scipy.special import expit
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    f1_score,
    hamming_loss,
    jaccard_score,
    precision_score,
    recall_score,
)
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
from bert_core.validation import DataError, problem

DEFAULT_THRESHOLD = 0.5  # a label is on when its probability passes this, until tune picks thresholds
# Candidate thresholds, nearest 0.5 first, so that of equally good thresholds the one nearest the default wins.
THRESHOLDS = np.array(sorted((k / 20 for k in range(1, 20)), key=lambda t: (abs(t - DEFAULT_THRESHOLD), t)))
MIN_POSITIVES = 10  # rows with a label on: fewer in the eval split, no threshold of its own; in any split, a warning
INDICATOR = "labels."  # key of an indicator column's cell in a row just read: "labels.anger" (Rows.source_columns)
PROBLEM = "_labels_problem"  # a row's unreadable labels, worded by normalise, reported by validate_row
INDICATOR_VALUES = {"0": False, "1": True, 0: False, 1: True}  # (True, False, 0.0 and 1.0 are equal to 0 and 1)
SHOWN_LABELS = 12  # label frequencies `bertflow check` shows per split
SHOWN_PAIRS = 3


# ---- metrics: (pred, gold, sample_weight) on (N, L) 0/1 arrays -> float ---------------------------------------
# micro and macro F1 are scikit-learn's on the (N, L) arrays: bert_core.metrics' f1_micro and f1_macro (pooled
# counts of all labels: frequent labels weigh most; the mean of the labels' F1: every label counts the same).


def f1_samples(pred, gold, sample_weight=None) -> float:
    """Mean over rows of the F1 of each row's predicted labels against its gold ones (none vs none: 1)."""
    return float(f1_score(gold, pred, average="samples", zero_division=1.0, sample_weight=sample_weight))


def jaccard_samples(pred, gold, sample_weight=None) -> float:
    """Mean over rows of |gold & predicted| / |gold | predicted| (none vs none: 1); SemEval-2018 E-c's official metric."""
    return float(jaccard_score(gold, pred, average="samples", zero_division=1.0, sample_weight=sample_weight))


def subset_accuracy(pred, gold, sample_weight=None) -> float:
    """Share of rows whose predicted labels are exactly the gold ones."""
    return float(accuracy_score(gold, pred, sample_weight=sample_weight))


def hamming(pred, gold, sample_weight=None) -> float:
    """Share of (row, label) cells predicted wrong: lower is better."""
    return float(hamming_loss(gold, pred, sample_weight=sample_weight))


def precision_micro(pred, gold, sample_weight=None) -> float:
    return float(precision_score(gold, pred, average="micro", zero_division=0, sample_weight=sample_weight))


def recall_micro(pred, gold, sample_weight=None) -> float:
    return float(recall_score(gold, pred, average="micro", zero_division=0, sample_weight=sample_weight))


METRICS: dict[str, Callable[..., float]] = {
    "f1_micro": metrics.f1_micro, "f1_macro": metrics.f1_macro, "f1_samples": f1_samples, "jaccard_samples": jaccard_samples,
    "subset_accuracy": subset_accuracy, "hamming_loss": hamming, "precision_micro": precision_micro,
    "recall_micro": recall_micro,
}
LOWER_IS_BETTER = ("hamming_loss",)


def label_matrix(label_lists: list[list[str]], label_names: list[str]) -> np.ndarray:
    """(N, L) bool: row i has label_names[j] on."""
    index = {name: j for j, name in enumerate(label_names)}
    matrix = np.zeros((len(label_lists), len(label_names)), dtype=bool)
    for i, labels in enumerate(label_lists):
        matrix[i, [index[name] for name in labels]] = True
    return matrix


def f1_of_counts(tp, fp, fn) -> np.ndarray:
    """2 tp / (2 tp + fp + fn), 0 where nothing was gold or predicted."""
    tp, denominator = np.asarray(tp, dtype=float), np.asarray(2 * tp + fp + fn, dtype=float)
    return np.divide(2 * tp, denominator, out=np.zeros_like(denominator), where=denominator > 0)


# ---- rows ---------------------------------------------------------------------------------------------
def read_labels(value, separator: str | None, label_map: dict[str, str]) -> tuple[list[str] | None, str | None]:
    """A ``labels`` cell -> (its label names, sorted, None), or (None, the problem) when it cannot be read."""
    if separator is not None:
        if not isinstance(value, str):
            return None, problem("labels", value, f"text of label names separated by {separator!r} ('' for none)")
        names = [name.strip() for name in value.split(separator)] if value.strip() else []
        if "" in names:
            return None, problem("labels", value, f"label names separated by {separator!r}, no empty label between "
                                 "separators (an empty cell for none)")
    else:
        names = value
        if isinstance(value, str):  # a JSON list as the text of a TSV/CSV cell
            try:
                names = json.loads(value)
            except json.JSONDecodeError:
                names = None
        ok = isinstance(names, list) and all(isinstance(n, str | int) and not isinstance(n, bool) and str(n).strip()
                                             for n in names)
        if not ok:
            return None, problem("labels", value, "a list of label names such as [\"anger\", \"joy\"] ([] for none); "
                                 "for text such as 'anger;joy' set the spec's label_separator")
        names = [str(n) for n in names]
    return sorted({label_map.get(n, n) for n in names}), None


def read_indicators(cells: dict) -> tuple[list[str] | None, str | None]:
    """Indicator cells (label -> its 0/1 cell) -> (the labels on, sorted, None), or (None, the first bad cell)."""
    on = []
    for name, value in cells.items():
        flag = INDICATOR_VALUES.get(value.strip() if isinstance(value, str) else value)
        if flag is None:
            return None, problem(name, value, "0 or 1 (an indicator column of the spec's label_columns)")
        if flag:
            on.append(name)
    return sorted(on), None


class LabelSetRows(Rows):
    """Text (pair) rows with a set of label names each, possibly empty."""

    spec_fields = ("label_separator", "label_columns", "thresholds", "pos_weight", "class_weights", "calibration", "long_text")

    def __init__(self, pair: bool):
        self.pair = pair
        self.fields = (*text_fields(pair), "labels")
        self.request = text_request(pair)

    def check_spec(self, spec) -> None:
        """One way of spelling labels; ``labels`` defaults to ``label_columns``; a higher-is-better primary metric."""
        if spec.primary_metric in LOWER_IS_BETTER:
            raise ValueError(f"primary_metric {spec.primary_metric!r} is lower-is-better, and models are selected and "
                             "promoted on a higher score; use f1_macro, f1_micro or jaccard_samples")
        if spec.label_columns is not None:
            self._check_label_columns(spec)
        if spec.labels is not None and len(spec.labels) < 2:
            raise ValueError(f"labels {spec.labels}: multi-label classification needs at least two labels")
        check_long_text(spec, self.pair)
        if spec.pos_weight and spec.class_weights is not None:
            raise ValueError("pos_weight and class_weights both weigh each label's positive rows; keep one "
                             "(class_weights: balanced is pos_weight: true)")
        problems = imbalance.label_problems(spec, spec.labels) if spec.labels is not None else []
        if problems:
            raise ValueError("; ".join(problems))

    def _check_label_columns(self, spec) -> None:
        columns = spec.label_columns
        if spec.label_separator is not None:
            raise ValueError("label_separator and label_columns: a row's labels come from one `labels` column or "
                             "from one 0/1 column per label, not both; remove one")
        mapped = [where for where, given in (("columns", spec.columns), ("hub.columns", spec.hub and spec.hub.columns))
                  if "labels" in (given or {})]
        if mapped:
            raise ValueError(f"{mapped[0]}.labels and label_columns: with label_columns there is no `labels` column; "
                             "remove one")
        dupes = sorted({c for c in columns if columns.count(c) > 1})
        if dupes or len(columns) < 2:
            raise ValueError(f"label_columns must name at least two distinct columns (repeated: {dupes})")
        if spec.local is not None and spec.local.label_map:
            raise ValueError("local.label_map renames label values; with label_columns the labels are the column names")
        if spec.labels is None:
            spec.labels = list(columns)
        elif set(spec.labels) != set(columns):
            raise ValueError(f"labels {spec.labels} and label_columns {columns} must name the same labels")

    def task_settings(self, spec) -> dict:
        settings = {key: value for key, value in (("thresholds", spec.thresholds), ("pos_weight", spec.pos_weight),
                                                  ("class_weights", spec.class_weights)) if value}
        return settings | turned_off(spec) | long_text_settings(spec)

    def source_columns(self, spec) -> dict[str, str]:
        """With ``label_columns``, one key per label (``labels.anger`` <- column ``anger``) instead of ``labels``."""
        if spec.label_columns is None:
            return super().source_columns(spec)
        return {**{f: f for f in self.fields if f != "labels"}, **{INDICATOR + c: c for c in spec.label_columns}}

    def arrow_features(self):
        return text_arrow_features(labels=List(Value("string")))

    def normalise(self, rows, label_map, spec):
        """Each row's labels as the spec's source spells them -> a sorted list of names (``PROBLEM`` when unreadable);
        single texts get ``text_b = None``."""
        for row in rows:
            if spec.label_columns is not None:
                row["labels"], found = read_indicators({c: row.pop(INDICATOR + c) for c in spec.label_columns})
            else:
                row["labels"], found = read_labels(row.get("labels"), spec.label_separator, label_map or {})
            if found:
                row[PROBLEM] = found
            if not self.pair:
                row["text_b"] = None
        return rows

    def validate_row(self, row, label_set, expected):
        found = text_row_problem(row, self.pair) or row.get(PROBLEM)
        if found:
            return found
        labels = row.get("labels")
        if not isinstance(labels, list):  # rows that did not come through normalise
            return problem("labels", labels, "a list of label names")
        unknown = [name for name in labels if label_set is not None and name not in label_set]
        return problem("labels", unknown[0], expected) if unknown else None

    def infer_label_names(self, train):
        return sorted({name for row in train if isinstance(row.get("labels"), list) for name in row["labels"]})

    def check_data(self, spec, splits, label_names, origins) -> list[str]:
        """At least two labels; a warning per label on in fewer than MIN_POSITIVES rows of a split."""
        if len(label_names) < 2:
            raise DataError(f"{origins['train']}: the training split holds only the label(s) {label_names}; multi-label "
                            "classification needs at least two (list them in the spec's `labels`)")
        if problems := imbalance.label_problems(spec, label_names):
            raise DataError(f"{origins['train']}: {'; '.join(problems)} (the labels seen in the data; spec `labels` "
                            "unset)")
        warnings = []
        for split, rows in splits.items():
            counts = Counter(name for row in rows for name in row["labels"])
            for name in (n for n in label_names if counts[n] < MIN_POSITIVES):
                if split == "train":
                    why = "the model cannot learn it" if not counts[name] else "too few to learn it well"
                else:
                    why = "too few to evaluate it, or to tune a threshold of its own"
                warnings.append(f"{origins[split]}: label {name!r} is on in {counts[name]} row(s) of split {split!r} "
                                f"(fewer than {MIN_POSITIVES}): {why}")
        return warnings

    def describe_labels(self, rows) -> str:
        """Labels per row, the share of rows with each label (most frequent first), the most frequent pairs."""
        n = max(len(rows), 1)
        counts = Counter(name for row in rows for name in row["labels"])
        pairs = Counter(pair for row in rows for pair in itertools.combinations(sorted(row["labels"]), 2))
        none = sum(not row["labels"] for row in rows)
        shown = ", ".join(f"{name} {k / n:.0%}" for name, k in counts.most_common(SHOWN_LABELS))
        more = f", +{len(counts) - SHOWN_LABELS} more" if len(counts) > SHOWN_LABELS else ""
        top = ", ".join(f"{a}+{b} {k / n:.0%}" for (a, b), k in pairs.most_common(SHOWN_PAIRS)) or "-"
        return (f"{sum(counts.values()) / n:.2f} labels/row, none {none / n:.0%}; {shown}{more}; "
                f"top pairs {top}")


# ---- features and head ----------------------------------------------------------------------------------------
def multi_hot(row: dict, label_names: list[str] | None) -> list[float]:
    """The training target of a row: 1.0 for each of ``label_names`` it has on, else 0.0."""
    on = set(row["labels"])
    if not on <= set(label_names or []):
        raise ValueError(f"{row.get('_source', '?')}: field 'labels' has {sorted(on - set(label_names or []))}; "
                         f"expected some of {label_names}")
    return [1.0 if name in on else 0.0 for name in label_names]


class BinaryCrossEntropy:
    """logits (B, L), labels (B, L) 0/1 floats -> the mean binary cross-entropy of every cell. ``pos_weight`` (L,):
    each label's positive cells weigh that much. A plain callable, not a module: the saved head holds no loss."""

    def __init__(self, pos_weight: torch.Tensor | None = None):
        self.pos_weight = pos_weight

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weight = None if self.pos_weight is None else self.pos_weight.to(logits.device)
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), pos_weight=weight)


def build_multi_label(encoder: BertEncoder, label_names: list[str] | None) -> nn.Module:
    if not label_names or len(label_names) < 2:
        raise ValueError(f"multi-label classification needs at least two label names, got {label_names}")
    return SequenceClassifier(encoder, len(label_names), BinaryCrossEntropy())


def weigh_positives(model: nn.Module, train_features: list[dict], settings: dict,
                    label_names: list[str] | None = None) -> dict:
    """Spec ``pos_weight: true`` or ``class_weights: balanced``: each label's positives weigh its negatives / positives
    among the training rows (1 for a label never on); ``class_weights: {label: weight}``: those weights (1 for a label
    not named). Returns ``{"class_weights": {label: pos weight}}`` for the model's meta ({} when unweighted)."""
    setting = settings.get("class_weights") or (imbalance.BALANCED if settings.get("pos_weight") else None)
    if setting is None:
        return {}
    targets = np.array([f["labels"] for f in train_features], dtype=np.float64)  # (N, L)
    positives = targets.sum(axis=0)
    balanced = np.where(positives > 0, (len(targets) - positives) / np.maximum(positives, 1), 1.0)
    label_names = label_names or [str(j) for j in range(targets.shape[1])]
    weight = imbalance.weight_vector(setting, label_names, balanced)
    model.loss = BinaryCrossEntropy(torch.tensor(weight, dtype=torch.float32))
    return {"class_weights": {name: float(w) for name, w in zip(label_names, weight, strict=True)}}


# ---- predictions ----------------------------------------------------------------------------------------
def thresholds_of(label_names: list[str], settings: dict) -> np.ndarray:
    """(L,) each label's threshold: the saved ``label_thresholds``, else DEFAULT_THRESHOLD."""
    saved = settings.get("label_thresholds") or {}
    return np.array([float(saved.get(name, DEFAULT_THRESHOLD)) for name in label_names])


class LabelSetPredictions(Predictions):
    """A sigmoid per label, on above its threshold; multi-label metrics of scikit-learn."""

    metrics = tuple(METRICS)
    response = {"labels": "labels", "probabilities": "probabilities"}

    def postprocess(self, logits, features, rows, label_names, settings: dict) -> list[dict]:
        """logits[k]: (L,) -> {"labels": the names on, in label order, "probabilities": {name: p}}."""
        thresholds = thresholds_of(label_names, settings)
        predictions = []
        for row_logits in logits_by_row(logits, features, len(rows), window_pooling(settings)):
            probs = expit(scaled(row_logits, settings))  # the fitted temperature: each label's side of 0.5 kept
            predictions.append({"labels": [n for n, on in zip(label_names, probs > thresholds, strict=True) if on],
                                "probabilities": {n: float(p) for n, p in zip(label_names, probs, strict=True)}})
        return predictions

    def tune(self, predictions, rows, settings) -> dict:
        """The thresholds of the module docstring, from these predictions' probabilities and the rows' gold labels."""
        names = list(predictions[0]["probabilities"])
        probs = np.array([[p["probabilities"][name] for name in names] for p in predictions])  # (N, L)
        gold = label_matrix([row["labels"] for row in as_rows(rows)], names)
        counts = []  # per candidate threshold: (tp, fp, fn), each (L,)
        for threshold in THRESHOLDS:
            on = probs > threshold
            counts.append(((on & gold).sum(0), (on & ~gold).sum(0), (~on & gold).sum(0)))
        tp, fp, fn = (np.array(c) for c in zip(*counts, strict=True))  # each (G, L)
        best_global = THRESHOLDS[np.argmax(f1_of_counts(tp.sum(1), fp.sum(1), fn.sum(1)))]
        enough = gold.sum(0) >= MIN_POSITIVES
        mode = settings.get("thresholds") or ("per_label" if enough.all() else "global")
        chosen = np.full(len(names), best_global)
        if mode == "per_label":
            chosen = np.where(enough, THRESHOLDS[np.argmax(f1_of_counts(tp, fp, fn), axis=0)], best_global)
        return {"label_thresholds": {name: float(t) for name, t in zip(names, chosen, strict=True)}}

    def calibrate(self, logits, features, rows, label_names, settings):
        """Temperature scaling of every label's sigmoid (one T for all), fitted on these rows (``bert_core.calibration``)
        before ``tune``, so the thresholds are tuned on calibrated probabilities."""
        return fit_and_measure(*self._scores(logits, features, rows, label_names, settings), "sigmoid", settings)

    def measure_calibration(self, logits, features, rows, label_names, settings):
        return measure(*self._scores(logits, features, rows, label_names, settings), "sigmoid", settings)

    def _scores(self, logits, features, rows, label_names, settings) -> tuple[np.ndarray, np.ndarray]:
        """(logits (N, L), gold labels (N, L) 0/1) of labelled rows."""
        return (np.stack(logits_by_row(logits, features, len(rows), window_pooling(settings))),
                label_matrix([row["labels"] for row in as_rows(rows)], label_names).astype(np.float64))

    def _arrays(self, predictions, rows, label_names) -> tuple[np.ndarray, np.ndarray]:
        """(predicted, gold), each (N, L) bool. Without ``label_names``, their order is the predictions'."""
        names = list(label_names or predictions[0]["probabilities"])
        rows = as_rows(rows)
        if not is_labelled(rows, "labels"):
            raise ValueError("compute_metrics: the rows carry no gold labels")
        return label_matrix([p["labels"] for p in predictions], names), label_matrix([r["labels"] for r in rows], names)

    def compute_metrics(self, predictions, rows, metric_names, label_names=None, settings=None) -> dict[str, float]:
        self.check_metric_names(metric_names)
        pred, gold = self._arrays(predictions, rows, label_names)
        return {name: METRICS[name](pred, gold) for name in metric_names}

    def weighted_metric(self, predictions, rows, metric, label_names=None, settings=None):
        """scikit-learn's metric with sample weights: the same numbers as the repeated rows (the label set is
        the columns, so rows not drawn change nothing)."""
        pred, gold = self._arrays(predictions, rows, label_names)
        return lambda weights: METRICS[metric](pred, gold, sample_weight=weights)

    def per_class_report(self, rows, predictions, label_names, spec) -> dict:
        """Precision, recall, F1 and support (rows with it on) per label, and the micro, macro and weighted averages."""
        pred, gold = self._arrays(predictions, rows, label_names)
        report = classification_report(gold, pred, target_names=list(label_names), output_dict=True, zero_division=0)
        report.pop("samples avg", None)  # zero_division 0 there; f1_samples scores "none" vs "none" 1
        return report

    def card_lines(self, label_names, settings, report) -> list[str]:
        """The thresholds the model applies (saved ``label_thresholds``, else the default) beside each label's dev
        precision, recall, F1 and support (``report``: ``per_class_report`` of the eval split), what an empty answer
        means, and the positive weights training used (``class_weights``), if any."""
        thresholds = thresholds_of(label_names, settings)
        if not settings.get("label_thresholds"):
            how = f"No thresholds were tuned: every label uses {DEFAULT_THRESHOLD:g}."
        elif len(set(thresholds)) == 1:
            how = (f"One threshold for every label, {thresholds[0]:g}, tuned on the eval split for the best micro-F1 "
                   f"(spec `thresholds: {settings.get('thresholds') or 'null'}`).")
        else:
            how = ("One threshold per label, tuned on the eval split for that label's best F1; a label with fewer than "
                   f"{MIN_POSITIVES} rows on there keeps the global one (best micro-F1) "
                   f"(spec `thresholds: {settings.get('thresholds') or 'null'}`).")
        lines = ["## Labels and thresholds", "",
                 "A label is on when its probability (the sigmoid of its logit) passes its threshold, so a text gets "
                 f"any number of labels. {how} The thresholds are tuned on the split the dev scores come from, so "
                 "those scores are slightly optimistic. A text for which no label passes its threshold gets the "
                 "empty list `[]`: none of the labels applies (not \"unsure\"); every label's probability is "
                 "returned beside the list.", "",
                 "| label | threshold | dev precision | dev recall | dev F1 | dev support |", "|---|---|---|---|---|---|"]
        for name, threshold in zip(label_names, thresholds, strict=True):
            row = (report or {}).get(name)
            scores = (f"{row['precision']:.4f} | {row['recall']:.4f} | {row['f1-score']:.4f} | {int(row['support'])}"
                      if row else "- | - | - | -")
            lines.append(f"| `{name}` | {threshold:g} | {scores} |")
        weights = imbalance.card_lines(label_names, settings, "each label's positive rows in the binary cross-entropy "
                                       "(`pos_weight`)")
        return [*lines, "", *weights]

    def input_limit(self, spec, max_seq_length, label_names) -> str:
        return (f"{truncation_note(max_seq_length, spec.long_text)}; it answers any of its {len(label_names or [])} "
                "labels, each one "
                "whose probability passes its threshold (tuned on the eval split), or none: an empty answer means "
                "none of its labels applies, not that it is unsure, and out-of-domain input is answered like any other")


def multi_label(name: str, pair: bool) -> Family:
    """Multi-label classification of one text (``pair=False``) or a text pair."""
    return Family(name, rows=LabelSetRows(pair), features=TextFeatures(target=multi_hot, field="labels"),
                  build_model=build_multi_label, predictions=LabelSetPredictions(name), weigh_loss=weigh_positives)


MULTI_LABEL_CLASSIFICATION = multi_label("multi_label_classification", pair=False)
PAIR_MULTI_LABEL_CLASSIFICATION = multi_label("pair_multi_label_classification", pair=True)
