"""Temperature scaling and the calibration measures (bert_core/calibration.py), and how the classification and
multi-label families use them: fitted on the eval split by ``fit``, saved with the model, applied by every
prediction, never changing a predicted label."""

from __future__ import annotations

import numpy as np
import pytest
from pytest import approx
from scipy.special import expit, softmax
from sklearn.metrics import brier_score_loss

from bert_core.calibration import (
    CALIBRATION_METRICS,
    MIN_ROWS,
    brier_score,
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)
from bert_core.checkpoint import load_finetuned
from bert_core.families import get_family
from bert_core.predict import Predictor
from bert_core.spec import TaskSpec
from bert_core.training import TrainConfig, evaluate_and_tune, evaluate_model_dir, feature_settings, fit
from bert_core.training.inference import predict_logits
from tests.tiny_models import write_tiny_checkpoint
from tests.toy_task import SPEC, toy_rows

CLS, ML = get_family("single_classification"), get_family("multi_label_classification")


def drawn(n: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(logits (n, classes), targets (n,)) with each target drawn from the softmax of its logits: calibrated."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, classes))
    targets = np.array([rng.choice(classes, p=p) for p in softmax(logits, axis=1)])
    return logits, targets


# ---------------------------------------------------------------- the temperature


def test_the_temperature_undoes_scaled_logits():
    logits, targets = drawn(4000, 3)
    assert fit_temperature(logits * 3.0, targets, "softmax") == approx(3.0, rel=0.1)  # over-confident: T > 1
    assert fit_temperature(logits / 2.0, targets, "softmax") == approx(0.5, rel=0.1)  # under-confident: T < 1


def test_the_sigmoid_temperature_undoes_scaled_logits():
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=2.0, size=(2000, 4))
    targets = (rng.random(logits.shape) < expit(logits)).astype(float)
    assert fit_temperature(logits * 2.5, targets, "sigmoid") == approx(2.5, rel=0.1)


def test_no_temperature_from_a_tiny_or_one_class_split():
    logits, targets = drawn(200, 3)
    assert fit_temperature(logits[: MIN_ROWS - 1] * 3, targets[: MIN_ROWS - 1], "softmax") == 1.0
    assert fit_temperature(logits * 3, np.zeros(200, dtype=int), "softmax") == 1.0
    assert fit_temperature(logits * 3, np.ones((200, 3)), "sigmoid") == 1.0


def test_a_split_the_model_gets_all_right_gives_a_bounded_temperature():
    logits = np.array([[4.0, -4.0], [-4.0, 4.0]] * 20)
    t = fit_temperature(logits, np.array([0, 1] * 20), "softmax")
    assert 0.05 <= t < 1.0  # more confident is better here, but within bounds


# ---------------------------------------------------------------- the measures, by hand


def test_ece_brier_and_bins_of_a_worked_example():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])  # confidences 0.9, 0.8, 0.7, 0.55
    targets = np.array([0, 1, 1, 1])  # right, wrong, right, right
    # 15 bins of width 1/15: 0.55 in bin 8 (0.533, 0.6], 0.7 in bin 10 (0.667, 0.733], 0.8 in bin 11 (0.733, 0.8],
    # 0.9 in bin 13 (0.867, 0.933]; each holds one row: ECE = mean |correct - confidence|
    ece = (abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.7) + abs(1 - 0.55)) / 4
    assert expected_calibration_error(probs, targets, "softmax") == approx(ece)
    bins = reliability_bins(probs, targets, "softmax")
    assert [b["count"] for b in bins] == [0] * 8 + [1, 0, 1, 1, 0, 1, 0]
    assert bins[11] == approx({"low": 11 / 15, "high": 12 / 15, "count": 1, "confidence": 0.8, "accuracy": 0.0})
    assert bins[0]["confidence"] is None and bins[0]["accuracy"] is None
    # Brier: each row's sum over both classes of (p - y)^2
    brier = (2 * 0.1**2 + 2 * 0.8**2 + 2 * 0.3**2 + 2 * 0.45**2) / 4
    assert brier_score(probs, targets, "softmax") == approx(brier)
    assert expected_calibration_error(np.eye(2)[targets], targets) == 0.0 and brier_score(np.eye(2)[targets], targets) == 0.0


