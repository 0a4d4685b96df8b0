"""A rare class (bert_core/families/imbalance.py): class weights in the loss (balanced as scikit-learn's, a mapping,
multi-label's pos_weight), the binary decision threshold (applied, tuned on dev for the primary metric, saved with
the model and applied by Predictor and the served pyfunc), the spec's and the training config's values and every
bad one refused before training, and a tiny fine-tune using both."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from mlflow.pyfunc import PythonModelContext
from pydantic import ValidationError
from sklearn.utils.class_weight import compute_class_weight

from bert_core import BertConfig, BertEncoder, BertTokenizer, load_finetuned, save_finetuned
from bert_core.families import get_family
from bert_core.families.base import MODEL_INPUTS
from bert_core.families.imbalance import THRESHOLD_GRID, WeightedCrossEntropy, balanced_weights, weigh_classes
from bert_core.families.multi_label import weigh_positives
from bert_core.loading import load_task_data
from bert_core.predict import Predictor
from bert_core.spec import SpecError, TaskSpec, load_spec
from bert_core.training import TrainConfig, effective_spec, evaluate_model_dir, feature_settings, fit
from bert_core.training.batching import make_batch
from bert_core.training.identity import FinetuneIdentity
from bert_core.training.recipe import setup
from bert_core.validation import DataError
from tests.tiny_models import TINY, VOCAB

approx = pytest.approx
SINGLE = get_family("single_classification")
ML = get_family("multi_label_classification")
LOCAL = {"format": "jsonl", "files": {"train": "train.jsonl", "eval": "dev.jsonl"}}


def spec(**fields) -> TaskSpec:
    base = {"name": "toy", "family": "single_classification", "labels": ["neg", "pos"], "local": LOCAL,
            "metrics": ["f1", "accuracy"], "primary_metric": "f1", "max_seq_length": 32}
    return TaskSpec(**{**base, **fields})


# ---------------------------------------------------------------- class weights in the loss
def test_balanced_weights_are_scikit_learns():
    labels = np.array([0] * 90 + [1] * 7 + [2] * 3)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    assert balanced_weights(np.bincount(labels)).tolist() == approx(expected.tolist())
    assert balanced_weights(np.array([6, 0, 2])).tolist() == approx([8 / 18, 1.0, 8 / 6]), "never seen -> 1"


def test_weighted_loss_is_cross_entropy_with_weights():
    model = SINGLE.build_model(BertEncoder(BertConfig(**TINY)), ["neg", "pos"])
    features = [{"labels": 0}] * 8 + [{"labels": 1}] * 2
    assert weigh_classes(model, features, {}, ["neg", "pos"]) == {}, "off unless the spec asks"
    learnt = weigh_classes(model, features, {"class_weights": "balanced"}, ["neg", "pos"])
    assert learnt == {"class_weights": approx({"neg": 10 / 16, "pos": 10 / 4})}
    logits, labels = torch.randn(6, 2), torch.tensor([0, 1, 1, 0, 0, 1])
    weight = torch.tensor([10 / 16, 10 / 4])
    assert isinstance(model.loss, WeightedCrossEntropy)
    assert model.loss(logits, labels).item() == approx(F.cross_entropy(logits, labels, weight=weight).item())
    assert model.loss(logits, labels).item() != approx(F.cross_entropy(logits, labels).item())
    learnt = weigh_classes(model, features, {"class_weights": {"pos": 5.0}}, ["neg", "pos"])
    assert learnt == {"class_weights": {"neg": 1.0, "pos": 5.0}}, "a label not named weighs 1"
    assert model.loss.weight.tolist() == [1.0, 5.0]


def toy_rows(n: int, seed: int, positive_share: float = 0.5) -> list[dict]:
    """A sentiment word among filler words decides the label; ``positive_share`` of the rows are ``pos``."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if rng.random() < positive_share else "neg"
        words = rng.sample(["the", "movie", "film", "plot", "was", "very"], 4)
        words.append(rng.choice(["good", "great", "fun"] if label == "pos" else ["bad", "terrible", "boring"]))
        rng.shuffle(words)
        rows.append({"text_a": " ".join(words), "text_b": None, "label": label, "_source": f"toy:{i}"})
    return rows


