"""Batched inference and scoring: logits per feature -> predictions per row -> official metrics; a saved model
scored on labelled rows (``evaluate_model_dir``)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from bert_core import serving_precision
from bert_core.checkpoint import load_finetuned
from bert_core.families import get_family
from bert_core.families.base import MODEL_INPUTS, Family
from bert_core.spec import TaskSpec
from bert_core.training.batching import eval_batches, make_batch
from bert_core.training.config import TrainConfig
from bert_core.training.features import TASK_SETTINGS, build_split_features, feature_settings

CPU = torch.device("cpu")


def autocast(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict_logits(model, features: list[dict], pad_id: int, batch_size: int = 64, precision: str = "fp32",
                   device: torch.device = CPU) -> list[np.ndarray]:
    """One float32 array per feature, cut to the feature's own length for per-token families."""
    was_training = model.training
    model.eval()
    lengths = [len(f["input_ids"]) for f in features]
    out: list[np.ndarray | None] = [None] * len(features)
    for indices in eval_batches(lengths, batch_size):
        batch = make_batch(features, indices, pad_id, MODEL_INPUTS)
        with autocast(precision, device):
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
        logits = logits.float().cpu().numpy()
        for row, i in enumerate(indices):
            out[i] = logits[row, : lengths[i]] if logits.ndim == 3 else logits[row]
    model.train(was_training)
    return out


def evaluate_features(model, family: Family, features: list[dict], rows: list[dict], label_names, settings: dict,
                      metric_names: list[str], pad_id: int, batch_size: int = 64, precision: str = "fp32",
                      device: torch.device = CPU) -> tuple[dict[str, float], list[dict]]:
    """(metrics, predictions) of ``model`` on labelled ``rows`` whose features are ``features``. The metrics are the
    spec's ``metric_names`` and, for families that calibrate, ``ece``, ``ece_uncalibrated``, ``brier`` and
    ``brier_uncalibrated`` with the temperature in ``settings`` (``Predictions.measure_calibration``)."""
    logits = predict_logits(model, features, pad_id, batch_size, precision, device)
    predictions = family.predictions.postprocess(logits, features, rows, label_names, settings)
    metrics = family.predictions.compute_metrics(predictions, rows, metric_names, label_names, settings)
    calibration, _ = family.predictions.measure_calibration(logits, features, rows, label_names, settings)
    return metrics | calibration, predictions


def evaluate_and_tune(model, family: Family, features: list[dict], rows: list[dict], label_names, settings: dict,
                      metric_names: list[str], pad_id: int, batch_size: int = 64, precision: str = "fp32",
                      device: torch.device = CPU) -> tuple[dict[str, float], list[dict], dict]:
    """``evaluate_features`` on the split a run selects on, the settings the family learns from it applied first:
    (metrics, predictions, learnt settings). In order: the temperature that calibrates the scores
    (``Predictions.calibrate``; its report is learnt too, as ``calibration_report``), then, on calibrated scores,
    ``Predictions.tune`` (multi-label thresholds, extractive QA's no-answer threshold). Only ``fit`` tunes: scoring a
    saved model never does."""
    logits = predict_logits(model, features, pad_id, batch_size, precision, device)
    learnt, calibration, report = family.predictions.calibrate(logits, features, rows, label_names, settings)
    settings = {**settings, **learnt}
    predictions = family.predictions.postprocess(logits, features, rows, label_names, settings)
    tuned = family.predictions.tune(predictions, rows, settings)
    if tuned:
        settings = {**settings, **tuned}
        predictions = family.predictions.postprocess(logits, features, rows, label_names, settings)
    metrics = family.predictions.compute_metrics(predictions, rows, metric_names, label_names, settings)
    learnt = {**learnt, **tuned, **({"calibration_report": report} if report else {})}
    return metrics | calibration, predictions, learnt


def evaluate_model_dir(model_dir: str | Path, spec: TaskSpec, rows: list[dict], fingerprint: str, split: str = "eval",
                       batch_size: int = 64, precision: str = "fp32", cache_dir=None) -> tuple[dict, list[dict]]:
    """(metrics, predictions) of a saved fine-tuned model on labelled rows of ``spec``, predicted in ``precision``
    (auto, fp32, bf16 or int8: ``bert_core.serving_precision``)."""
    model, tokenizer, meta = load_finetuned(model_dir)
    precision = serving_precision.resolve(precision)
    model = serving_precision.prepare(model, precision)
    family = get_family(spec.family)
    settings = {k: meta[k] for k in TASK_SETTINGS if k in meta}
    settings = settings or feature_settings(spec, TrainConfig())
    features, _ = build_split_features(family, tokenizer, rows, meta["label_names"], settings, fingerprint, split, cache_dir)
    return evaluate_features(model, family, features, rows, meta["label_names"], settings, list(spec.metrics),
                             tokenizer.pad_id, batch_size, precision)
