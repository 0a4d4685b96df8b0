"""Texts longer than the window (the spec's ``long_text``, bert_core/families/text_encoding.py): overlapping
windows, one feature each, pooled back into one answer per row; head + tail truncation; the spec's errors; the
setting kept with the model so that a Predictor and the served model read long texts as training did; the
request limit with and without it; and `bertflow check`'s suggestion."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModelContext

from bert_core import BertConfig, BertEncoder, BertTokenizer, save_finetuned
from bert_core.checkpoint import resolve_source
from bert_core.dry_run import LONG_TEXT_SUGGESTED_ABOVE, dry_run
from bert_core.families import get_family
from bert_core.families.text_encoding import HEAD_SHARE, MAX_WINDOWS, logits_by_row
from bert_core.predict import Predictor
from bert_core.spec import LongText, SpecError, TaskSpec, load_spec
from bert_core.training import TrainConfig, fit
from bert_core.training.features import TASK_SETTINGS, feature_settings
from flows.check_report import report
from tests.tiny_models import TINY, VOCAB
from tracking.packaging import BertPyfunc
from tracking.request_check import MAX_LONG_TEXT_CHARS, MAX_TEXT_CHARS, check_value, text_limit

SINGLE, PAIR = get_family("single_classification"), get_family("pair_classification")
WINDOWS = {"strategy": "windows", "stride": 2, "pooling": "mean"}
# 14 distinct words of the tiny vocabulary, one word piece each: token k of the text is WORDS[k]
WORDS = "the a an is was good bad movie film great terrible not very and".split()


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> BertTokenizer:
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return BertTokenizer.from_vocab(path)


def words(feature: dict) -> list[str]:
    return [VOCAB[i] for i in feature["input_ids"]]


# ---- windows ----------------------------------------------------------------------------------------------
def test_a_long_text_gives_overlapping_windows_each_a_training_example_of_its_row(tok):
    rows = [{"text_a": " ".join(WORDS), "text_b": None, "label": "pos"}, {"text_a": "good", "text_b": None, "label": "neg"}]
    features = SINGLE.features.build(rows, tok, ["neg", "pos"], {"max_seq_length": 8, "long_text": WINDOWS})
    # 6 text tokens a window (8 less [CLS], [SEP]), 2 shared: windows start at tokens 0, 4, 8
    assert [words(f) for f in features] == [
        ["[CLS]", *WORDS[0:6], "[SEP]"], ["[CLS]", *WORDS[4:10], "[SEP]"], ["[CLS]", *WORDS[8:14], "[SEP]"],
        ["[CLS]", "good", "[SEP]"]]
    assert [(f["example_index"], f["window"], f["labels"]) for f in features] == [(0, 0, 1), (0, 1, 1), (0, 2, 1),
                                                                                  (1, 0, 0)]
    assert SINGLE.features.stats(features) == {"windows_per_row": 2.0, "rows_in_windows": 1}
    cut = SINGLE.features.build(rows, tok, ["neg", "pos"], {"max_seq_length": 8})
    assert [words(f) for f in cut] == [["[CLS]", *WORDS[0:6], "[SEP]"], ["[CLS]", "good", "[SEP]"]], "off: cut"
    assert "window" not in cut[0] and SINGLE.features.stats(cut) == {}, "off: the features (and cache entries) of before"


@pytest.mark.parametrize("family", [SINGLE, PAIR])
def test_a_row_that_fits_is_the_feature_truncation_gives(family):
    """Windows tokenize each text alone and join them as BERT's post-processor does: same ids and segments."""
    tok = BertTokenizer.from_folder(resolve_source(None))  # the packaged vocabulary: word pieces, punctuation
    rows = [{"text_a": "It's a charming, often hilarious journey -- un-Hollywood!", "text_b": "Naïve? Not at all."},
            {"text_a": "a", "text_b": "b"}]
    if family is SINGLE:
        rows = [{"text_a": row["text_a"]} for row in rows]
    plain = family.features.build(rows, tok, None, {"max_seq_length": 64})
    windowed = family.features.build(rows, tok, None, {"max_seq_length": 64, "long_text": WINDOWS})
    assert [{k: v for k, v in f.items() if k != "window"} for f in windowed] == plain


