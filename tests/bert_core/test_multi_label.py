"""Multi-label classification (bert_core/families/multi_label.py): the three ways of spelling a row's labels, the
spec's rules, the head and its loss, the metrics against worked examples by hand (and their bootstrap form), the
thresholds tuned on dev, saved with the model and applied by Predictor and the served pyfunc, a tiny fine-tune, and
the built-in SemEval-2018 E-c spec on real weights and real tweets."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.pyfunc import PythonModelContext

from bert_core import BertConfig, BertEncoder, BertTokenizer, load_finetuned, save_finetuned
from bert_core.families import Predictions, collate, get_family
from bert_core.families.multi_label import MIN_POSITIVES, BinaryCrossEntropy, weigh_positives
from bert_core.loading import load_task_data
from bert_core.predict import Predictor
from bert_core.spec import SpecError, TaskSpec, load_spec
from bert_core.training import TrainConfig, evaluate_and_tune, evaluate_model_dir, feature_settings, fit
from tests.tiny_models import TINY, VOCAB, write_tiny_checkpoint

approx = pytest.approx
ML = get_family("multi_label_classification")
PAIR_ML = get_family("pair_multi_label_classification")


# ---------------------------------------------------------------- three ways of spelling labels

ROWS = [("a lovely day", ["joy"]), ("what a lovely mess", ["anger", "joy"]), ("so so", []), ("ugh", ["anger"])]


def _spec(tmp_path: Path, fmt: str, columns: dict, **fields) -> Path:
    spec = {"name": "emotions", "family": "multi_label_classification", "metrics": ["f1_macro"],
            "primary_metric": "f1_macro", "columns": columns,
            "local": {"format": fmt, "files": {"train": f"train.{fmt}", "eval": f"dev.{fmt}"}}, **fields}
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps(spec), encoding="utf-8")  # JSON is YAML
    return path


def _write(tmp_path: Path, fmt: str, lines: list[str]) -> None:
    for split in ("train", "dev"):
        (tmp_path / f"{split}.{fmt}").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _loaded(spec: Path, root: Path) -> tuple[list[tuple[str, list[str]]], list[str]]:
    data = load_task_data(spec, root)
    train, dev = ([(r["text_a"], r["labels"]) for r in data.splits[s].to_list()] for s in ("train", "eval"))
    assert train == dev
    return train, data.label_names


def test_a_separator_column_json_lists_and_indicator_columns_read_the_same_rows(tmp_path):
    for form in ("sep", "list", "ind"):
        (tmp_path / form).mkdir()
    _write(tmp_path / "sep", "tsv", ["comment\temotions", "a lovely day\tjoy", "what a lovely mess\tjoy; anger",
                                     "so so\t", "ugh\tanger"])
    separated = _loaded(_spec(tmp_path / "sep", "tsv", {"text_a": "comment", "labels": "emotions"},
                              label_separator=";"), tmp_path / "sep")
    _write(tmp_path / "list", "jsonl", [json.dumps({"text": t, "emotions": labels[::-1]}) for t, labels in ROWS])
    listed = _loaded(_spec(tmp_path / "list", "jsonl", {"text_a": "text", "labels": "emotions"}), tmp_path / "list")
    _write(tmp_path / "ind", "csv", ["text,joy,anger"] + [f"{t},{int('joy' in ls)},{int('anger' in ls)}" for t, ls in ROWS])
    indicated = _loaded(_spec(tmp_path / "ind", "csv", {"text_a": "text"}, label_columns=["joy", "anger"]),
                        tmp_path / "ind")
    assert separated[0] == listed[0] == indicated[0] == ROWS, "sorted names; a row with none is valid"
    assert separated[1] == listed[1] == ["anger", "joy"], "inferred from train: sorted"
    assert indicated[1] == ["joy", "anger"], "with label_columns, labels default to them, in their order"


def test_a_json_list_in_a_csv_cell_and_a_label_map(tmp_path):
    _write(tmp_path, "csv", ["text,tags", 'a lovely day,"[""j""]"', 'what a mess,"[""a"", ""j""]"', "so so,[]"])
    spec = _spec(tmp_path, "csv", {"text_a": "text", "labels": "tags"})
    raw = json.loads(spec.read_text())
    raw["local"]["label_map"] = {"j": "joy", "a": "anger"}
    spec.write_text(json.dumps(raw))
    rows, names = _loaded(spec, tmp_path)
    assert rows == [("a lovely day", ["joy"]), ("what a mess", ["anger", "joy"]), ("so so", [])]
    assert names == ["anger", "joy"]


def test_text_pairs(tmp_path):
    lines = [json.dumps({"a": "the plot", "b": "was fun", "l": ["fun"]}), json.dumps({"a": "a", "b": "b", "l": []})]
    _write(tmp_path, "jsonl", lines)
    raw = json.loads(_spec(tmp_path, "jsonl", {"text_a": "a", "text_b": "b", "labels": "l"}, labels=["fun", "plot"])
                     .read_text())
    (tmp_path / "spec.yaml").write_text(json.dumps({**raw, "family": "pair_multi_label_classification"}))
    rows = load_task_data(tmp_path / "spec.yaml", tmp_path).splits["train"].to_list()
    assert [(r["text_a"], r["text_b"], r["labels"]) for r in rows] == [("the plot", "was fun", ["fun"]), ("a", "b", [])]
    assert PAIR_ML.rows.request == {"text_a": ("text_a", "text"), "text_b": ("text_b", "text_pair")}
    assert PAIR_ML.rows.validate_row({"text_a": "x", "text_b": None, "labels": []}, None, "") == \
        "field 'text_b': got None, expected non-empty text"


@pytest.mark.parametrize("fields, message", [
    ({"label_separator": ";", "label_columns": ["a", "b"]}, "label_separator and label_columns"),
    ({"label_columns": ["a", "b"], "columns": {"text_a": "t", "labels": "x"}}, "columns.labels and label_columns"),
    ({"label_columns": ["a", "a"]}, "at least two distinct columns (repeated: ['a'])"),
    ({"label_columns": ["a", "b"], "labels": ["a", "c"]}, "must name the same labels"),
    ({"labels": ["only"]}, "needs at least two labels"),
    ({"metrics": ["hamming_loss"], "primary_metric": "hamming_loss"}, "lower-is-better"),
    ({"thresholds": "sometimes"}, "field 'thresholds'"),
    ({"label_separator": "/"}, "field 'label_separator'"),
    ({"family": "single_classification", "label_separator": ";", "metrics": ["accuracy"], "primary_metric": "accuracy"},
     "label_separator is for multi_label_classification and pair_multi_label_classification"),
])
def test_spec_rules(tmp_path, fields, message):
    spec = {"name": "t", "family": "multi_label_classification", "metrics": ["f1_macro"], "primary_metric": "f1_macro",
            "local": {"format": "csv", "files": {"train": "a.csv", "eval": "b.csv"}}, **fields}
    (tmp_path / "s.yaml").write_text(json.dumps(spec))
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "s.yaml")
    assert message in str(info.value)


def test_check_reports_labels_per_row_frequencies_pairs_and_warns_about_rare_labels():
    rows = [{"labels": ["anger", "disgust"]}, {"labels": ["anger", "disgust", "joy"]}, {"labels": []},
            {"labels": ["joy"]}]
    # 6 labels on 4 rows; anger, disgust, joy 2 of 4 each; pairs anger+disgust twice, anger+joy and disgust+joy once
    assert ML.rows.describe_labels(rows) == ("1.50 labels/row, none 25%; anger 50%, disgust 50%, joy 50%; "
                                            "top pairs anger+disgust 50%, anger+joy 25%, disgust+joy 25%")
    train = [{"labels": ["joy"]}] * MIN_POSITIVES + [{"labels": ["anger"]}] * 3
    warnings = ML.rows.check_data(None, {"train": train, "eval": [{"labels": ["joy"]}]}, ["anger", "joy", "love"],
                                  {"train": "t.csv", "eval": "d.csv"})
    assert warnings == [
        "t.csv: label 'anger' is on in 3 row(s) of split 'train' (fewer than 10): too few to learn it well",
        "t.csv: label 'love' is on in 0 row(s) of split 'train' (fewer than 10): the model cannot learn it",
        *(f"d.csv: label {n!r} is on in {k} row(s) of split 'eval' (fewer than 10): too few to evaluate it, or to "
          "tune a threshold of its own" for n, k in (("anger", 0), ("joy", 1), ("love", 0)))]


# ---------------------------------------------------------------- head, loss, collate


def test_collate_stacks_multi_hot_targets_and_pads_the_tokens():
    batch = collate([{"input_ids": [2, 7, 3], "labels": [1.0, 0.0, 1.0]}, {"input_ids": [2, 3], "labels": [0.0, 0.0, 0.0]}])
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == [[1, 0, 1], [0, 0, 0]]
    assert batch["input_ids"].shape == (2, 8)


def test_the_head_has_one_logit_per_label_and_trains_with_binary_cross_entropy(tmp_path):
    torch.manual_seed(0)
    model = ML.build_model(BertEncoder(BertConfig(**TINY)), ["a", "b", "c"])
    ids = torch.randint(5, len(VOCAB), (4, 9))
    labels = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.float32)
    out = model(input_ids=ids, labels=labels)
    assert out.logits.shape == (4, 3)
    assert out.loss.item() == approx(torch.nn.BCEWithLogitsLoss()(out.logits, labels).item(), rel=1e-6)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = out.loss.item()
    for _ in range(15):
        opt.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
    model.eval()
    assert model(input_ids=ids, labels=labels).loss.item() < 0.7 * first
    with pytest.raises(ValueError, match="at least two label names"):
        ML.build_model(BertEncoder(BertConfig(**TINY)), ["a"])
    save_finetuned(model, BertTokenizer.from_vocab(_vocab(tmp_path)), tmp_path / "m", {"family": ML.name,
                                                                                       "label_names": ["a", "b", "c"]})
    loaded, _, _ = load_finetuned(tmp_path / "m")
    assert torch.equal(loaded.eval()(input_ids=ids).logits, model(input_ids=ids).logits), "the loss is not in the head"


def test_pos_weight_is_negatives_over_positives_of_the_training_rows():
    model = ML.build_model(BertEncoder(BertConfig(**TINY)), ["a", "b", "c"])
    features = [{"labels": [1.0, 0.0, 0.0]}, {"labels": [1.0, 1.0, 0.0]}, {"labels": [0.0, 0.0, 0.0]},
                {"labels": [1.0, 0.0, 0.0]}]
    weigh_positives(model, features, {})
    assert model.loss.pos_weight is None, "off unless the spec asks"
    weigh_positives(model, features, {"pos_weight": True})
    assert model.loss.pos_weight.tolist() == approx([1 / 3, 3.0, 1.0]), "a: 1 of 3, b: 3 of 1, c: never on -> 1"
    logits, labels = torch.zeros(2, 3), torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    # log(2) per cell; positive cells weigh 1/3, 3 and 1, negative cells 1: mean over 6 cells
    assert model.loss(logits, labels).item() == approx(np.log(2) * (1 / 3 + 3 + 1 + 3) / 6)
    assert BinaryCrossEntropy()(logits, labels).item() == approx(np.log(2))


# ---------------------------------------------------------------- metrics by hand

NAMES = ["anger", "joy", "love"]
GOLD = [["anger", "joy"], ["joy"], [], ["love"], ["anger"]]
PRED = [["anger"], ["joy", "love"], [], ["love"], ["joy"]]
# per label        tp fp fn   P     R     F1
#   anger           1  0  1   1     1/2   2/3
#   joy             1  1  1   1/2   1/2   1/2
#   love            1  1  0   1/2   1     2/3
# pooled            3  2  2   3/5   3/5   3/5
# rows: F1 2/3, 2/3, none vs none 1, 1, 0 -> samples F1 10/3 / 5; Jaccard 1/2, 1/2, 1, 1, 0 -> 3 / 5
# exact rows: 2 of 5; wrong cells: 1 + 1 + 0 + 0 + 2 = 4 of 15
BY_HAND = {"f1_micro": 3 / 5, "f1_macro": (2 / 3 + 1 / 2 + 2 / 3) / 3, "f1_samples": (10 / 3) / 5,
           "jaccard_samples": 3 / 5, "subset_accuracy": 2 / 5, "hamming_loss": 4 / 15, "precision_micro": 3 / 5,
           "recall_micro": 3 / 5}


def _predictions(labels: list[list[str]]) -> list[dict]:
    return [{"labels": ls, "probabilities": {n: float(n in ls) for n in NAMES}} for ls in labels]


def test_metrics_by_hand():
    rows = [{"labels": ls} for ls in GOLD]
    assert ML.predictions.compute_metrics(_predictions(PRED), rows, list(BY_HAND), NAMES) == approx(BY_HAND)
    assert set(BY_HAND) == set(ML.predictions.metrics)
    report = ML.predictions.per_class_report(rows, _predictions(PRED), NAMES, None)
    assert report["anger"] == approx({"precision": 1.0, "recall": 0.5, "f1-score": 2 / 3, "support": 2})
    assert report["macro avg"]["f1-score"] == approx(BY_HAND["f1_macro"]) and "samples avg" not in report


@pytest.mark.parametrize("metric", ML.predictions.metrics)
def test_a_weighted_score_equals_the_metric_on_the_repeated_rows(metric):
    from bert_core.bootstrap import _resamples

    rng = random.Random(0)
    gold = [sorted(rng.sample(NAMES, rng.randint(0, 3))) for _ in range(40)]
    pred = [sorted(rng.sample(NAMES, rng.randint(0, 3))) for _ in range(40)]
    rows = [{"labels": ls, "_source": f"r{i}"} for i, ls in enumerate(gold)]
    fast = ML.predictions.weighted_metric(_predictions(pred), rows, metric, NAMES)
    slow = Predictions.weighted_metric(ML.predictions, _predictions(pred), rows, metric, NAMES)
    for weights in _resamples(len(rows), 8, seed=1):
        assert fast(weights) == approx(slow(weights), abs=1e-12), weights


# ---------------------------------------------------------------- thresholds


def _probabilities(probs: np.ndarray, names: list[str]) -> list[dict]:
    return [{"labels": [], "probabilities": dict(zip(names, map(float, p), strict=True))} for p in probs]


def test_per_label_thresholds_by_hand_and_the_global_one_for_a_rare_label():
    # 20 rows. Label x: on in the first 10, probabilities 0.62 there and 0.58 elsewhere -> F1 1 above 0.58 and
    # below 0.62: 0.60. Label y: on in rows 0-11, all at 0.3, off rows at 0.1 -> its best are 0.10 < t < 0.30: of
    # 0.15, 0.20, 0.25 the nearest 0.5 is 0.25. Label z: on in 2 rows only (< MIN_POSITIVES): the global threshold.
    n = 20
    gold = [[*(["x"] if i < 10 else []), *(["y"] if i < 12 else []), *(["z"] if i in (3, 15) else [])] for i in range(n)]
    probs = np.array([[0.62 if i < 10 else 0.58, 0.3 if i < 12 else 0.1, 0.9 if i == 3 else 0.05] for i in range(n)])
    rows = [{"labels": g} for g in gold]
    learnt = ML.predictions.tune(_probabilities(probs, ["x", "y", "z"]), rows, {"thresholds": "per_label"})
    # Global (micro-F1 of all cells): above 0.60 and at most 0.62 x is right; y needs t < 0.3; so no single
    # threshold gets both: 0.25 keeps y (12 tp) and x fires on all 20 (10 tp, 10 fp), z on row 3 (1 tp, 1 fn):
    # F1 = 2*23 / (2*23 + 10 + 1) = 46/57 = 0.807; 0.6 loses y (x 10 tp, z 1 tp, y 12 fn, z 1 fn): 22/36 = 0.611.
    assert learnt == {"label_thresholds": {"x": 0.6, "y": 0.25, "z": 0.25}}
    assert ML.predictions.tune(_probabilities(probs, ["x", "y", "z"]), rows, {"thresholds": "global"}) == \
        {"label_thresholds": {"x": 0.25, "y": 0.25, "z": 0.25}}
    # No spec choice: z has too few positive rows for one of its own, so one global threshold for all.
    assert ML.predictions.tune(_probabilities(probs, ["x", "y", "z"]), rows, {}) == \
        {"label_thresholds": {"x": 0.25, "y": 0.25, "z": 0.25}}


def test_thresholds_stay_between_the_floor_and_the_ceiling_and_ties_go_nearest_half():
    probs = np.array([[0.01, 0.99, 0.5]] * 12 + [[0.001, 0.999, 0.5]] * 12)
    rows = [{"labels": ["a", "b", "c"]}] * 12 + [{"labels": []}] * 12
    got = ML.predictions.tune(_probabilities(probs, ["a", "b", "c"]), rows, {"thresholds": "per_label"})
    # a: on below 0.01 only -> never right at 0.05; every threshold scores F1 0 -> 0.5. b: never separable either
    # (0.99 / 0.999 both above 0.95): all thresholds tie -> 0.5. c: all 0.5: F1 2/3 at thresholds below 0.5 (all
    # on), 0 at 0.5 and above -> 0.45.
    assert got == {"label_thresholds": {"a": 0.5, "b": 0.5, "c": 0.45}}


def test_postprocess_applies_each_labels_threshold():
    features = [{"example_index": 0}, {"example_index": 1}]
    logits = [np.array([0.0, 2.0, -2.0]), np.array([-0.1, 0.1, 0.0])]  # sigmoid: .5 .88 .12 / .475 .525 .5
    default = ML.predictions.postprocess(logits, features, [{}, {}], ["a", "b", "c"], {})
    assert [p["labels"] for p in default] == [["b"], ["b"]], "0.5 until tuned; on means strictly above"
    tuned = ML.predictions.postprocess(logits, features, [{}, {}], ["a", "b", "c"],
                                       {"label_thresholds": {"a": 0.45, "b": 0.9, "c": 0.1}})
    assert [p["labels"] for p in tuned] == [["a", "c"], ["a", "c"]]
    assert tuned[0]["probabilities"] == approx({"a": 0.5, "b": 1 / (1 + np.exp(-2)), "c": 1 / (1 + np.exp(2))})


def _vocab(tmp_path: Path) -> Path:
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return path


def test_predictor_and_the_served_model_apply_the_saved_thresholds(tmp_path):
    """The head of a random model gives every label a probability near 0.5 (logits ~0): thresholds 0.05 and 0.95
    put label a on and b off for every row, and swapped, b on and a off, whatever 0.5 would give."""
    from tracking.packaging import BertPyfunc

    torch.manual_seed(0)
    model = ML.build_model(BertEncoder(BertConfig(**TINY)), ["a", "b"]).eval()
    meta = {"family": ML.name, "label_names": ["a", "b"], "max_seq_length": 32,
            "label_thresholds": {"a": 0.05, "b": 0.95}}
    save_finetuned(model, BertTokenizer.from_vocab(_vocab(tmp_path)), tmp_path / "m", meta)
    rows = [{"text_a": "the movie was good"}, {"text_a": "a bad film"}, {"text_a": "fun"}]
    predictions = Predictor(tmp_path / "m").predict(rows)
    assert [p["labels"] for p in predictions] == [["a"], ["a"], ["a"]]
    assert all(0.05 < p < 0.95 for pred in predictions for p in pred["probabilities"].values())
    swapped = {**meta, "label_thresholds": {"a": 0.95, "b": 0.05}}
    save_finetuned(model, BertTokenizer.from_vocab(_vocab(tmp_path)), tmp_path / "swapped", swapped)
    assert [p["labels"] for p in Predictor(tmp_path / "swapped").predict(rows)] == [["b"], ["b"], ["b"]]
    served = BertPyfunc()
    served.load_context(PythonModelContext(artifacts={"model_dir": str(tmp_path / "m")}, model_config={}))
    frame = served.predict(None, pd.DataFrame({"text": [r["text_a"] for r in rows]}))
    assert list(frame.columns) == ["labels", "probabilities"]
    assert frame["labels"].tolist() == [["a"], ["a"], ["a"]] and set(frame["probabilities"][0]) == {"a", "b"}


# ---------------------------------------------------------------- a tiny fine-tune

SPEC = TaskSpec(name="toy_topics", family="multi_label_classification", labels=["cinema", "neg", "pos"],
                local={"format": "jsonl", "files": {"train": "t.jsonl", "eval": "d.jsonl"}}, max_seq_length=32,
                metrics=["f1_macro", "jaccard_samples", "hamming_loss"], primary_metric="f1_macro")


def toy_rows(n: int, seed: int) -> list[dict]:
    """Filler words plus, independently, a positive word (label pos), a negative one (neg), film/movie (cinema)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words, labels = rng.sample(["the", "plot", "was", "very", "actor", "city"], 3), []
        for label, cues, share in (("pos", ["good", "great", "fun"], 0.5), ("neg", ["bad", "terrible", "boring"], 0.4),
                                   ("cinema", ["film", "movie"], 0.5)):
            if rng.random() < share:
                words.append(rng.choice(cues))
                labels.append(label)
        rng.shuffle(words)
        rows.append({"text_a": " ".join(words), "text_b": None, "labels": sorted(labels), "_source": f"toy:{i}"})
    return rows


