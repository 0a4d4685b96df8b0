"""What every family shares: the head's ``Output``, the collate function, and the ``Family`` interface.

A family is one application type of the BERT paper (classification, regression, tagging, extractive QA), as
a small composition of parts, each answering one question:

- ``rows`` (``Rows``): what the task's data is. The canonical row fields and the spec fields it reads, how a
  row is normalised and checked, label names, checks of the whole data, how labels are described to people,
  and which fields a served model takes.
- ``features`` (``FeatureBuilder``): rows -> model inputs and training targets.
- ``build_model``: the encoder plus the family's head.
- ``predictions`` (``Predictions``): the head's logits -> people-ready predictions (settings it may tune on
  the eval split), their metrics (and the bootstrap form of each), per-class report and confusion matrix, and
  what a served model returns.

Flows, loading, training and serving ask a family's parts and never branch on family names. Parts that
families share are shared objects, not base classes to override (``text_encoding.py``: the text and text-pair
input of classification and regression; ``qa.py``: windows and span search for both extractive QA families).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from datasets import Features
from torch import nn

from bert_core.model import BertEncoder
from bert_core.tokenizer import BertTokenizer

IGNORE_INDEX = -100  # label value cross-entropy skips: sub-word pieces, specials, padding


@dataclasses.dataclass
class Output:
    """logits: (B, C) classification, (B,) regression, (B, T, C) tagging, (B, T, 2) QA start/end."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None


# Model inputs every head takes; the rest of a feature row (labels, ids for postprocessing) varies.
MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask")


def collate(features: list[dict[str, Any]], pad_id: int = 0, pad_to_multiple_of: int = 8) -> dict[str, torch.Tensor]:
    """Pad a list of feature rows to the batch's longest sequence (dynamic padding).

    Lists of ints become (B, T) tensors (``input_ids`` padded with pad_id, ``labels`` lists with -100,
    the rest with 0); lists of floats are fixed-length vectors, one entry per label (multi-label targets), stacked
    to (B, L) float32, never padded; scalars become (B,) tensors; other values (strings, offsets) are dropped.
    ``attention_mask`` (B, T) is 1 on each row's real tokens.
    Rounding T up to a multiple of 8 keeps matmul shapes friendly without much extra padding.
    """
    length = max(len(f["input_ids"]) for f in features)
    length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    batch: dict[str, torch.Tensor] = {}
    for key, first in features[0].items():
        if isinstance(first, (list, tuple, np.ndarray)) and len(first) and isinstance(first[0], (float, np.floating)):
            batch[key] = torch.tensor(np.array([f[key] for f in features], dtype=np.float32))  # (B, L)
        elif isinstance(first, (list, tuple, np.ndarray)):
            fill = pad_id if key == "input_ids" else IGNORE_INDEX if key == "labels" else 0
            arr = np.full((len(features), length), fill, dtype=np.int64)
            for i, f in enumerate(features):
                arr[i, : len(f[key])] = f[key]
            batch[key] = torch.from_numpy(arr)
        elif isinstance(first, float):
            batch[key] = torch.tensor([f[key] for f in features], dtype=torch.float32)
        elif isinstance(first, (int, np.integer)):
            batch[key] = torch.tensor([f[key] for f in features], dtype=torch.int64)
    lengths = torch.tensor([len(f["input_ids"]) for f in features])
    batch["attention_mask"] = (torch.arange(length)[None, :] < lengths[:, None]).long()  # (B, T)
    return batch


def as_rows(rows) -> list[dict]:
    """A ``datasets.Dataset`` or any iterable of dicts, as a list of dicts."""
    return rows.to_list() if hasattr(rows, "to_list") else list(rows)