def test_a_pair_keeps_its_shorter_text_in_every_window_of_the_longer_one(tok):
    long, short = " ".join(WORDS), "john paris london"
    for row, long_first in (({"text_a": short, "text_b": long}, False), ({"text_a": long, "text_b": short}, True)):
        features = PAIR.features.build([row], tok, ["neg", "pos"], {"max_seq_length": 12, "long_text": WINDOWS})
        # 9 text tokens a window (12 less [CLS], [SEP], [SEP]), the short text's 3 among them: 6 of the long one
        slices = [WORDS[0:6], WORDS[4:10], WORDS[8:14]]
        if long_first:
            assert [words(f) for f in features] == [["[CLS]", *s, "[SEP]", "john", "paris", "london", "[SEP]"]
                                                         for s in slices]
            assert all(f["token_type_ids"] == [0] * 8 + [1] * 4 for f in features)
        else:
            assert [words(f) for f in features] == [["[CLS]", "john", "paris", "london", "[SEP]", *s, "[SEP]"]
                                                         for s in slices]
            assert all(f["token_type_ids"] == [0] * 5 + [1] * 7 for f in features), "text_a stays segment 0"


def test_two_long_texts_cut_the_shorter_to_leave_the_windows_more_than_the_stride(tok):
    row = {"text_a": " ".join(WORDS), "text_b": " ".join(WORDS[:12])}
    features = PAIR.features.build([row], tok, None, {"max_seq_length": 12, "long_text": WINDOWS})
    # room 9; text_b is cut to (9 - 2) // 2 = 3 tokens, text_a read in windows of 6 tokens sharing 2
    assert [words(f)[7:] for f in features] == [["[SEP]", "the", "a", "an", "[SEP]"]] * 3
    assert [words(f)[1:7] for f in features] == [WORDS[0:6], WORDS[4:10], WORDS[8:14]]


def test_a_text_is_read_in_at_most_max_windows(tok):
    text = " ".join(["good"] * 2 * 6 * MAX_WINDOWS)  # 2 * MAX_WINDOWS windows of 6 new tokens (stride 0)
    features = SINGLE.features.build([{"text_a": text}], tok, None,
                                     {"max_seq_length": 8, "long_text": {**WINDOWS, "stride": 0}})
    assert len(features) == MAX_WINDOWS and features[-1]["window"] == MAX_WINDOWS - 1


def test_a_stride_the_window_cannot_hold_fails_when_the_features_are_built(tok):
    """The spec checks its own max_seq_length; a training config's shorter one is checked here."""
    with pytest.raises(ValueError, match=r"long_text.stride 6 must be below the window's room for text, 6 tokens "
                                         r"\(max_seq_length 8 less \[CLS\] and \[SEP\]\)"):
        SINGLE.features.build([{"text_a": "good"}], tok, None, {"max_seq_length": 8, "long_text": {**WINDOWS, "stride": 6}})


# ---- head + tail --------------------------------------------------------------------------------------------
def test_head_tail_keeps_the_first_quarter_and_the_last_three_quarters(tok):
    text = " ".join(WORDS * 3)  # 42 tokens
    [feature] = SINGLE.features.build([{"text_a": text}], tok, None,
                                      {"max_seq_length": 22, "long_text": {**WINDOWS, "strategy": "head_tail"}})
    head = round(20 * HEAD_SHARE)
    assert head == 5, "Sun et al.'s 128 of 510, scaled to 20 text tokens"
    assert words(feature) == ["[CLS]", *(WORDS * 3)[:head], *(WORDS * 3)[-(20 - head):], "[SEP]"]
    [short] = SINGLE.features.build([{"text_a": "good fun"}], tok, None,
                                    {"max_seq_length": 22, "long_text": {**WINDOWS, "strategy": "head_tail"}})
    assert words(short) == ["[CLS]", "good", "fun", "[SEP]"]


# ---- pooling --------------------------------------------------------------------------------------------------
def test_logits_by_row_pools_a_rows_windows_by_mean_or_max():
    features = [{"example_index": 0}, {"example_index": 0}, {"example_index": 1}, {"example_index": 0}]
    logits = [np.array([1.0, -2.0]), np.array([3.0, 0.0]), np.array([5.0, 5.0]), np.array([-1.0, 2.0])]
    mean = logits_by_row(logits, features, 2, "mean")
    assert np.allclose(mean[0], [1.0, 0.0]) and np.allclose(mean[1], [5.0, 5.0])
    top = logits_by_row(logits, features, 2, "max")
    assert np.allclose(top[0], [3.0, 2.0]) and np.allclose(top[1], [5.0, 5.0])
    scores = logits_by_row([np.float32(1.0), np.float32(4.0)], [{"example_index": 0}] * 2, 1, "mean")
    assert float(scores[0]) == 2.5, "regression: one score a window"
    with pytest.raises(ValueError, match="some rows have no feature"):
        logits_by_row(logits, features, 3)


