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


def test_perfect_entity_predictions_have_no_spread():
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


def _family_cases():
    """(family, metric, label_names, settings, predictions, rows): imperfect predictions for each family."""
    rng = random.Random(3)
    cls_rows = [{"text_a": f"s{i}", "text_b": None, "label": rng.choice("abc"), "_source": f"x:{i}"} for i in range(60)]
    cls_preds = [{"label": r["label"] if rng.random() < 0.6 else rng.choice("abc"), "probabilities": dict.fromkeys("abc", 0)}
                 for r in cls_rows]
    reg_rows = [{"text_a": "a", "text_b": "b", "label": rng.uniform(0, 5)} for _ in range(60)]
    reg_preds = [{"score": r["label"] + rng.gauss(0, 1)} for r in reg_rows]
    tag_rows, tag_preds = [], []
    for _ in range(40):
        tags = [rng.choice(["O", "O", "B-PER", "I-PER", "B-LOC"]) for _ in range(6)]
        tags = [t if t != "I-PER" or i and tags[i - 1] in ("B-PER", "I-PER") else "O" for i, t in enumerate(tags)]
        tag_rows.append({"tokens": ["w"] * 6, "tags": tags})
        tag_preds.append({"tokens": ["w"] * 6, "tags": [t if rng.random() < 0.8 else rng.choice(["O", "B-PER", "I-PER"])
                                                        for t in tags]})
    qa_rows = [{"id": f"q{i}", "question": "?", "context": "a b c", "answers": {"text": ["a b"], "answer_start": [0]}}
               for i in range(50)]
    qa_preds = [{"id": f"q{i}", "answer": rng.choice(["a b", "a", "c", "b c"])} for i in range(50)]
    for metric in ("accuracy", "matthews_corr", "f1_macro", "f1_weighted", "precision_macro", "recall_macro"):
        yield "single_classification", metric, list("abc"), None, cls_preds, cls_rows
    for metric in ("pearson", "spearman"):
        yield "pair_regression", metric, None, None, reg_preds, reg_rows
    for metric, scheme in (("entity_f1", "IOB2"), ("entity_precision", "IOB2"), ("entity_recall", None),
                           ("token_accuracy", None)):
        yield "token_tagging", metric, None, {"tag_scheme": scheme} if scheme else None, tag_preds, tag_rows
    for metric in ("exact_match", "f1"):
        yield "extractive_qa", metric, None, None, qa_preds, qa_rows


@pytest.mark.parametrize("case", list(_family_cases()), ids=lambda c: f"{c[0]}-{c[1]}")
def test_a_weighted_score_equals_the_official_metric_on_the_repeated_rows(case):
    """The fast path (weights) must give exactly what recomputing the metric on a resample gives."""
    from bert_core.bootstrap import _resamples
    from bert_core.families import Predictions, get_family

    family_name, metric, labels, settings, preds, rows = case
    family = get_family(family_name)
    fast = family.predictions.weighted_metric(preds, rows, metric, labels, settings)
    slow = Predictions.weighted_metric(family.predictions, preds, rows, metric, labels, settings)  # repeats the rows
    for weights in _resamples(len(rows), 5, seed=1):
        assert fast(weights) == pytest.approx(slow(weights), abs=1e-12), weights
    assert 0 < fast(weights) < 1 or family_name == "pair_regression", "imperfect predictions, a score that can move"