def test_fit_tunes_the_thresholds_saves_them_and_scoring_uses_them(tmp_path):
    tiny = write_tiny_checkpoint(tmp_path / "tiny")
    cfg = TrainConfig(learning_rate=3e-3, batch_size=16, epochs=20, seed=7, precision="fp32", progress_bar=False)
    train, dev = toy_rows(160, 1), toy_rows(80, 2)
    result = fit(SPEC, cfg, tmp_path / "run", train, dev, SPEC.labels, pretrained=tiny, cache_dir=tmp_path / "cache")
    assert result.eval_metrics["f1_macro"] > 0.8, result.eval_metrics  # measured 0.88; every label on: 0.63
    _, _, meta = load_finetuned(result.model_dir)
    thresholds = meta["label_thresholds"]
    assert set(thresholds) == set(SPEC.labels) and all(0.05 <= t <= 0.95 for t in thresholds.values())
    metrics, predictions = evaluate_model_dir(result.model_dir, SPEC, dev, "toy", cache_dir=tmp_path / "cache")
    assert metrics == approx(result.eval_metrics), "the saved thresholds reproduce the score training selected on"
    predicted = Predictor(result.model_dir).predict([{"text_a": r["text_a"]} for r in dev])
    assert [p["labels"] for p in predicted] == [p["labels"] for p in predictions]
    # the thresholds are what tune picks again on the saved model's predictions at 0.5
    model, tokenizer, _ = load_finetuned(result.model_dir)
    settings = feature_settings(SPEC, cfg)
    features = ML.features.build(dev, tokenizer, SPEC.labels, settings)
    _, _, learnt = evaluate_and_tune(model, ML, features, dev, SPEC.labels, settings, list(SPEC.metrics),
                                     tokenizer.pad_id)
    assert set(learnt) == {"temperature", "label_thresholds", "calibration_report"}
    assert learnt["label_thresholds"] == thresholds and learnt["temperature"] == approx(meta["temperature"])


