"""Extractive QA: windowed features, answer positions, n-best postprocessing back to the original
context, and SQuAD metrics, with the real packaged tokenizer and synthetic logits."""

from __future__ import annotations

import numpy as np
import pytest
from datasets import Dataset

from bert_core.checkpoint import resolve_source
from bert_core.families import collate, get_family
from bert_core.families.qa import OUTSIDE, answer_token_span, truncate_question, window_best_span
from bert_core.tokenizer import BertTokenizer

QA = get_family("extractive_qa")
FILLER = "The river flows slowly past the old mill. "
ANSWER = "Émile Zola, l'écrivain"  # accents and punctuation inside: offsets must still slice it exactly
CONTEXT = FILLER * 6 + f"Germinal was written by {ANSWER}, in 1885. " + FILLER * 6
ROW = {
    "id": "q1", "title": "Germinal", "question": "Who wrote Germinal?", "context": CONTEXT,
    "answers": {"text": [ANSWER, "Zola"], "answer_start": [CONTEXT.index(ANSWER), CONTEXT.index("Zola")]},
    "_source": "squad_v1.1/dev-v1.1.json:row 0",
}
# Small windows so the ~150-token context needs several; room for the passage: 40 - 12 - 3 = 25 > 12.
SETTINGS = {"max_seq_length": 40, "doc_stride": 12, "max_query_length": 12, "max_answer_length": 30, "n_best": 20}


@pytest.fixture(scope="module")
def tok() -> BertTokenizer:
    return BertTokenizer.from_folder(resolve_source(None))


@pytest.fixture(scope="module")
def features(tok) -> list[dict]:
    return QA.features.build([ROW], tok, None, SETTINGS)


def _passage(feature) -> list[int]:
    return [k for k, c in enumerate(feature["char_starts"]) if c != OUTSIDE]


# ---------------------------------------------------------------- features


def test_windows_overlap_by_the_stride_and_keep_the_question(features):
    assert len(features) > 3
    for f in features:
        assert len(f["input_ids"]) <= 40 and f["example_index"] == 0 and f["example_id"] == "q1"
        assert f["token_type_ids"][:8] == [0] * 8 and f["token_type_ids"][8] == 1  # [CLS] who wrote ge ##rmin ##al ? [SEP]
    for a, b in zip(features, features[1:], strict=False):
        tail = [(a["char_starts"][k], a["char_ends"][k]) for k in _passage(a)[-12:]]
        head = [(b["char_starts"][k], b["char_ends"][k]) for k in _passage(b)[:12]]
        assert tail == head
    assert features[-1]["char_ends"][_passage(features[-1])[-1]] == len(CONTEXT.rstrip())


def test_positions_point_at_the_answer_or_at_cls(features):
    a, b = ROW["answers"]["answer_start"][0], ROW["answers"]["answer_start"][0] + len(ANSWER)
    inside = 0
    for f in features:
        s, e = f["start_positions"], f["end_positions"]
        p = _passage(f)
        holds_answer = f["char_starts"][p[0]] <= a and b <= f["char_ends"][p[-1]]
        if holds_answer:
            inside += 1
            assert CONTEXT[f["char_starts"][s] : f["char_ends"][e]] == ANSWER
        else:
            assert (s, e) == (0, 0)
    assert 0 < inside < len(features), "some windows hold the answer, others do not"


def test_answer_token_span_edge_cases():
    starts, ends = [OUTSIDE, 0, 4, 8, OUTSIDE], [OUTSIDE, 3, 7, 11, OUTSIDE]  # passage "abc efg ijk"
    assert answer_token_span(starts, ends, (4, 7)) == (2, 2)
    assert answer_token_span(starts, ends, (3, 11)) == (2, 3), "a leading space maps to the next token"
    assert answer_token_span(starts, ends, (8, 14)) == (0, 0), "answer running past the window"
    assert answer_token_span(starts, ends, None) == (0, 0)


def test_long_question_is_cut_at_a_word_boundary(tok):
    question = "who wrote the unaffable novel"  # who wrote the una ##ffa ##ble novel
    assert truncate_question(question, tok.encode(question, max_length=None), 4) == "who wrote the "
    row = {**ROW, "question": "which " * 30 + "writer wrote Germinal?"}
    for f in QA.features.build([row], tok, None, SETTINGS):
        assert f["token_type_ids"].index(1) - 2 <= 12  # question tokens between [CLS] and [SEP]


def test_settings_without_room_for_the_stride_are_rejected(tok):
    with pytest.raises(ValueError, match="doc_stride"):
        QA.features.build([ROW], tok, None, {**SETTINGS, "doc_stride": 25})