class Rows:
    """What a task's data is, for one family: the fields of its canonical rows (docs/design.md), the spec
    fields that describe them, and every check a row or the whole data must pass before training."""

    # Canonical row fields, the only names a spec's `columns` may map.
    fields: tuple[str, ...]
    # What a served model takes: canonical field -> request columns that may carry it, preferred first.
    request: dict[str, tuple[str, ...]]
    # Local file formats the rows can come from (bert_core/readers.py).
    local_formats: tuple[str, ...] = ("tsv", "csv", "json", "jsonl", "parquet")
    # TaskSpec fields only this family reads (set on a spec of another family, they are an error).
    spec_fields: tuple[str, ...] = ()
    # Whether rows carry names from a label (tag) set: the spec's `labels`, else inferred from train.
    has_label_names: bool = True

    def check_spec(self, spec) -> None:
        """Spec rules of this family (its own fields, its metrics against its labels); may fill defaults.
        Raises ValueError with the message the spec file's error shows."""

    def task_settings(self, spec) -> dict:
        """What features, postprocessing and metrics need from the spec besides max_seq_length; kept in the
        fine-tuned model's meta, so predicting and scoring later work as in training."""
        return {}

    def arrow_features(self) -> Features:
        """The column types of canonical rows stored as a ``datasets.Dataset`` (``_source`` included)."""
        raise NotImplementedError

    def source_columns(self, spec) -> dict[str, str]:
        """Key a reader fills in a row -> the source column it reads, before the spec's ``columns`` rename them
        (``TaskSpec.column_map``): each canonical field from the column of its own name by default; multi-label's
        indicator columns are one key per label (bert_core/families/multi_label.py)."""
        return {field: field for field in self.fields}

    def normalise(self, rows: list[dict], label_map: dict[str, str] | None, spec) -> list[dict]:
        """Rows just read from one of ``spec``'s sources -> canonical form: label values as strings through the
        source's ``label_map`` (where the family has label names), missing optional fields filled. ``spec``: for
        what only it says about the source's spelling (multi-label's ``label_separator``)."""
        return rows

    def validate_row(self, row: dict, label_set: set[str] | None, expected: str) -> str | None:
        """None for a good row, else "field 'x': got ..., expected ..." (bert_core/validation.py words it).
        ``label_set``: the allowed labels (tags) or None; ``expected``: how to word them. May normalise the
        row in place (regression scores become floats)."""
        raise NotImplementedError

    def infer_label_names(self, train: list[dict]) -> list[str] | None:
        """The label (tag) names of the training rows, sorted, when the spec lists none."""
        return None

    def check_data(self, spec, splits: dict[str, list[dict]], label_names: list[str] | None,
                   origins: dict[str, str]) -> list[str]:
        """Checks of a task's whole data that no single row shows, run when it loads (before any training).

        ``splits``: split name -> validated canonical rows (may be repaired in place, when the spec asks);
        ``origins``: split name -> its file (or hub split), for messages. Raises ``DataError`` naming the
        file, the field and what to change; returns warnings worth a log line that do not stop a run.
        """
        return []

    def describe_labels(self, rows: list[dict]) -> str:
        """The labels of some rows in a few words, for people (`bertflow check`)."""
        return "-"


class FeatureBuilder:
    """Canonical rows -> feature rows: the model's inputs and, for labelled rows, its training targets."""

    # Batch keys holding training targets; the trainer passes them to the model with the inputs.
    label_keys: tuple[str, ...] = ("labels",)

    def build(self, rows, tokenizer: BertTokenizer, label_names: list[str] | None, settings: dict) -> list[dict]:
        """Canonical rows (see docs/design.md) -> feature rows, in row order.

        ``rows``: a ``datasets.Dataset`` or a list of dicts. ``settings``: at least ``max_seq_length``.
        Every feature holds ``input_ids``, ``token_type_ids`` (lists, one entry per token, unpadded)
        and ``example_index`` (the row it came from); the training targets named by ``label_keys``
        are present only when the rows carry gold labels. Values are flat lists of numbers (one per
        token, so ``collate`` pads them to (B, T)), ints, floats or strings, so features store in Arrow.
        """
        raise NotImplementedError

    def token_lengths(self, rows, tokenizer: BertTokenizer) -> list[int]:
        """Tokens per row before any truncation, ``[CLS]``/``[SEP]`` included (for reports on the data)."""
        raise NotImplementedError

    def stats(self, features) -> dict:
        """Counts worth logging about built features (e.g. words cut off by max_seq_length)."""
        return {}


