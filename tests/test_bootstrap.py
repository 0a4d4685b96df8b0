"""Bootstrap intervals and the paired bootstrap on hand-made predictions with known differences."""

from __future__ import annotations

import random

import pytest

from bert_core.bootstrap import bootstrap_interval, paired_bootstrap

LABELS = ["0", "1"]


def _rows_and_predictions(n: int, accuracy: float, seed: int):
    rng = random.Random(seed)
    rows = [{"text_a": f"s{i}", "text_b": None, "label": rng.choice(LABELS)} for i in range(n)]
    preds = []
    for i, row in enumerate(rows):
        right = i < round(accuracy * n)  # exactly `accuracy` of the rows right
        label = row["label"] if right else LABELS[1 - LABELS.index(row["label"])]
        preds.append({"label": label, "score": 0.9, "probabilities": {label: 0.9}})
    return rows, preds


def test_interval_brackets_the_point_and_shrinks_with_more_rows():
    small = bootstrap_interval("single_classification", *reversed(_rows_and_predictions(100, 0.8, 0)), "accuracy",
                               LABELS, n_resamples=500)
    big = bootstrap_interval("single_classification", *reversed(_rows_and_predictions(1600, 0.8, 0)), "accuracy",
                             LABELS, n_resamples=500)
    for iv in (small, big):
        assert iv.point == pytest.approx(0.8)
        assert iv.low < 0.8 < iv.high
    # Binomial standard error ~ sqrt(0.16/n): 0.04 at n=100, 0.01 at n=1600; 95% width ~ 3.9 * se.
    assert 0.12 < small.high - small.low < 0.20
    assert 0.03 < big.high - big.low < 0.05


def test_paired_bootstrap_sees_a_real_gap_and_not_a_copy():
    rows, good = _rows_and_predictions(400, 0.9, 1)
    _, worse = _rows_and_predictions(400, 0.7, 1)  # same rows (same seed), 80 more mistakes
    gap = paired_bootstrap("single_classification", good, worse, rows, "accuracy", LABELS, n_resamples=500)
    assert gap.delta == pytest.approx(0.2)
    assert gap.low > 0.1 and gap.p_candidate_better == 1.0
    same = paired_bootstrap("single_classification", good, list(good), rows, "accuracy", LABELS, n_resamples=200)
    assert same.delta == 0 and same.low == same.high == 0 and same.p_candidate_better == 0.0


def test_entity_f1_is_recomputed_per_resample():
    rows = [{"tokens": ["John", "lives", "in", "Paris"], "tags": ["I-PER", "O", "O", "I-LOC"]}] * 30
    perfect = [{"tokens": r["tokens"], "tags": list(r["tags"])} for r in rows]
    iv = bootstrap_interval("token_tagging", perfect, rows, "entity_f1", n_resamples=50)
    assert iv.point == iv.low == iv.high == 1.0


def test_mismatched_lengths_are_refused():
    rows, preds = _rows_and_predictions(10, 0.5, 0)
    with pytest.raises(ValueError, match="same rows"):
        paired_bootstrap("single_classification", preds, preds[:5], rows, "accuracy", LABELS)


def test_qa_questions_drawn_twice_count_twice():
    # 400 questions, half answered exactly: EM 0.5 with binomial se 0.025, 95% width ~0.098. Keyed by id
    # without re-iding, duplicates collapse and the interval comes out ~20% too narrow.
    rows = [{"id": f"q{i}", "question": "?", "context": "a b", "answers": {"text": ["a"], "answer_start": [0]}}
            for i in range(400)]
    preds = [{"id": f"q{i}", "answer": "a" if i % 2 else "b", "start": 0, "end": 1, "score": 1.0} for i in range(400)]
    iv = bootstrap_interval("extractive_qa", preds, rows, "exact_match", n_resamples=400)
    assert iv.point == pytest.approx(0.5)
    assert 0.088 < iv.high - iv.low < 0.11