@pytest.mark.parametrize("pooling, label", [("mean", "neg"), ("max", "pos")])
def test_classification_answers_from_the_pooled_windows(pooling, label):
    features = [{"example_index": 0}] * 3
    logits = [np.array([1.0, 0.0]), np.array([1.0, 0.0]), np.array([0.0, 1.5])]
    settings = {"long_text": {**WINDOWS, "pooling": pooling}}
    [prediction] = SINGLE.predictions.postprocess(logits, features, [{"text_a": "x"}], ["neg", "pos"], settings)
    assert prediction["label"] == label


def test_multi_label_and_regression_pool_their_windows_too():
    features = [{"example_index": 0}] * 2
    settings = {"long_text": {**WINDOWS, "pooling": "max"}}
    multi = get_family("multi_label_classification").predictions
    [labels] = multi.postprocess([np.array([3.0, -3.0]), np.array([-3.0, -3.0])], features, [{"text_a": "x"}],
                                 ["a", "b"], settings)
    assert labels["labels"] == ["a"], "max: a label found in any window"
    regression = get_family("pair_regression").predictions
    [score] = regression.postprocess([np.float32(1.0), np.float32(4.0)], features, [{"text_a": "x", "text_b": "y"}],
                                     None, settings)
    assert score["score"] == 4.0


# ---- the spec ---------------------------------------------------------------------------------------------
BASE = {"name": "t", "family": "single_classification", "local": {"format": "tsv", "files": {"train": "a", "eval": "b"}},
        "metrics": ["accuracy"], "primary_metric": "accuracy", "max_seq_length": 128}
JSONL = {"format": "jsonl", "files": {"train": "a", "eval": "b"}}


@pytest.mark.parametrize("fields, problem", [
    ({"long_text": {"stride": 126}}, "long_text.stride 126 must be below the window's room for text, 126 tokens "
                                     "(max_seq_length 128 less [CLS] and [SEP]): consecutive windows would share "
                                     "every token; e.g. stride 62"),
    ({"family": "pair_classification", "long_text": {"stride": 125}},
     "long_text.stride 125 must be below the window's room for text, 125 tokens (max_seq_length 128 less [CLS] and "
     "two [SEP])"),
    ({"family": "pair_regression", "metrics": ["pearson"], "primary_metric": "pearson", "long_text": {"stride": 200}},
     "long_text.stride 200 must be below"),
    ({"family": "multi_label_classification", "metrics": ["f1_macro"], "primary_metric": "f1_macro",
      "long_text": {"stride": 126}}, "long_text.stride 126 must be below"),
    ({"long_text": {"stride": -1}}, "long_text.stride': Input should be greater than or equal to 0"),
    ({"long_text": {"pooling": "sum"}}, "long_text.pooling': Input should be 'mean' or 'max'"),
    ({"long_text": {"strategy": "tail"}}, "long_text.strategy': Input should be 'windows' or 'head_tail'"),
    ({"family": "token_tagging", "metrics": ["token_accuracy"], "primary_metric": "token_accuracy", "long_text": {},
      "local": JSONL},
     "long_text is for single_classification and pair_classification and pair_regression and "
     "multi_label_classification and pair_multi_label_classification, not 'token_tagging'"),
    ({"family": "extractive_qa", "metrics": ["f1"], "primary_metric": "f1", "long_text": {}, "local": JSONL},
     "long_text is for single_classification"),
])
def test_long_text_spec_errors(tmp_path, fields, problem):
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps({**BASE, **fields}), encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert problem in str(info.value), str(info.value)


def test_the_model_card_says_how_a_long_input_is_read():
    spec = TaskSpec(**{**BASE, "long_text": {"stride": 32, "pooling": "max"}})
    assert SINGLE.predictions.input_limit(spec, 128, ["neg", "pos"]).startswith(
        f"a long input is read in windows of 128 word pieces overlapping by 32 (at most {MAX_WINDOWS}; a pair's "
        "shorter text in each), its answer from the max of the windows' scores")
    head_tail = TaskSpec(**{**BASE, "long_text": {"strategy": "head_tail"}})
    assert "first quarter and the last three quarters" in SINGLE.predictions.input_limit(head_tail, 128, ["a", "b"])
    assert SINGLE.predictions.input_limit(TaskSpec(**BASE), 128, ["a", "b"]).startswith("each input is cut to 128")