def test_qa_features_collate(features):
    batch = collate(features)
    assert batch["char_starts"].shape == batch["input_ids"].shape
    assert batch["start_positions"].shape == (len(features),)


# ---------------------------------------------------------------- postprocessing


def _gold_logits(features, peak: float = 10.0) -> list[np.ndarray]:
    logits = []
    for f in features:
        x = np.zeros((len(f["input_ids"]), 2))
        if f["start_positions"]:
            x[f["start_positions"], 0] = x[f["end_positions"], 1] = peak
        logits.append(x)
    return logits


def test_logits_peaking_at_the_gold_span_give_the_exact_answer(features):
    [pred] = QA.predictions.postprocess(_gold_logits(features), Dataset.from_list(features), [ROW], None, SETTINGS)
    start = ROW["answers"]["answer_start"][0]
    assert pred == {"id": "q1", "answer": ANSWER, "start": start, "end": start + len(ANSWER), "score": 20.0}


def test_question_and_special_tokens_are_never_chosen(features):
    logits = _gold_logits(features, peak=5.0)
    for f, x in zip(features, logits, strict=True):
        outside = np.array(f["char_starts"]) == OUTSIDE
        x[outside] = 100.0  # [CLS], question and [SEP] score far higher than any passage token
    [pred] = QA.predictions.postprocess(logits, features, [ROW], None, SETTINGS)
    assert pred["answer"] == ANSWER


def test_max_answer_length_is_respected(tok):
    row = {**ROW, "context": "one two three four five six seven eight nine ten", "answers": None}
    [f] = QA.features.build([row], tok, None, SETTINGS)
    p0 = _passage(f)[0]  # "one"; every word here is one token
    x = np.zeros((len(f["input_ids"]), 2))
    x[p0, 0] = 10.0
    x[p0 + 8, 1] = 10.0  # "nine": 9 tokens long, too long
    x[p0 + 2, 1] = 5.0  # "three": 3 tokens, allowed
    [pred] = QA.predictions.postprocess([x], [f], [row], None, {**SETTINGS, "max_answer_length": 5})
    assert pred["answer"] == "one two three" and pred["score"] == 15.0
    [pred] = QA.predictions.postprocess([x], [f], [row], None, {**SETTINGS, "max_answer_length": 9})
    assert pred["answer"] == "one two three four five six seven eight nine"


def test_best_span_over_several_windows(features):
    window_scores = [3.0] * len(features)
    window_scores[len(features) // 2] = 9.0  # a middle window wins: neither first nor last
    logits = []
    for f, score in zip(features, window_scores, strict=True):
        p0 = _passage(f)[0]
        x = np.zeros((len(f["input_ids"]), 2))
        x[p0 + 1, 0] = x[p0 + 2, 1] = score / 2
        logits.append(x)
    [pred] = QA.predictions.postprocess(logits, features, [ROW], None, SETTINGS)
    best = features[len(features) // 2]
    p0 = _passage(best)[0]
    assert (pred["start"], pred["end"]) == (best["char_starts"][p0 + 1], best["char_ends"][p0 + 2])
    assert pred["answer"] == CONTEXT[pred["start"] : pred["end"]] and pred["score"] == 9.0


def test_nbest_falls_back_to_exhaustive_search_when_no_pair_is_valid():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(12, 2))
    logits[8, 0] = 50.0  # best start after the best end: with n_best=1 no candidate pair is valid
    logits[3, 1] = 50.0
    in_passage = np.zeros(12, dtype=bool)
    in_passage[2:11] = True
    score, i, j = window_best_span(logits, in_passage, n_best=1, max_answer_length=4)
    brute = max(
        (logits[a, 0] + logits[b, 1], a, b) for a in range(2, 11) for b in range(a, min(a + 4, 11))
    )
    assert (i, j) == brute[1:] and score == pytest.approx(brute[0])


# ---------------------------------------------------------------- metrics


def test_squad_metrics_by_hand():
    rows = [
        {"id": "a", "answers": {"text": ["Eiffel Tower"], "answer_start": [0]}},
        {"id": "b", "answers": {"text": ["Paris", "Lyon"], "answer_start": [0, 9]}},
    ]
    predictions = [{"id": "a", "answer": "the Eiffel Tower"}, {"id": "b", "answer": "Paris France"}]
    # a: article dropped -> exact, F1 1. b: not exact; vs "Paris" P = 1/2, R = 1 -> F1 2/3 (vs "Lyon" 0).
    got = QA.predictions.compute_metrics(predictions, rows, ["f1", "exact_match"])
    assert got == pytest.approx({"f1": (1 + 2 / 3) / 2, "exact_match": 0.5})