def test_the_recipe_trains_with_the_weighted_loss_and_keeps_the_weights(tiny, tmp_path):
    """Fails when the recipe does not call weigh_loss, or weigh_loss does nothing."""
    train = toy_rows(40, 1, positive_share=0.2)
    cfg = TrainConfig(precision="fp32", progress_bar=False, class_weights="balanced")
    ctx = setup(spec(), cfg, tmp_path, train, toy_rows(8, 2), ["neg", "pos"], tiny, "toy", None, None, cached=False)
    counts = np.bincount([["neg", "pos"].index(r["label"]) for r in train], minlength=2)
    expected = compute_class_weight("balanced", classes=np.arange(2), y=np.repeat(np.arange(2), counts))
    assert ctx.meta["class_weights"] == approx(dict(zip(["neg", "pos"], expected.tolist(), strict=True)))
    batch = make_batch(ctx.train_features, list(range(16)), ctx.tokenizer.pad_id, (*MODEL_INPUTS, "labels"))
    ctx.model.eval()
    out = ctx.model(**batch)
    weighted = F.cross_entropy(out.logits, batch["labels"], weight=torch.tensor(expected, dtype=torch.float32))
    assert out.loss.item() == approx(weighted.item(), rel=1e-5)
    assert out.loss.item() != approx(F.cross_entropy(out.logits, batch["labels"]).item(), rel=1e-3)


def test_multi_label_class_weights_are_its_pos_weight():
    model = ML.build_model(BertEncoder(BertConfig(**TINY)), ["a", "b", "c"])
    features = [{"labels": [1.0, 0.0, 0.0]}, {"labels": [1.0, 1.0, 0.0]}, {"labels": [0.0, 0.0, 0.0]},
                {"labels": [1.0, 0.0, 0.0]}]
    assert weigh_positives(model, features, {}, ["a", "b", "c"]) == {}
    by_flag = weigh_positives(model, features, {"pos_weight": True}, ["a", "b", "c"])
    assert weigh_positives(model, features, {"class_weights": "balanced"}, ["a", "b", "c"]) == by_flag
    assert by_flag == {"class_weights": approx({"a": 1 / 3, "b": 3.0, "c": 1.0})}
    learnt = weigh_positives(model, features, {"class_weights": {"b": 4.0}, "pos_weight": True}, ["a", "b", "c"])
    assert learnt == {"class_weights": {"a": 1.0, "b": 4.0, "c": 1.0}}, "an explicit mapping wins"
    assert model.loss.pos_weight.tolist() == [1.0, 4.0, 1.0]


# ---------------------------------------------------------------- the spec's and the training config's values
@pytest.mark.parametrize(("fields", "words"), [
    ({"class_weights": {"maybe": 2}}, ["class_weights", "'maybe'", "labels"]),
    ({"class_weights": {"pos": -1}}, ["class_weights", "'pos'", "positive"]),
    ({"class_weights": {"pos": 0}}, ["class_weights", "'pos'", "positive"]),
    ({"class_weights": {"pos": math.inf}}, ["class_weights", "positive"]),
    ({"class_weights": "heavy"}, ["class_weights", "'balanced'"]),
    ({"class_weights": ["pos"]}, ["class_weights", "'balanced'"]),
    ({"class_weights": {}}, ["class_weights", "no label"]),
    ({"decision_threshold": 0}, ["decision_threshold", "between 0 and 1"]),
    ({"decision_threshold": 1}, ["decision_threshold", "between 0 and 1"]),
    ({"decision_threshold": 1.5}, ["decision_threshold", "between 0 and 1"]),
    ({"decision_threshold": -0.2}, ["decision_threshold", "between 0 and 1"]),
    ({"decision_threshold": "high"}, ["decision_threshold", "'tune'"]),
    ({"decision_threshold": True}, ["decision_threshold"]),
    ({"decision_threshold": "tune", "labels": ["a", "b", "c"], "metrics": ["accuracy"], "primary_metric": "accuracy"},
     ["decision_threshold", "3 labels"]),
    ({"decision_threshold": 0.3, "labels": ["a", "b", "c"], "metrics": ["accuracy"], "primary_metric": "accuracy"},
     ["decision_threshold", "3 labels"]),
    ({"family": "pair_regression", "labels": None, "metrics": ["pearson"], "primary_metric": "pearson",
      "class_weights": "balanced"}, ["class_weights", "not 'pair_regression'"]),
    ({"family": "multi_label_classification", "metrics": ["f1_macro"], "primary_metric": "f1_macro",
      "decision_threshold": 0.3}, ["decision_threshold", "not 'multi_label_classification'"]),
    ({"family": "multi_label_classification", "metrics": ["f1_macro"], "primary_metric": "f1_macro",
      "pos_weight": True, "class_weights": "balanced"}, ["pos_weight and class_weights"]),
    ({"family": "multi_label_classification", "metrics": ["f1_macro"], "primary_metric": "f1_macro",
      "class_weights": {"joy": 2}}, ["class_weights", "'joy'"]),
])
def test_bad_values_are_spec_errors_naming_the_field(tmp_path, fields, words):
    path = tmp_path / "spec.yaml"
    raw = {"name": "toy", "family": "single_classification", "labels": ["neg", "pos"], "local": LOCAL,
           "metrics": ["f1"], "primary_metric": "f1", **fields}
    path.write_text(json.dumps({k: v for k, v in raw.items() if v is not None}), encoding="utf-8")
    with pytest.raises(SpecError) as err:
        load_spec(path)
    for word in words:
        assert word in str(err.value), str(err.value)


