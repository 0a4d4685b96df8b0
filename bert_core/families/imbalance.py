"""A rare class that matters: class weights in the training loss, and the decision threshold of a binary task.
Shared by single-text and pair classification (weighted cross-entropy and the threshold) and multi-label
classification (class weights as each label's ``pos_weight``).

Class weights (spec field ``class_weights``, or TrainConfig's, which replaces it):
- ``balanced``: classification weighs each label n_rows / (n_labels * the label's rows), scikit-learn's
  ``compute_class_weight("balanced")``; multi-label weighs each label's positive rows by its negatives / positives
  (``pos_weight: true``). Counted on the training features: with windows, each window counts, as each is a
  training example. A label the training split never shows weighs 1 (it adds nothing to the loss anyway).
- ``{label: weight}``: those weights, each positive; a label not named weighs 1.
What training used, as ``{label: weight}``, is kept in the model's meta (``class_weights``): the run's params and
the model card show it. The saved head holds no loss, so predicting never needs it.

Decision threshold (spec ``decision_threshold``, binary classification only): the answer is ``label_names[1]``
(the positive class, as the spec's ``f1`` scores it) when its probability p1 is at least the threshold, else
``label_names[0]``. 0.5 (the default) is the most probable label, as without a threshold; a number in (0, 1) is
applied as given; ``tune`` picks, on the split a run selects on, the cut-off of ``THRESHOLD_GRID`` (0.01 ... 0.99)
with the best primary metric, ties going to the one nearest 0.5. The threshold applied is saved with the model
(meta ``decision_threshold``, one of ``TASK_SETTINGS``; ``decision_threshold_tuned_for`` names the metric when it
was tuned), so ``Predictor``, the served model and batch scoring apply it. Tuned on the split it is scored on, the
dev scores are slightly optimistic (as multi-label's thresholds and SQuAD 2.0's no-answer threshold).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, field_validator
from torch import nn

from bert_core.families.text_encoding import trains_on_documents

BALANCED = "balanced"
TUNE = "tune"
DEFAULT_THRESHOLD = 0.5
# Candidate cut-offs, nearest 0.5 first, so that of equally good ones the one nearest the default wins.
THRESHOLD_GRID = np.array(sorted((k / 100 for k in range(1, 100)), key=lambda t: (abs(t - DEFAULT_THRESHOLD), t)))


# ---- the values a spec (or a training config) may give -------------------------------------------------------
def read_class_weights(value: Any) -> Any:
    """None, ``balanced``, a ``{label: weight}`` mapping, or that mapping as JSON text (the command line, a sweep's
    values) -> the value, labels as strings and weights as floats; ValueError saying what is wrong."""
    if value is None or value == BALANCED:
        return value
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"class_weights {value!r} is not a JSON mapping: {err.msg}") from None
    if not isinstance(value, dict):
        raise ValueError(f"class_weights is {value!r}; expected 'balanced' or a mapping of label to weight, "
                         "e.g. {'1': 5.0} (JSON on the command line: '{\"1\": 5}')")
    if not value:
        raise ValueError("class_weights {} names no label; name at least one (a label not named weighs 1)")
    weights = {}
    for label, weight in value.items():
        if isinstance(label, bool):
            raise ValueError(f"class_weights: label {label!r} is a YAML boolean (from yes/no/true/false): quote it")
        number = isinstance(weight, int | float) and not isinstance(weight, bool)
        if not number or not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"class_weights: the weight of label {str(label)!r} is {weight!r}; a weight must be a "
                             "positive number")
        weights[str(label)] = float(weight)
    return weights


def read_decision_threshold(value: Any) -> Any:
    """None, ``tune`` or a number strictly between 0 and 1 (text such as '0.3' too) -> the value; ValueError else."""
    if value is None or value == TUNE:
        return value
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"decision_threshold is {value!r}; expected a number in (0, 1) or 'tune'") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise ValueError(f"decision_threshold is {value!r}; expected a probability cut-off strictly between 0 and 1, "
                         "or 'tune'")
    return float(value)


def label_problems(spec, label_names: list[str]) -> list[str]:
    """What the spec's ``class_weights`` and ``decision_threshold`` get wrong about these labels, in words naming
    the field ([] when nothing, or no spec: the data checked alone)."""
    problems: list[str] = []
    if spec is None:
        return problems
    if isinstance(spec.class_weights, dict):
        unknown = [name for name in spec.class_weights if name not in label_names]
        if unknown:
            problems.append(f"class_weights names {unknown}, not among the labels {label_names}")
    if spec.decision_threshold != DEFAULT_THRESHOLD and len(label_names) != 2:
        problems.append(f"decision_threshold {spec.decision_threshold!r} cuts the probability of the positive class "
                        f"of a binary task, and there are {len(label_names)} labels; remove it (the most probable "
                        "label is answered)")
    return problems


def task_settings(spec) -> dict:
    """The settings training and predicting need: the spec's class weights when set, its decision threshold when it
    is not the default (``tune``: with the primary metric it is tuned for)."""
    settings: dict = {} if spec.class_weights is None else {"class_weights": spec.class_weights}
    if spec.decision_threshold == TUNE:
        settings |= {"decision_threshold": TUNE, "decision_threshold_tuned_for": spec.primary_metric}
    elif spec.decision_threshold != DEFAULT_THRESHOLD:
        settings["decision_threshold"] = spec.decision_threshold
    return settings


class ImbalanceFields(BaseModel):
    """The reading of ``class_weights`` and ``decision_threshold`` that a task spec and a training config share
    (both models inherit it, so the command line's text and a spec's YAML are read alike)."""

    @field_validator("class_weights", mode="before", check_fields=False)
    @classmethod
    def _class_weights_read(cls, value: Any) -> Any:
        return read_class_weights(value)

    @field_validator("decision_threshold", mode="before", check_fields=False)
    @classmethod
    def _decision_threshold_read(cls, value: Any) -> Any:
        return read_decision_threshold(value)


# ---- class weights in the loss ------------------------------------------------------------------------------
def balanced_weights(counts: np.ndarray) -> np.ndarray:
    """(C,) training rows per label -> (C,) n_rows / (n_labels * count) (scikit-learn's 'balanced'); 1 where 0."""
    counts = np.asarray(counts, dtype=np.float64)
    return np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)), 1.0)