def test_long_text_is_a_task_setting_kept_with_the_model_and_off_by_default():
    spec = TaskSpec(**{**BASE, "long_text": {"stride": 32}})
    assert spec.long_text.strategy == "windows" and spec.long_text.pooling == "mean"
    settings = feature_settings(spec, TrainConfig())
    assert settings["long_text"] == {"strategy": "windows", "stride": 32, "pooling": "mean"}
    assert "long_text" in TASK_SETTINGS, "Predictor, the served model and score read it from the meta"
    assert "long_text" not in feature_settings(TaskSpec(**BASE), TrainConfig()), "off: the settings of before"
    assert TaskSpec(**{**BASE, "long_text": {"strategy": "head_tail", "stride": 500}}).long_text.stride == 500, \
        "head_tail has no stride to check"


# ---- a model with long_text: training, Predictor and the served pyfunc ------------------------------------------
POS, NEG, FILL = ["good", "great", "fun"], ["bad", "terrible", "boring"], ["the", "movie", "film", "plot", "was", "very"]
SPEC = TaskSpec(name="toy_long", family="single_classification", labels=["neg", "pos"],
                local={"format": "tsv", "files": {"train": "toy/train.tsv", "eval": "toy/dev.tsv"}},
                columns={"text_a": "sentence", "label": "label"},
                metrics=["accuracy"], primary_metric="accuracy", max_seq_length=16)