def test_the_sigmoid_measures_take_every_cell():
    probs = np.array([[0.9, 0.2], [0.6, 0.1]])
    targets = np.array([[1.0, 0.0], [0.0, 0.0]])
    # cells 0.9 (on), 0.2, 0.6, 0.1 (off): bins (0.867, 0.933], (0.133, 0.2], (0.533, 0.6], (0.067, 0.133]
    ece = (abs(1 - 0.9) + abs(0 - 0.2) + abs(0 - 0.6) + abs(0 - 0.1)) / 4
    assert expected_calibration_error(probs, targets, "sigmoid") == approx(ece)
    assert brier_score(probs, targets, "sigmoid") == approx(((0.1**2) + 0.2**2 + 0.6**2 + 0.1**2) / 4)
    assert brier_score(probs, targets, "sigmoid") == approx(brier_score_loss(targets.ravel(), probs.ravel()))
    assert sum(b["count"] for b in reliability_bins(probs, targets, "sigmoid")) == 4


def test_temperature_scaling_lowers_the_ece_of_over_confident_logits():
    logits, targets = drawn(3000, 4, seed=2)
    report = calibration_report(logits * 3, targets, "softmax", fit_temperature(logits * 3, targets, "softmax"))
    assert set(CALIBRATION_METRICS) <= set(report)
    assert report["ece"] < report["ece_uncalibrated"] / 3 and report["brier"] < report["brier_uncalibrated"]
    assert sum(b["count"] for b in report["bins"]["calibrated"]) == 3000


# ---------------------------------------------------------------- the families' postprocess


def features_of(logits: np.ndarray) -> tuple[list[np.ndarray], list[dict], list[dict]]:
    return list(logits), [{"example_index": i} for i in range(len(logits))], [{}] * len(logits)


@pytest.mark.parametrize("classes", [2, 3, 7])
def test_the_temperature_never_changes_the_predicted_label(classes):
    logits, _ = drawn(500, classes, seed=classes)
    names = [f"c{k}" for k in range(classes)]
    plain = CLS.predictions.postprocess(*features_of(logits), names, {})
    for temperature in (0.05, 0.3, 1.7, 20.0):
        scaled = CLS.predictions.postprocess(*features_of(logits), names, {"temperature": temperature})
        assert [p["label"] for p in scaled] == [p["label"] for p in plain]


def test_the_temperature_keeps_each_labels_side_of_one_half():
    logits = np.random.default_rng(3).normal(scale=3.0, size=(500, 4))
    names = ["a", "b", "c", "d"]
    plain = ML.predictions.postprocess(*features_of(logits), names, {})
    scaled = ML.predictions.postprocess(*features_of(logits), names, {"temperature": 4.0})
    assert [p["labels"] for p in scaled] == [p["labels"] for p in plain]


def test_postprocess_divides_the_logits_by_the_saved_temperature():
    logits = np.array([[2.0, 0.0, -1.0]])
    prediction = CLS.predictions.postprocess(*features_of(logits), ["a", "b", "c"], {"temperature": 2.0})[0]
    assert list(prediction["probabilities"].values()) == approx(list(softmax(logits[0] / 2.0)))
    assert prediction["score"] == approx(softmax(logits[0] / 2.0)[0]) and prediction["score"] < softmax(logits[0])[0]
    labels = ML.predictions.postprocess(*features_of(logits), ["a", "b", "c"], {"temperature": 2.0})[0]
    assert list(labels["probabilities"].values()) == approx(list(expit(logits[0] / 2.0)))