def test_good_values_read_as_written():
    assert spec(class_weights={0: 1, "pos": 2.5}, labels=["0", "pos"]).class_weights == {"0": 1.0, "pos": 2.5}
    assert spec(class_weights="balanced", decision_threshold="tune").decision_threshold == "tune"
    assert spec(decision_threshold=0.25).decision_threshold == 0.25
    assert spec().decision_threshold == 0.5 and spec().class_weights is None
    three = spec(labels=["a", "b", "c"], metrics=["accuracy"], primary_metric="accuracy", decision_threshold=0.5)
    assert three.decision_threshold == 0.5, "the default is no threshold, whatever the labels"


@pytest.mark.parametrize(("value", "expected"), [
    ("balanced", "balanced"), ('{"1": 5}', {"1": 5.0}), ({"1": 5}, {"1": 5.0}), (None, None)])
def test_the_training_config_reads_class_weights_as_the_command_line_gives_them(value, expected):
    assert TrainConfig(class_weights=value).class_weights == expected


@pytest.mark.parametrize(("field", "value"), [
    ("class_weights", "heavy"), ("class_weights", '{"1": -5}'), ("class_weights", "{1: 5}"),
    ("decision_threshold", 1.5), ("decision_threshold", 0.0), ("decision_threshold", "tuned")])
def test_the_training_config_refuses_bad_values(field, value):
    with pytest.raises(ValidationError, match=field):
        TrainConfig(**{field: value})


def test_the_training_config_wins_over_the_spec_and_is_checked_as_the_spec_is():
    mrpc = load_spec("mrpc")
    chosen = effective_spec(mrpc, TrainConfig(class_weights="balanced", decision_threshold="tune"))
    assert (chosen.class_weights, chosen.decision_threshold) == ("balanced", "tune")
    assert effective_spec(mrpc, TrainConfig()) is mrpc
    settings = feature_settings(mrpc, TrainConfig(decision_threshold=0.3))
    assert settings["decision_threshold"] == 0.3 and "class_weights" not in settings
    weighted = load_spec("semeval2018_ec").model_copy(update={"pos_weight": True})
    assert effective_spec(weighted, TrainConfig(class_weights={"joy": 2})).pos_weight is False, "replaces pos_weight"
    with pytest.raises(SpecError, match="decision_threshold"):
        effective_spec(load_spec("mnli"), TrainConfig(decision_threshold="tune"))
    with pytest.raises(SpecError, match="'maybe'"):
        effective_spec(mrpc, TrainConfig(class_weights={"maybe": 2}))


def test_the_identity_of_a_fine_tune_holds_the_class_weights_and_threshold():
    mrpc = load_spec("mrpc")
    plain = FinetuneIdentity.of(mrpc, TrainConfig())
    assert FinetuneIdentity.of(mrpc, TrainConfig(class_weights="balanced")).key() != plain.key()
    assert FinetuneIdentity.of(mrpc, TrainConfig(decision_threshold="tune")).key() != plain.key()


@pytest.mark.parametrize(("fields", "words"), [
    ({"class_weights": {"maybe": 2}}, ["class_weights", "'maybe'", "labels seen"]),
    ({"decision_threshold": "tune", "metrics": ["accuracy"], "primary_metric": "accuracy"},
     ["decision_threshold", "3 labels"]),
])
def test_with_labels_read_from_the_data_the_data_check_refuses_them(tmp_path, fields, words):
    for split, n in (("train", 12), ("dev", 6)):
        rows = [{"text_a": f"text {i}", "label": ["neg", "pos", "mixed"][i % 3]} for i in range(n)]
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_task_data(spec(**{"labels": None, "metrics": ["f1_macro"], "primary_metric": "f1_macro", **fields}),
                       tmp_path)
    for word in words:
        assert word in str(err.value), str(err.value)