def late_signal_rows(n: int, seed: int) -> list[dict]:
    """20 filler words, then the one sentiment word that gives the label: past 16 tokens, which truncation drops."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = rng.choice(["neg", "pos"])
        text = " ".join([*(rng.choice(FILL) for _ in range(20)), rng.choice(POS if label == "pos" else NEG)])
        rows.append({"text_a": text, "text_b": None, "label": label, "_source": f"toy:{i}"})
    return rows


@pytest.mark.parametrize("long_text, learnt", [(None, False), ({"stride": 4}, True),
                                               ({"strategy": "head_tail"}, True)])
def test_a_label_said_only_at_the_end_is_learnt_with_windows_or_head_tail_not_with_truncation(tmp_path, tiny,
                                                                                              long_text, learnt):
    spec = SPEC.model_copy(update={"long_text": None if long_text is None else LongText(**long_text)})
    cfg = TrainConfig(learning_rate=3e-3, batch_size=16, epochs=8, seed=7, precision="fp32", progress_bar=False,
                      checkpoint_every=1000)
    result = fit(spec, cfg, tmp_path / "run", late_signal_rows(96, 1), late_signal_rows(48, 2), ["neg", "pos"],
                 pretrained=tiny, data_fingerprint="late-v1", cache_dir=tmp_path / "cache")
    if learnt:
        assert result.best_metric >= 0.9, result.eval_metrics
    else:
        assert result.best_metric <= 0.75, "the first 14 tokens say nothing about the label"
    predictor = Predictor(result.model_dir)
    assert predictor.settings.get("long_text") == (None if long_text is None else spec.long_text.model_dump())
    if learnt:  # the saved model reads new documents as training read them
        rows = late_signal_rows(40, 3)
        assert sum(p["label"] == r["label"] for p, r in zip(predictor.predict(rows), rows, strict=True)) >= 36


def _saved(tmp_path: Path, tok: BertTokenizer, name: str, **settings) -> Path:
    torch.manual_seed(0)
    model = SINGLE.build_model(BertEncoder(BertConfig(**TINY)), ["neg", "pos"]).eval()
    meta = {"family": SINGLE.name, "label_names": ["neg", "pos"], "task": "demo", "max_seq_length": 8, **settings}
    return save_finetuned(model, tok, tmp_path / name, meta)


def test_a_predictor_reads_every_window_of_a_long_document_as_the_features_say(tmp_path, tok):
    """Its probabilities are the softmax of the mean of the windows' logits, the model run on each window alone;
    changing the last word changes them (truncation never reads it)."""
    windowed = Predictor(_saved(tmp_path, tok, "windows", long_text=WINDOWS))
    cut = Predictor(_saved(tmp_path, tok, "cut"))
    text = " ".join(WORDS)
    [features] = [SINGLE.features.build([{"text_a": text}], tok, None, windowed.settings)]
    assert len(features) == 3
    with torch.no_grad():
        each = [windowed.model(input_ids=torch.tensor([f["input_ids"]])).logits[0].numpy() for f in features]
    pooled = np.mean(each, axis=0)
    expected = np.exp(pooled) / np.exp(pooled).sum()
    [prediction] = windowed.predict([{"text_a": text}])
    assert [prediction["probabilities"][n] for n in ("neg", "pos")] == pytest.approx(expected.tolist(), rel=1e-5)

    other_end = " ".join([*WORDS[:-1], "boring"])
    assert windowed.predict([{"text_a": other_end}])[0]["probabilities"] != prediction["probabilities"]
    assert cut.predict([{"text_a": other_end}]) == cut.predict([{"text_a": text}]), "truncation never reads the end"


# ---- the request limit ---------------------------------------------------------------------------------------
def _served(folder: Path) -> BertPyfunc:
    served = BertPyfunc()
    served.load_context(PythonModelContext(artifacts={"model_dir": str(folder)}, model_config={}))
    return served


def test_with_long_text_the_served_model_takes_long_documents_up_to_a_larger_bound(tmp_path, tok):
    document = "good fun " * 5_000  # 45,000 characters
    windowed = _served(_saved(tmp_path, tok, "windows", long_text=WINDOWS))
    assert len(windowed.predict(None, pd.DataFrame({"text": [document]}))) == 1
    with pytest.raises(MlflowException) as err:
        windowed.predict(None, pd.DataFrame({"text": ["a" * (MAX_LONG_TEXT_CHARS + 1)]}))
    assert f"the limit is {MAX_LONG_TEXT_CHARS:,}" in err.value.message and "long_text" not in err.value.message

    with pytest.raises(MlflowException) as err:
        _served(_saved(tmp_path, tok, "cut")).predict(None, pd.DataFrame({"text": [document]}))
    assert err.value.message == ("row 0, column 'text': 45,000 characters; the limit is 20,000; fine-tune with "
                                 "`long_text: {stride: 64}` in the task spec to read longer texts in overlapping windows")


def test_the_limit_names_windows_only_where_a_spec_could_ask_for_them():
    assert text_limit(SINGLE, {}).chars == MAX_TEXT_CHARS and "long_text: {stride: 64}" in text_limit(SINGLE, {}).hint
    assert text_limit(SINGLE, {"long_text": WINDOWS}).chars == MAX_LONG_TEXT_CHARS > MAX_TEXT_CHARS
    for family in ("extractive_qa", "token_tagging"):  # they read long inputs their own way (or not at all)
        limit = text_limit(get_family(family), {})
        assert (limit.chars, limit.hint) == (MAX_TEXT_CHARS, "")
    with pytest.raises(ValueError) as err:
        check_value("text_a", "a" * (MAX_TEXT_CHARS + 1), "review", text_limit(SINGLE, {}))
    assert str(err.value).endswith("expected at most 20,000 characters, the model's limit (this one has 20,001); "
                                   "fine-tune with `long_text: {stride: 64}` in the task spec to read longer texts in "
                                   "overlapping windows")


# ---- bertflow check ------------------------------------------------------------------------------------------
def _write_task(root: Path, spec: TaskSpec) -> Path:
    (root / "toy").mkdir(parents=True)
    for name, rows in (("train.tsv", late_signal_rows(32, 1)), ("dev.tsv", late_signal_rows(16, 2))):
        lines = ["sentence\tlabel"] + [f"{r['text_a']}\t{r['label']}" for r in rows]
        (root / "toy" / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    spec_path = root / "toy.yaml"
    spec_path.write_text(json.dumps(spec.model_dump(exclude_none=True)), encoding="utf-8")
    return spec_path


def test_check_suggests_long_text_when_many_rows_are_cut(tmp_path, tiny):
    assert LONG_TEXT_SUGGESTED_ABOVE == 0.10
    cfg = TrainConfig(batch_size=16, epochs=1).with_defaults({})
    spec = load_spec(_write_task(tmp_path / "cut", SPEC))
    text = report(dry_run(spec, cfg, tmp_path / "cut", str(tiny)))
    assert ("suggested:\n  100% of the train rows (p90 23 tokens), 100% of the eval rows (p90 23 tokens) are longer "
            "than max_seq_length 16 and cut there: add `long_text: {stride: 6}`") in text, text
    # The stride suggested fits the window (16 tokens leave 13 for a pair's text): the spec it gives passes.
    windowed = load_spec(_write_task(tmp_path / "windows", SPEC.model_copy(update={"long_text": LongText(stride=6)})))
    run = dry_run(windowed, cfg, tmp_path / "windows", str(tiny))
    assert run.suggestions == [] and "suggested:" not in report(run)
    assert [s.features for s in run.splits] == [64, 32], "two windows a row"