def weight_vector(setting, label_names: list[str] | None, balanced: np.ndarray) -> np.ndarray:
    """(C,) the weight of each of ``label_names``: ``balanced`` for 'balanced', else the mapping's (1 if unnamed)."""
    if setting == BALANCED:
        return np.asarray(balanced, dtype=np.float64)
    unknown = [name for name in setting if name not in (label_names or [])]
    if unknown:
        raise ValueError(f"class_weights names {unknown}, not among the labels {label_names}")
    return np.array([setting.get(name, 1.0) for name in label_names], dtype=np.float64)


class WeightedCrossEntropy:
    """logits (B, C), labels (B,) class ids -> cross-entropy with each class's rows weighed by ``weight`` (C,), as
    ``F.cross_entropy(weight=...)``: the mean divides by the batch's summed weights. A plain callable, not a module:
    the saved head holds no loss."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels, weight=self.weight.to(logits.device))


def weigh_classes(model: nn.Module, train_features: list[dict], settings: dict,
                  label_names: list[str] | None = None) -> dict:
    """Classification's ``Family.weigh_loss``: with ``settings["class_weights"]``, the head's loss becomes the
    weighted cross-entropy; returns ``{"class_weights": {label: weight}}`` for the model's meta ({} when unweighted).
    'balanced' counts what the loss counts: features (windows), or rows with ``long_text.train_on: document``."""
    setting = settings.get("class_weights")
    if setting is None:
        return {}
    rows_only = trains_on_documents(settings)
    counts = np.bincount([f["labels"] for f in train_features if not rows_only or f.get("window", 0) == 0],
                         minlength=len(label_names))
    weights = weight_vector(setting, label_names, balanced_weights(counts))
    model.loss = WeightedCrossEntropy(torch.tensor(weights, dtype=torch.float32))
    return {"class_weights": {name: float(w) for name, w in zip(label_names, weights, strict=True)}}


# ---- the decision threshold ----------------------------------------------------------------------------------
def decide(probs: np.ndarray, label_names: list[str], settings: dict) -> int:
    """The index of the label answered for one row's probabilities (C,): for two labels with a saved
    ``decision_threshold``, 1 when p1 >= it; else the most probable label."""
    threshold = settings.get("decision_threshold")
    if len(label_names) == 2 and isinstance(threshold, float):
        return int(probs[1] >= threshold)
    return int(probs.argmax())


def best_threshold(p1: np.ndarray, gold: np.ndarray, score: Callable[[np.ndarray, np.ndarray], float]) -> float:
    """The cut-off of ``THRESHOLD_GRID`` whose answers (1 where p1 >= it) get the best ``score(preds, gold)``
    (label indices, higher is better); of equal scores, the cut-off nearest 0.5."""
    scores = np.array([score((p1 >= t).astype(np.int64), gold) for t in THRESHOLD_GRID], dtype=np.float64)
    return float(THRESHOLD_GRID[int(np.argmax(np.nan_to_num(scores, nan=-np.inf)))])


# ---- the model card --------------------------------------------------------------------------------------------
def card_lines(label_names: list[str] | None, settings: dict, what: str) -> list[str]:
    """The model card's lines on the class weights training used (``what``: what a weight multiplies) and the
    decision threshold the model applies, ending with a blank line; [] when neither is set (0.5 needs no line)."""
    display = settings.get("display_names") or {}
    lines, titles = [], []
    if settings.get("class_weights"):
        shown = ", ".join(f"`{display.get(n, n)}` {w:.4g}" for n, w in settings["class_weights"].items())
        titles.append("Class weights")
        lines.append(f"Training weighed {what} by its class weight (`class_weights`): {shown}. A heavier label's "
                     "mistakes cost more, so the model answers it more often than an unweighted one would.")
    threshold = settings.get("decision_threshold")
    if isinstance(threshold, float) and label_names and len(label_names) == 2:
        tuned_for = settings.get("decision_threshold_tuned_for")
        if tuned_for or threshold != DEFAULT_THRESHOLD:
            negative, positive = (display.get(n, n) for n in label_names)
            why = (f"tuned on the eval split for the best `{tuned_for}` (`decision_threshold: tune`), so the dev "
                   "scores are slightly optimistic" if tuned_for else "set by `decision_threshold` (the task spec or "
                   "the training config), not tuned")
            titles.append("decision threshold")
            lines.append(f"The model answers `{positive}` when its probability is at least {threshold:g}, else "
                         f"`{negative}`: a decision threshold {why}. `score` is the probability of the label answered.")
    return [f"## {' and '.join(titles).capitalize()}", "", *lines, ""] if lines else []