# ---------------------------------------------------------------- the decision threshold
def logits_of(p1s) -> list[np.ndarray]:
    """Two-label logits whose softmax gives the positive label probability p1."""
    return [np.array([0.0, math.log(p / (1 - p))]) for p in p1s]


# Positives at p1 0.325 .. 0.4 and one negative at 0.6: cutting at 0.5 answers only that negative (F1 0); any cut-off
# from 0.21 to 0.32 finds every positive and that negative (F1 6/7); 0.32 is the one of those nearest 0.5.
P1 = [0.325, 0.35, 0.4, 0.05, 0.1, 0.2, 0.6]
GOLD = ["pos", "pos", "pos", "neg", "neg", "neg", "neg"]


def test_tune_picks_the_cut_off_with_the_best_primary_metric_where_0_5_is_not():
    rows = [{"text_a": "x", "text_b": None, "label": g} for g in GOLD]
    features = [{"example_index": i} for i in range(len(rows))]
    predictions_of = SINGLE.predictions
    settings = feature_settings(spec(decision_threshold="tune"), TrainConfig())
    assert settings["decision_threshold"] == "tune" and settings["decision_threshold_tuned_for"] == "f1"
    at_half = predictions_of.postprocess(logits_of(P1), features, rows, ["neg", "pos"], settings)
    assert [p["label"] for p in at_half] == ["neg"] * 6 + ["pos"], "'tune' before tuning: the most probable label"
    learnt = predictions_of.tune(at_half, rows, settings)
    assert learnt == {"decision_threshold": 0.32}
    tuned = predictions_of.postprocess(logits_of(P1), features, rows, ["neg", "pos"], {**settings, **learnt})
    assert [p["label"] for p in tuned] == ["pos", "pos", "pos", "neg", "neg", "neg", "pos"]
    assert tuned[0]["score"] == approx(0.325) and tuned[-1]["score"] == approx(0.6), "score: the answered label's p"
    scores = predictions_of.compute_metrics(tuned, rows, ["f1"], ["neg", "pos"])
    assert scores["f1"] == approx(6 / 7) and predictions_of.compute_metrics(at_half, rows, ["f1"])["f1"] == 0
    for metric in ("accuracy", "matthews_corr"):  # the same cut-offs are best for these on this split
        assert predictions_of.tune(at_half, rows, {**settings, "decision_threshold_tuned_for": metric}) == learnt
    assert predictions_of.tune(at_half, rows, {}) == {}, "nothing to tune unless asked"


def test_equally_good_cut_offs_go_to_the_one_nearest_0_5():
    rows = [{"text_a": "x", "text_b": None, "label": g} for g in ("pos", "neg")]
    predictions = SINGLE.predictions.postprocess(logits_of([0.9, 0.1]), [{"example_index": 0}, {"example_index": 1}],
                                                 rows, ["neg", "pos"], {})
    settings = {"decision_threshold": "tune", "decision_threshold_tuned_for": "f1"}
    assert SINGLE.predictions.tune(predictions, rows, settings) == {"decision_threshold": 0.5}
    assert THRESHOLD_GRID[0] == 0.5 and sorted(THRESHOLD_GRID) == approx([k / 100 for k in range(1, 100)])


def test_a_fixed_threshold_is_applied_as_given_and_only_to_two_labels():
    rows = [{"text_a": "x", "text_b": None, "label": "neg"}] * 2
    features = [{"example_index": 0}, {"example_index": 1}]
    settings = feature_settings(spec(decision_threshold=0.7), TrainConfig())
    assert settings["decision_threshold"] == 0.7 and "decision_threshold_tuned_for" not in settings
    answered = SINGLE.predictions.postprocess(logits_of([0.69, 0.7]), features, rows, ["neg", "pos"], settings)
    assert [p["label"] for p in answered] == ["neg", "pos"], "positive when p1 >= the threshold"
    assert SINGLE.predictions.tune(answered, rows, settings) == {}, "a fixed threshold is not tuned"
    three = [np.array([0.0, 1.0, 0.5])]
    assert SINGLE.predictions.postprocess(three, features[:1], rows[:1], ["a", "b", "c"], {"decision_threshold": 0.9}
                                          )[0]["label"] == "b", "several labels: the most probable"


def p1_model(tmp_path: Path, meta_extra: dict) -> Path:
    """A tiny classifier whose head answers p1 = 0.8 for any text: zero weights, biases (0, log 4)."""
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    model = SINGLE.build_model(BertEncoder(BertConfig(**TINY)), ["neg", "pos"]).eval()
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, math.log(4.0)]))
    meta = {"family": SINGLE.name, "label_names": ["neg", "pos"], "max_seq_length": 32, **meta_extra}
    folder = tmp_path / f"model-{len(list(tmp_path.glob('model-*')))}"
    return save_finetuned(model, BertTokenizer.from_vocab(tmp_path / "vocab.txt"), folder, meta)