def test_an_interrupted_fine_tune_with_pos_weight_resumes_to_the_same_weights(tmp_path):
    """Resume rebuilds the loss's pos_weight from the training rows (the saved head holds no loss): a fine-tune
    cut after its first checkpoint ends with the weights of one never cut."""
    from safetensors.torch import load_file

    from bert_core.training.state import list_checkpoints

    tiny = write_tiny_checkpoint(tmp_path / "tiny")
    spec = SPEC.model_copy(update={"pos_weight": True})
    cfg = TrainConfig(learning_rate=3e-3, batch_size=16, epochs=2, seed=7, precision="fp32", progress_bar=False,
                      checkpoint_every=5, log_every=1, num_threads=1)  # one thread: the same sums in both runs
    train, dev = toy_rows(96, 1), toy_rows(32, 2)

    def run(name, callbacks=()):
        return fit(spec, cfg, tmp_path / name, train, dev, SPEC.labels, pretrained=tiny, callbacks=callbacks,
                   cache_dir=tmp_path / "cache")

    class Crash:
        def on_step(self, step, metrics):
            if step == 8:
                raise KeyboardInterrupt

    whole = run("whole")
    with pytest.raises(KeyboardInterrupt):
        run("cut", [Crash()])
    resumed = run("cut")
    assert resumed.resumed_from_step == 5 and resumed.final_step == whole.final_step == 12
    a, b = (load_file(str(list_checkpoints(tmp_path / n / "checkpoints")[-1] / "model.safetensors"))
            for n in ("whole", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.eval_metrics == approx(whole.eval_metrics)


# ---------------------------------------------------------------- the built-in spec, real weights and real tweets


def test_the_builtin_semeval_spec():
    spec = load_spec("semeval2018_ec")
    assert (spec.family, spec.primary_metric, spec.local.files.eval) == (ML.name, "f1_macro", "semeval2018_ec/dev.txt")
    assert spec.labels == spec.label_columns and len(spec.labels) == 11
    assert set(spec.metrics) == set(ML.predictions.metrics)


@pytest.mark.integration
def test_real_weights_on_semeval_beat_every_untrained_answer(tmp_path, data_dir):
    """A few hundred real tweets on the packaged MiniLM: the dev macro-F1 must beat both what needs no training
    (every emotion on for every tweet, the best constant answer for macro-F1) and the untrained model with its
    thresholds tuned on dev like the trained one's."""
    from bert_core.checkpoint import load_pretrained
    from bert_core.families.multi_label import label_matrix

    spec = load_spec("semeval2018_ec")
    data = load_task_data(spec, data_dir)
    dev = data.splits["eval"].to_list()[:300]
    cfg = TrainConfig(max_train_samples=800, max_eval_samples=300, epochs=3, batch_size=16, learning_rate=1e-4,
                      max_seq_length=64, progress_bar=False, checkpoint_every=1000)
    result = fit(spec, cfg, tmp_path / "run", data.splits["train"].to_list(), dev, data.label_names,
                 data_fingerprint=data.fingerprint, cache_dir=tmp_path / "cache")
    gold = label_matrix([r["labels"] for r in dev], data.label_names)
    all_on = ML.predictions.compute_metrics(
        [{"labels": data.label_names, "probabilities": {}} for _ in dev], dev, ["f1_macro"], data.label_names)
    assert all_on["f1_macro"] == approx(np.mean(2 * gold.mean(0) / (1 + gold.mean(0))))  # 2p / (1 + p) per label
    torch.manual_seed(0)
    encoder, tokenizer = load_pretrained(None)
    untrained = ML.build_model(encoder, data.label_names).eval()
    settings = feature_settings(spec, cfg)
    untrained_metrics, _, _ = evaluate_and_tune(untrained, ML, ML.features.build(dev, tokenizer, data.label_names,
                                                                                 settings),
                                                dev, data.label_names, settings, ["f1_macro"], tokenizer.pad_id)
    baseline = max(all_on["f1_macro"], untrained_metrics["f1_macro"])
    print(f"\nsemeval dev macro-F1 {result.eval_metrics['f1_macro']:.3f}, all-on {all_on['f1_macro']:.3f}, "
          f"untrained {untrained_metrics['f1_macro']:.3f}, {result.train_seconds:.0f} s; {result.eval_metrics}")
    # measured: 0.452 against 0.342 (all on) and 0.346 (untrained), 86 s of training on 2 busy cores
    assert result.eval_metrics["f1_macro"] > baseline + 0.05, (result.eval_metrics, baseline)