class Predictions:
    """The head's logits -> people-ready predictions, and how good they are: the family's metrics."""

    # Metric names a spec may ask for; ``compute_metrics`` returns them under these names.
    metrics: tuple[str, ...]
    # What a served model returns: response column -> the prediction field it shows.
    response: dict[str, str]

    def __init__(self, family: str):
        self.family = family  # the family's name, for messages

    def postprocess(self, logits: list[np.ndarray], features: list[dict], rows, label_names, settings: dict) -> list[dict]:
        """Per-feature logits -> one people-ready prediction per input row, in row order.

        ``logits[k]`` belongs to ``features[k]``: shape (C,) classification, () regression, (T, C)
        tagging, (T, 2) QA, with T that feature's own length (longer, padded arrays are cut to T).
        """
        raise NotImplementedError

    def tune(self, predictions: list[dict], rows, settings: dict) -> dict:
        """Settings this family learns from the labelled rows of the split a run selects on, given predictions
        made with ``settings`` (extractive QA with unanswerable questions: its no-answer threshold). ``fit``
        predicts again with them, scores that, and saves them with the best model (its meta, read back through
        ``TASK_SETTINGS``). Nothing to learn by default."""
        return {}

    def calibrate(self, logits: list[np.ndarray], features: list[dict], rows, label_names,
                  settings: dict) -> tuple[dict, dict[str, float], dict | None]:
        """Scores made frequencies on the labelled rows of the split a run selects on, before ``tune`` (so its
        thresholds are tuned on calibrated scores): (learnt settings, e.g. ``{"temperature": T}``, saved with the
        model; metrics ``ece``, ``ece_uncalibrated``, ``brier``, ``brier_uncalibrated``; the report a reliability
        diagram is drawn from, ``bert_core.calibration.calibration_report``). ``logits`` as for ``postprocess``.
        Nothing for families whose scores are not probabilities of their answers."""
        return {}, {}, None

    def measure_calibration(self, logits: list[np.ndarray], features: list[dict], rows, label_names,
                            settings: dict) -> tuple[dict[str, float], dict | None]:
        """``calibrate``'s metrics and report with the settings saved with the model (a saved model is scored, never
        fitted): ({}, None) for families that do not calibrate."""
        return {}, None

    def compute_metrics(
        self, predictions: list[dict], rows, metric_names: list[str], label_names: list[str] | None = None,
        settings: dict | None = None,
    ) -> dict[str, float]:
        """Predictions (from ``postprocess``) vs the gold fields of ``rows``, by the official definition
        of each metric named in the spec; fractions in [0, 1] (correlations in [-1, 1]). ``settings``: the
        task's settings (``Rows.task_settings``), e.g. tagging's ``tag_scheme``."""
        raise NotImplementedError

    def check_metric_names(self, names) -> None:
        unknown = [n for n in names if n not in self.metrics]
        if unknown:
            raise ValueError(f"metrics {unknown} are not defined for {self.family}; expected some of {list(self.metrics)}")

    def weighted_metric(self, predictions: list[dict], rows, metric: str, label_names: list[str] | None = None,
                        settings: dict | None = None) -> Callable[[np.ndarray], float]:
        """``metric`` as a function of row weights ``w`` ((N,) ints: how often each row is drawn, as in a
        bootstrap resample), equal to ``compute_metrics`` on the rows repeated that often. This default
        repeats the rows; families override it with per-row statistics, so that a thousand resamples of
        a corpus-level metric (entity F1, SQuAD F1) take a second, not minutes."""
        rows = as_rows(rows)
        positions = np.arange(len(rows))

        def take(items: list[dict], drawn: np.ndarray) -> list[dict]:
            # A row drawn twice must count twice: rows matched to predictions by `id` (QA) get one id per draw.
            if items and "id" in items[0]:
                return [{**items[i], "id": f"{items[i]['id']}#{k}"} for k, i in enumerate(drawn)]
            return [items[i] for i in drawn]

        def score(weights: np.ndarray) -> float:
            drawn = np.repeat(positions, weights)
            return self.compute_metrics(take(predictions, drawn), take(rows, drawn), [metric], label_names,
                                        settings)[metric]
        return score

    def per_class_report(self, rows: list[dict], predictions: list[dict], label_names, spec) -> dict | None:
        """Precision, recall and F1 per class (label, entity type or tag); None when there are no classes."""
        return None

    def confusion(self, rows: list[dict], predictions: list[dict], label_names, spec):
        """(gold names, predicted names, all names) for a confusion matrix, in the names people read; None
        when the family predicts no single label per row."""
        return None

    def input_limit(self, spec, max_seq_length: int, label_names: list[str] | None) -> str:
        """What the model reads of a long input and what it answers, for a model card's limits."""
        raise NotImplementedError

    def card_lines(self, label_names: list[str] | None, settings: dict, report: dict | None) -> list[str]:
        """A model card's section on how this family turns scores into answers with the settings saved with the
        model (``settings``: the ``TASK_SETTINGS`` of its meta; ``report``: ``per_class_report`` of the eval
        split, or None), as markdown lines ending with a blank one; [] when there is nothing to say beyond the
        rest of the card (multi-label: each label's threshold beside its dev scores, and what no label means)."""
        return []


def unweighted_loss(model: nn.Module, train_features: list[dict], settings: dict,
                    label_names: list[str] | None = None) -> dict:
    """Most families train with their loss as built: nothing learnt from the data."""
    return {}


@dataclasses.dataclass
class Family:
    """One application family: its name (a spec's ``family``) and its parts (module docstring). A family
    variant is a new combination: it implements the parts that differ and reuses the others."""

    name: str  # the spec's `family` value, e.g. "pair_classification"
    rows: Rows
    features: FeatureBuilder
    # The encoder under ``.bert`` plus this family's head; label_names: the spec's labels (None: none).
    build_model: Callable[[BertEncoder, list[str] | None], nn.Module]
    predictions: Predictions
    # (model, training features, settings, label_names): weights of the training loss from the settings and the
    # training data (classification's class weights, multi-label's pos_weight), set on a freshly built model before
    # training; returns what to keep in the model's meta (``{"class_weights": {label: weight}}``, or {}). The saved
    # head holds no loss, so a model reloaded to predict needs none of this.
    weigh_loss: Callable[[nn.Module, list[dict], dict, list[str] | None], dict] = unweighted_loss