def test_calibrate_fits_on_the_rows_and_measure_uses_the_saved_temperature():
    logits, targets = drawn(600, 3, seed=4)
    names = ["x", "y", "z"]
    rows = [{"label": names[t]} for t in targets]
    args = (list(logits * 3), [{"example_index": i} for i in range(600)], rows, names)
    learnt, metrics, report = CLS.predictions.calibrate(*args, {})
    assert learnt["temperature"] == approx(3.0, rel=0.15) and set(metrics) == set(CALIBRATION_METRICS)
    assert metrics["ece"] < metrics["ece_uncalibrated"] and report["temperature"] == learnt["temperature"]
    again, _ = CLS.predictions.measure_calibration(*args, learnt)
    assert again == approx(metrics)
    off, metrics_off, _ = CLS.predictions.calibrate(*args, {"calibration": "none"})
    assert off == {} and metrics_off["ece"] == metrics_off["ece_uncalibrated"]


# ---------------------------------------------------------------- the spec field


def test_calibration_is_a_classification_and_multi_label_field():
    base = {"name": "t", "local": {"format": "tsv", "files": {"train": "a.tsv", "eval": "b.tsv"}}}
    spec = TaskSpec(**base, family="single_classification", metrics=["accuracy"], primary_metric="accuracy")
    assert spec.calibration == "temperature" and feature_settings(spec, TrainConfig()) == {"max_seq_length": 128}
    off = TaskSpec(**base, family="multi_label_classification", metrics=["f1_micro"], primary_metric="f1_micro",
                   calibration="none")
    assert feature_settings(off, TrainConfig())["calibration"] == "none"
    regression = {**base, "family": "pair_regression", "metrics": ["pearson"], "primary_metric": "pearson"}
    assert TaskSpec(**regression).calibration == "temperature"  # the default is no mistake
    with pytest.raises(ValueError, match="calibration is for"):
        TaskSpec(**regression, calibration="none")


# ---------------------------------------------------------------- through fit, a saved model and Predictor


def test_fit_saves_the_temperature_and_every_later_score_uses_it(tmp_path):
    tiny = write_tiny_checkpoint(tmp_path / "tiny")
    cfg = TrainConfig(learning_rate=3e-3, batch_size=16, epochs=4, seed=7, precision="fp32", progress_bar=False)
    dev = toy_rows(64, 2)
    result = fit(SPEC, cfg, tmp_path / "run", toy_rows(96, 1), dev, ["neg", "pos"], pretrained=tiny,
                 cache_dir=tmp_path / "cache")
    _, _, meta = load_finetuned(result.model_dir)
    assert meta["temperature"] > 0 and meta["temperature"] != 1.0
    report = meta["calibration_report"]
    assert report["temperature"] == meta["temperature"] and len(report["bins"]["calibrated"]) == 15
    assert set(CALIBRATION_METRICS) <= set(result.eval_metrics)
    assert {k: report[k] for k in CALIBRATION_METRICS} == approx({k: result.eval_metrics[k] for k in CALIBRATION_METRICS})
    metrics, predictions = evaluate_model_dir(result.model_dir, SPEC, dev, "toy", cache_dir=tmp_path / "cache")
    assert metrics == approx(result.eval_metrics), "the saved temperature reproduces the scores of training"
    predicted = Predictor(result.model_dir).predict([{"text_a": r["text_a"]} for r in dev])
    assert [p["score"] for p in predicted] == approx([p["score"] for p in predictions])
    # Predictor's scores are the temperature's: without it they differ, with the same labels
    model, tokenizer, _ = load_finetuned(result.model_dir)
    settings = feature_settings(SPEC, cfg)
    features = CLS.features.build(dev, tokenizer, SPEC.labels, settings)
    plain = CLS.predictions.postprocess(predict_logits(model, features, tokenizer.pad_id), features, dev, SPEC.labels,
                                        settings)
    assert [p["label"] for p in plain] == [p["label"] for p in predicted]
    assert [p["score"] for p in plain] != approx([p["score"] for p in predicted])
    _, _, learnt = evaluate_and_tune(model, CLS, features, dev, SPEC.labels, settings, list(SPEC.metrics),
                                     tokenizer.pad_id)
    assert learnt["temperature"] == approx(meta["temperature"])

