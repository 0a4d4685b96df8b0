"""Features, postprocessing and metrics of the classification, regression and tagging families,
on hand-made rows with the real packaged tokenizer. (Extractive QA: test_qa_postprocess.py.)"""

from __future__ import annotations

import math

import numpy as np
import pytest
from datasets import Dataset

from bert_core.checkpoint import resolve_source
from bert_core.families import IGNORE_INDEX, collate, get_family
from bert_core.tokenizer import BertTokenizer

CLS, SEP = 101, 102  # ids in the packaged (bert-base-uncased) vocabulary


@pytest.fixture(scope="module")
def tok() -> BertTokenizer:
    return BertTokenizer.from_folder(resolve_source(None))


# ---------------------------------------------------------------- classification / regression


def test_pair_features_have_segment_ids_and_label_index(tok):
    rows = [{"text_a": "the cat sat", "text_b": "on the mat", "label": "1", "_source": "MRPC/dev.tsv:2"}]
    [f] = get_family("pair_classification").features.build(rows, tok, ["0", "1"], {"max_seq_length": 128})
    # [CLS] the cat sat [SEP] on the mat [SEP]
    assert f["input_ids"][0] == CLS and f["input_ids"][4] == SEP and f["input_ids"][-1] == SEP
    assert f["token_type_ids"] == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert f["labels"] == 1 and f["example_index"] == 0


def test_single_text_features_and_longest_first_truncation(tok):
    rows = [
        {"text_a": "a fine film", "text_b": None, "label": "pos", "_source": "SST-2/dev.tsv:2"},
        {"text_a": "word " * 100, "text_b": None, "label": "neg", "_source": "SST-2/dev.tsv:3"},
    ]
    short, long = get_family("single_classification").features.build(rows, tok, ["neg", "pos"], {"max_seq_length": 16})
    assert short["token_type_ids"] == [0] * 5 and short["labels"] == 1
    assert len(long["input_ids"]) == 16 and long["input_ids"][-1] == SEP and long["labels"] == 0
    assert long["example_index"] == 1

    pair = [{"text_a": "word " * 100, "text_b": "two words", "label": "pos", "_source": "x:1"}]
    [f] = get_family("pair_classification").features.build(pair, tok, ["neg", "pos"], {"max_seq_length": 16})
    assert len(f["input_ids"]) == 16 and f["token_type_ids"].count(1) == 3, "the short text_b survives whole"


def test_classification_rejects_unknown_label_naming_the_row(tok):
    rows = [{"text_a": "x", "text_b": None, "label": "maybe", "_source": "SST-2/dev.tsv:7"}]
    with pytest.raises(ValueError, match=r"SST-2/dev.tsv:7.*'maybe'"):
        get_family("single_classification").features.build(rows, tok, ["neg", "pos"], {"max_seq_length": 16})


def test_unlabelled_rows_give_features_without_labels(tok):
    rows = [{"text_a": "x", "text_b": None, "_source": "input:1"}]
    [f] = get_family("single_classification").features.build(rows, tok, ["neg", "pos"], {"max_seq_length": 16})
    assert "labels" not in f


def test_regression_features_have_float_labels_and_collate(tok):
    rows = Dataset.from_list([
        {"text_a": "a man plays", "text_b": "a man is playing", "label": 3.8, "_source": "STS-B/dev.tsv:2"},
        {"text_a": "a dog", "text_b": "a cat sleeps", "label": 0.0, "_source": "STS-B/dev.tsv:3"},
    ])
    features = get_family("pair_regression").features.build(rows, tok, None, {"max_seq_length": 32})
    assert [f["labels"] for f in features] == [3.8, 0.0] and isinstance(features[1]["labels"], float)
    batch = collate(features)
    assert batch["labels"].dtype.is_floating_point and batch["input_ids"].shape[0] == 2


def test_classification_postprocess_gives_label_and_softmax():
    fam = get_family("single_classification")
    features = [{"example_index": 0}, {"example_index": 1}]
    logits = [np.array([0.0, math.log(3.0)]), np.array([2.0, 2.0])]
    first, second = fam.predictions.postprocess(logits, features, [{}, {}], ["neg", "pos"], {})
    assert first["label"] == "pos" and first["score"] == pytest.approx(0.75)
    assert first["probabilities"] == pytest.approx({"neg": 0.25, "pos": 0.75})
    assert second["probabilities"] == pytest.approx({"neg": 0.5, "pos": 0.5})


def test_regression_postprocess_gives_the_score():
    preds = get_family("pair_regression").predictions.postprocess([np.array(2.5)], [{"example_index": 0}], [{}], None, {})
    assert preds == [{"score": 2.5}]


def test_classification_metrics_by_hand():
    # The positive class is label_names[1] ("paraphrase"), not the alphabetically first or last name.
    names = ["unrelated", "paraphrase"]
    gold = ["paraphrase", "paraphrase", "unrelated", "paraphrase", "unrelated"]
    pred = ["paraphrase", "paraphrase", "paraphrase", "unrelated", "unrelated"]
    rows = [{"label": g} for g in gold]
    predictions = [{"label": p, "probabilities": {"unrelated": 0.5, "paraphrase": 0.5}} for p in pred]
    # TP = 2, FP = 1, FN = 1, TN = 1
    expected = {"accuracy": 3 / 5, "f1": 2 / 3, "matthews_corr": (2 * 1 - 1 * 1) / math.sqrt(3 * 3 * 2 * 2)}
    fam = get_family("pair_classification")
    assert fam.predictions.compute_metrics(predictions, rows, ["accuracy", "f1", "matthews_corr"], names) == pytest.approx(expected)
    # Without label_names the order comes from the predictions' probabilities (postprocess writes it).
    assert fam.predictions.compute_metrics(predictions, rows, ["f1"]) == pytest.approx({"f1": 2 / 3})
    with pytest.raises(ValueError, match="pearson"):
        fam.predictions.compute_metrics(predictions, rows, ["pearson"], names)