def test_predictor_and_the_served_model_apply_the_saved_threshold(tmp_path):
    """Fails when the saved threshold is not read back (TASK_SETTINGS) or not applied (postprocess)."""
    from tracking.packaging import BertPyfunc

    rows = [{"text_a": "the movie was good"}, {"text_a": "a bad film"}]
    plain = Predictor(p1_model(tmp_path, {})).predict(rows)
    assert [p["label"] for p in plain] == ["pos", "pos"] and plain[0]["probabilities"]["pos"] == approx(0.8)
    high = p1_model(tmp_path, {"decision_threshold": 0.9})
    predicted = Predictor(high).predict(rows)
    assert [p["label"] for p in predicted] == ["neg", "neg"] and predicted[0]["score"] == approx(0.2)
    assert [p["label"] for p in Predictor(p1_model(tmp_path, {"decision_threshold": 0.8})).predict(rows)] == ["pos"] * 2
    served = BertPyfunc()
    served.load_context(PythonModelContext(artifacts={"model_dir": str(high)}, model_config={}))
    frame = served.predict(None, pd.DataFrame({"text": [r["text_a"] for r in rows]}))
    assert frame["label_value"].tolist() == ["neg", "neg"] and frame["score"].tolist() == approx([0.2, 0.2])


def test_card_lines_say_the_weights_and_the_threshold_and_why():
    lines = SINGLE.predictions.card_lines(["neg", "pos"], {"max_seq_length": 32}, None)
    assert lines == [] and SINGLE.predictions.card_lines(["neg", "pos"], {"decision_threshold": 0.5}, None) == []
    tuned = "\n".join(SINGLE.predictions.card_lines(["neg", "pos"], {
        "class_weights": {"neg": 0.625, "pos": 2.5}, "decision_threshold": 0.32, "decision_threshold_tuned_for": "f1",
        "display_names": {"pos": "spam"}}, None))
    assert "## Class weights and decision threshold" in tuned and "`neg` 0.625, `spam` 2.5" in tuned
    assert "`spam` when its probability is at least 0.32" in tuned and "best `f1`" in tuned
    fixed = "\n".join(SINGLE.predictions.card_lines(["neg", "pos"], {"decision_threshold": 0.7}, None))
    assert "## Decision threshold" in fixed and "at least 0.7" in fixed and "not tuned" in fixed
    weights = "\n".join(ML.predictions.card_lines(["a", "b"], {"class_weights": {"a": 3.0, "b": 1.0}}, None))
    assert "## Class weights" in weights and "`pos_weight`" in weights and "`a` 3" in weights


# ---------------------------------------------------------------- a tiny fine-tune with both
def test_fit_weighs_tunes_saves_and_every_reader_applies_the_same_threshold(tiny, tmp_path):
    task = spec(class_weights="balanced", decision_threshold="tune")
    cfg = TrainConfig(learning_rate=3e-3, batch_size=16, epochs=6, seed=7, precision="fp32", progress_bar=False)
    train, dev = toy_rows(120, 1, positive_share=0.15), toy_rows(60, 2, positive_share=0.15)
    result = fit(task, cfg, tmp_path / "run", train, dev, ["neg", "pos"], pretrained=tiny,
                 cache_dir=tmp_path / "cache")
    _, _, meta = load_finetuned(result.model_dir)
    n_pos = sum(r["label"] == "pos" for r in train)
    assert meta["class_weights"] == approx({"neg": 120 / (2 * (120 - n_pos)), "pos": 120 / (2 * n_pos)})
    assert meta["decision_threshold"] in THRESHOLD_GRID.tolist() and meta["decision_threshold_tuned_for"] == "f1"
    metrics, predictions = evaluate_model_dir(result.model_dir, task, dev, "toy", cache_dir=tmp_path / "cache")
    assert metrics == approx(result.eval_metrics), "the saved threshold reproduces the score training selected on"
    predicted = Predictor(result.model_dir).predict([{"text_a": r["text_a"]} for r in dev])
    assert [p["label"] for p in predicted] == [p["label"] for p in predictions]
    p1 = np.array([p["probabilities"]["pos"] for p in predicted])
    assert [p["label"] for p in predicted] == ["pos" if x >= meta["decision_threshold"] else "neg" for x in p1]