def test_regression_metrics_by_hand():
    rows = [{"label": g} for g in (1.0, 3.0, 2.0)]
    predictions = [{"score": s} for s in (1.0, 2.0, 3.0)]
    # Centred: x = (-1, 0, 1), y = (-1, 1, 0): r = 1 / sqrt(2 * 2); ranks equal the values, so rho = r.
    got = get_family("pair_regression").predictions.compute_metrics(predictions, rows, ["pearson", "spearman"])
    assert got == pytest.approx({"pearson": 0.5, "spearman": 0.5})


# ---------------------------------------------------------------- token tagging

TAGS = ["B-PER", "I-PER", "O"]
# "Unaffable" -> una ##ffa ##ble, "Zola" -> z ##ola, "lives" and "here" one token each.
TAG_ROW = {"tokens": ["Unaffable", "Zola", "lives", "here"], "tags": ["O", "B-PER", "O", "O"], "_source": "eng.testa:5"}


def test_tagging_labels_the_first_subtoken_only(tok):
    [f] = get_family("token_tagging").features.build([TAG_ROW], tok, TAGS, {"max_seq_length": 32})
    out, per, x = TAGS.index("O"), TAGS.index("B-PER"), IGNORE_INDEX
    #                       [CLS] una ##ffa ##ble  z  ##ola lives here [SEP]
    assert f["word_ids"] == [-1, 0, 0, 0, 1, 1, 2, 3, -1]
    assert f["labels"] == [x, out, x, x, per, x, out, out, x]
    assert f["words_truncated"] == 0
    assert collate([f])["labels"][0, 9:].eq(x).all(), "padding is ignored too"


def test_tagging_counts_words_cut_by_max_length(tok):
    # [CLS] una ##ffa ##ble z [SEP]: "Zola" keeps its first piece, "lives" and "here" are cut.
    [f] = get_family("token_tagging").features.build([TAG_ROW], tok, TAGS, {"max_seq_length": 6})
    assert f["word_ids"] == [-1, 0, 0, 0, 1, -1]
    assert f["words_truncated"] == 2


def test_tagging_rejects_unknown_tags_and_length_mismatch(tok):
    fam = get_family("token_tagging")
    with pytest.raises(ValueError, match=r"eng.testa:5.*'B-XYZ'"):
        fam.features.build([{**TAG_ROW, "tags": ["O", "B-XYZ", "O", "O"]}], tok, TAGS, {"max_seq_length": 32})
    with pytest.raises(ValueError, match=r"eng.testa:5: 3 tags for 4 tokens"):
        fam.features.build([{**TAG_ROW, "tags": ["O", "O", "O"]}], tok, TAGS, {"max_seq_length": 32})


@pytest.mark.parametrize("names, fallback", [(TAGS, "O"), (["NN", "VB"], "NN")])
def test_tagging_postprocess_tags_every_word(tok, names, fallback):
    fam = get_family("token_tagging")
    [f] = fam.features.build([{**TAG_ROW, "tags": None}], tok, names, {"max_seq_length": 6})
    logits = np.zeros((6, len(names)))
    logits[1, 1] = 5.0  # first piece of "Unaffable" -> names[1]
    logits[2, 0] = 9.0  # a later piece of the same word: must not count
    logits[4, 1] = 5.0  # first piece of "Zola" -> names[1]
    [pred] = fam.predictions.postprocess([logits], [f], [TAG_ROW], names, {})
    assert pred["tokens"] == TAG_ROW["tokens"]
    assert pred["tags"] == [names[1], names[1], fallback, fallback]
    assert pred["words_truncated"] == 2


def test_tagging_metrics_by_hand():
    rows = [{"tags": ["B-PER", "I-PER", "O", "B-LOC"]}, {"tags": ["O", "B-ORG"]}]
    predictions = [{"tags": ["B-PER", "I-PER", "O", "O"]}, {"tags": ["O", "B-ORG"]}]
    # Gold entities: PER, LOC, ORG; predicted: PER, ORG, both right. Words: 5 of 6 right.
    got = get_family("token_tagging").predictions.compute_metrics(
        predictions, rows, ["entity_f1", "entity_precision", "entity_recall", "token_accuracy"]
    )
    assert got == pytest.approx(
        {"entity_f1": 0.8, "entity_precision": 1.0, "entity_recall": 2 / 3, "token_accuracy": 5 / 6}
    )
    # POS-style tags are not IOB: token accuracy alone must not touch the entity scorer.
    pos = get_family("token_tagging").predictions.compute_metrics([{"tags": ["NN", "VB"]}], [{"tags": ["NN", "NN"]}], ["token_accuracy"])
    assert pos == {"token_accuracy": 0.5}
