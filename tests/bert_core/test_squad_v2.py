"""SQuAD 2.0 (family extractive_qa_with_no_answer): the v2.0 metrics and the no-answer threshold search against
worked examples by hand, the null-score decision with hand-made logits, reading the v2 JSON, the threshold
stored with a model and used by Predictor and the served pyfunc, and one small real-data fine-tune."""

from __future__ import annotations

import json
import math
import random
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch

from bert_core import BertConfig, BertEncoder, BertTokenizer, metrics, save_finetuned
from bert_core.checkpoint import resolve_source
from bert_core.families import Predictions, get_family
from bert_core.families.qa import OUTSIDE
from bert_core.families.qa_no_answer import decide
from bert_core.loading import load_task_data
from bert_core.predict import Predictor
from bert_core.spec import SpecError, load_spec
from bert_core.validation import DataError
from tests.tiny_models import TINY, VOCAB

approx = pytest.approx
V2 = get_family("extractive_qa_with_no_answer")
V1 = get_family("extractive_qa")


# ---------------------------------------------------------------- metrics


def test_scores_of_answerable_and_unanswerable_questions_by_hand():
    gold = {"q1": ["Eiffel Tower", "the tower"], "q2": ["1889"], "q3": [], "q4": [], "q5": ["March 1889"]}
    predictions = {"q1": "the Eiffel Tower", "q2": "", "q3": "", "q4": "Paris", "q5": "in 1889"}
    # q1 "eiffel tower" == "eiffel tower": EM 1, F1 1.   q2 answerable, empty prediction: 0, 0.
    # q3 unanswerable, empty prediction: 1, 1.           q4 unanswerable, "Paris": 0, 0.
    # q5 "in 1889" vs "march 1889": one common token, P = R = 1/2 -> F1 1/2, EM 0.
    # all: EM (1+0+1+0+0)/5, F1 (1+0+1+0+1/2)/5; HasAns q1 q2 q5: EM 1/3, F1 3/2/3; NoAns q3 q4: 1/2, 1/2
    assert metrics.squad_v2(predictions, gold) == approx({
        "exact_match": 2 / 5, "f1": 2.5 / 5, "has_ans_exact_match": 1 / 3, "has_ans_f1": 1.5 / 3,
        "no_ans_exact_match": 1 / 2, "no_ans_f1": 1 / 2})


def test_v2_f1_counts_two_empty_answers_as_a_match_unlike_v1():
    assert metrics.squad_v2_f1("", "") == 1.0 and metrics._token_f1("", "") == 0.0
    assert metrics.squad_v2_f1("The", "") == 1.0, "normalises to nothing: 'no answer'"
    assert metrics.squad_v2_f1("", "Paris") == 0.0 and metrics.squad_v2_f1("Paris", "") == 0.0
    # Gold texts normalising to nothing are dropped (the script's gold_answers); none left: only "" matches.
    assert metrics.squad_v2_gold(["the", "Paris"]) == ["Paris"] and metrics.squad_v2_gold(["a"]) == [""]
    got = metrics.squad_v2({"q": ""}, {"q": ["a"]})
    # It still counts as answerable (the script's qid_to_has_ans: answers non-empty), and "" matches it.
    assert got["has_ans_exact_match"] == 1.0 and got["f1"] == 1.0
    assert math.isnan(got["no_ans_f1"]), "no unanswerable question: undefined (the script leaves the key out)"


def test_a_missing_prediction_is_an_error():
    with pytest.raises(ValueError, match="1 questions have no prediction, e.g. 'q2'"):
        metrics.squad_v2({"q1": ""}, {"q1": [], "q2": ["x"]})


# ---------------------------------------------------------------- the no-answer threshold
# Five questions (margin = best span score - null score), answered in order of decreasing margin:
#   a  answerable    margin  3.0  best span "Rollo"     vs "Rollo":         EM 1, F1 1     -> gain EM 1, F1 1
#   b  unanswerable  margin  2.0  best span "Normandy"  (only "" matches):  EM 0, F1 0     -> gain -1, -1
#   c  answerable    margin  1.0  best span "the 10th"  vs "10th century":  EM 0, F1 2/3 (P 1, R 1/2) -> 0, 2/3
#   d  answerable    margin -1.0  best span "France"    vs "France":        1, 1           -> 1, 1
#   e  unanswerable  margin -2.0  best span "Denmark":                      0, 0           -> -1, -1
# Nothing answered scores b and e: 2 of 5. F1 after a, b, c, d, e: 3, 2, 8/3, 11/3, 8/3 -> best 11/3 (a-d), with
# the threshold halfway between d's margin and e's: -1.5.
# EM after each: 3, 2, 2, 3, 2 -> best 3, first reached after a: threshold 2.5 (between a and b); answering a-d
# also scores 3 but is not strictly better, so the fewer answers win (as with the official script's `>`).
# The official script (na_prob = -margin: -3, -2, -1, 1, 2) gets the same scores; its thresholds, -3.0 (EM) and
# 1.0 (F1), the na_prob of the last question answered, answer the same questions (na_prob <= threshold).
GOLD = {"a": ["Rollo"], "b": [], "c": ["10th century"], "d": ["France"], "e": []}
SPANS = {"a": "Rollo", "b": "Normandy", "c": "the 10th", "d": "France", "e": "Denmark"}
MARGINS = {"a": 3.0, "b": 2.0, "c": 1.0, "d": -1.0, "e": -2.0}


def _answers(threshold: float) -> dict[str, str]:
    return {q: SPANS[q] if decide(MARGINS[q], threshold) else "" for q in GOLD}


def test_best_thresholds_by_hand():
    got = metrics.squad_v2(_answers(0.0), GOLD, SPANS, MARGINS)
    # At threshold 0 a, b, c are answered: EM a 1 + e 1 = 2/5; F1 1 + 2/3 + 1 (e) = 8/3 over 5.
    assert got == approx({"exact_match": 2 / 5, "f1": 8 / 15, "has_ans_exact_match": 1 / 3,
                          "has_ans_f1": (1 + 2 / 3) / 3, "no_ans_exact_match": 1 / 2, "no_ans_f1": 1 / 2,
                          "best_exact_match": 3 / 5, "best_exact_match_threshold": 2.5,
                          "best_f1": 11 / 15, "best_f1_threshold": -1.5})


def test_the_best_threshold_gives_the_best_score_and_a_margin_at_the_threshold_is_not_answered():
    best = metrics.squad_v2(_answers(0.0), GOLD, SPANS, MARGINS)
    assert metrics.squad_v2(_answers(best["best_f1_threshold"]), GOLD)["f1"] == approx(best["best_f1"])
    assert metrics.squad_v2(_answers(best["best_exact_match_threshold"]), GOLD)["exact_match"] == best["best_exact_match"]
    # a threshold exactly at a question's margin leaves it unanswered: the rule is margin > threshold
    assert _answers(-1.0)["d"] == "" and _answers(-1.0)["c"] == "the 10th" and _answers(-1.5)["d"] == "France"
    assert decide(2.0, 2.0) is False and decide(2.0, 1.999) is True and decide(None, -math.inf) is False


def test_tied_margins_are_answered_together_whatever_their_order():
    # t1 answerable and right (gain 1), t2 unanswerable with a span (gain -1), same margin 1.0. Answering both
    # gains 0, so none is answered: F1 = t2's 1 over 2 = 1/2, threshold 2.0 (one above the largest margin). The official
    # script, given t1 first, stops between them and reports F1 1.0 with threshold na_prob -1.0, which answers
    # both (F1 1/2); given t2 first, it reports 1/2. No threshold gives 1.0.
    for order in (["t1", "t2"], ["t2", "t1"]):
        gold = {q: {"t1": ["Rollo"], "t2": []}[q] for q in order}
        spans, margins = {"t1": "Rollo", "t2": "Normandy"}, {"t1": 1.0, "t2": 1.0}
        got = metrics.squad_v2(dict.fromkeys(order, ""), gold, spans, margins)
        assert (got["best_f1"], got["best_f1_threshold"]) == (0.5, 2.0)


def test_all_unanswerable_answers_none():
    # "the" normalises to nothing, so answering with it scores 1 like "" (gain 0): not strictly better.
    # Nothing answered: F1 1, threshold 6.0 (one above the largest margin; the script reports 0.0, which would
    # answer both).
    gold, spans, margins = {"x": [], "y": []}, {"x": "Normandy", "y": "the"}, {"x": 2.0, "y": 5.0}
    got = metrics.squad_v2({"x": "", "y": ""}, gold, spans, margins)
    assert (got["best_f1"], got["best_f1_threshold"], got["best_exact_match"]) == (1.0, 6.0, 1.0)
    assert math.isnan(got["has_ans_f1"]) and got["no_ans_f1"] == 1.0


def test_answering_all_puts_the_threshold_one_below_the_lowest_margin():
    gold, spans, margins = {"x": ["Rollo"], "y": ["France"]}, {"x": "Rollo", "y": "France"}, {"x": -1.0, "y": -3.0}
    got = metrics.squad_v2({"x": "", "y": ""}, gold, spans, margins)
    assert (got["best_f1"], got["best_f1_threshold"]) == (1.0, -4.0)


def test_a_question_without_span_is_never_answered():
    best, threshold = metrics.best_no_answer_threshold([-np.inf, np.nan], [1.0, 1.0], [0.0, 0.0])
    assert (best, threshold) == (0.0, 0.0)


def _v2_case(seed: int = 3, n: int = 60):
    """Imperfect predictions of 60 questions, a third unanswerable, margins from few values (many ties)."""
    rng = random.Random(seed)
    rows, predictions = [], []
    for i in range(n):
        answerable = rng.random() < 0.65
        rows.append({"id": f"q{i}", "question": "?", "context": "a b c",
                     "answers": {"text": ["a b"], "answer_start": [0]} if answerable else {"text": [], "answer_start": []}})
        span = rng.choice(["a b", "a", "c", "b c", "the"])
        margin = rng.choice([-1.5, -0.5, 0.0, 0.5, 2.0, None])
        answered = decide(margin, 0.0)
        predictions.append({"id": f"q{i}", "answer": span if answered else "", "best_span": span,
                            "answer_margin": margin})
    return predictions, rows


@pytest.mark.parametrize("metric", V2.predictions.metrics)
def test_a_weighted_score_equals_the_metric_on_the_repeated_rows(metric):
    """The bootstrap's fast path (weights) must give what rescoring a resample gives, threshold search included."""
    from bert_core.bootstrap import _resamples

    predictions, rows = _v2_case()
    fast = V2.predictions.weighted_metric(predictions, rows, metric)
    slow = Predictions.weighted_metric(V2.predictions, predictions, rows, metric)  # repeats the rows, one id per draw
    for weights in _resamples(len(rows), 8, seed=1):
        assert fast(weights) == approx(slow(weights), abs=1e-12), weights
    assert fast(np.ones(len(rows), dtype=np.int64)) == approx(V2.predictions.compute_metrics(predictions, rows, [metric])[metric])


# ---------------------------------------------------------------- the null-score decision
FILLER = "The river flows slowly past the old mill. "
LONG = {"id": "long", "title": "t", "question": "Who built the mill?", "context": FILLER * 12,
        "answers": {"text": [], "answer_start": []}}
SHORT = {"id": "short", "title": "t", "question": "Where is the mill?", "context": "The mill is by the river.",
         "answers": {"text": [], "answer_start": []}}
SETTINGS = {"max_seq_length": 40, "doc_stride": 12, "max_query_length": 12, "max_answer_length": 30, "n_best": 20}


@pytest.fixture(scope="module")
def tok() -> BertTokenizer:
    return BertTokenizer.from_folder(resolve_source(None))


@pytest.fixture(scope="module")
def features(tok) -> list[dict]:
    return V2.features.build([LONG, SHORT], tok, None, SETTINGS)


def _passage(feature) -> list[int]:
    return [k for k, c in enumerate(feature["char_starts"]) if c != OUTSIDE]


def _hand_logits(features) -> list[np.ndarray]:
    """LONG: [CLS] start + end is 6.0 in every window but a middle one (2.0): null score 2.0, the minimum (the
    first window's or the highest would be 6.0). Its best span, start 2.5 + end 2.5 = 5.0, is in the last window:
    margin 5.0 - 2.0 = 3.0. SHORT (one window): null 4.0 + 4.0 = 8.0, best span 3.0 + 3.0 = 6.0: margin -2.0."""
    long_windows = [k for k, f in enumerate(features) if f["example_id"] == "long"]
    logits = []
    for k, f in enumerate(features):
        x = np.zeros((len(f["input_ids"]), 2))
        p0 = _passage(f)[0]
        if f["example_id"] == "long":
            x[0] = (1.0, 1.0) if k == long_windows[len(long_windows) // 2] else (3.0, 3.0)
            if k == long_windows[-1]:
                x[p0 + 1, 0] = x[p0 + 2, 1] = 2.5
        else:
            x[0] = (4.0, 4.0)
            x[p0, 0] = x[p0 + 1, 1] = 3.0
        logits.append(x)
    return logits


def test_features_of_unanswerable_questions_point_at_cls(features, tok):
    assert len([f for f in features if f["example_id"] == "long"]) >= 3
    assert all(f["input_ids"][0] == tok.cls_id for f in features), "position 0 is [CLS]"
    assert all((f["start_positions"], f["end_positions"]) == (0, 0) for f in features), \
        "targets even when every question of the split is unanswerable"


def test_null_score_is_the_minimum_over_windows_and_the_margin_decides(features):
    logits = _hand_logits(features)
    last_long = [f for f in features if f["example_id"] == "long"][-1]
    p0 = _passage(last_long)[0]
    start, end = last_long["char_starts"][p0 + 1], last_long["char_ends"][p0 + 2]
    span = LONG["context"][start:end]
    short = [f for f in features if f["example_id"] == "short"][0]
    s0 = _passage(short)[0]
    short_span = SHORT["context"][short["char_starts"][s0]:short["char_ends"][s0 + 1]]

    long_pred, short_pred = V2.predictions.postprocess(logits, features, [LONG, SHORT], None, SETTINGS)  # default threshold 0
    assert long_pred == {"id": "long", "answer": span, "start": start, "end": end, "score": 5.0, "null_score": 2.0,
                         "answer_margin": 3.0, "best_span": span}
    assert short_pred == {"id": "short", "answer": "", "start": 0, "end": 0, "score": 6.0, "null_score": 8.0,
                          "answer_margin": -2.0, "best_span": short_span}

    def answers(threshold):
        return [p["answer"] for p in V2.predictions.postprocess(logits, features, [LONG, SHORT], None,
                                                    {**SETTINGS, "no_answer_threshold": threshold})]

    assert answers(2.5) == [span, ""]
    assert answers(3.0) == ["", ""], "a margin exactly at the threshold is not answered"
    assert answers(-2.5) == [span, short_span]
    assert answers(-2.0) == [span, ""]
    # extractive_qa (v1.1) has no "no answer": the same logits give the best spans
    assert [p["answer"] for p in V1.predictions.postprocess(logits, features, [LONG, SHORT], None, SETTINGS)] == [span, short_span]


# ---------------------------------------------------------------- reading SQuAD 2.0 JSON
CONTEXT = "Rollo led the Normans to Normandy."


def _v2_json(*extra: dict) -> str:
    qas = []
    for i in range(8):
        if i % 2:
            qas.append({"id": f"q{i}", "question": "Who led the Danes?", "answers": [], "is_impossible": True,
                        "plausible_answers": [{"text": "Rollo", "answer_start": 0}]})
        else:
            qas.append({"id": f"q{i}", "question": "Who led the Normans?",
                        "answers": [{"text": "Rollo", "answer_start": 0}], "is_impossible": False})
    qas += list(extra)
    return json.dumps({"version": "v2.0", "data": [{"title": "Normans", "paragraphs": [{"context": CONTEXT, "qas": qas}]}]})


def _spec(tmp_path, family: str, doc: str):
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "qa.json").write_text(doc, encoding="utf-8")
    metric = "f1"
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(f"""
        name: tiny_qa
        family: {family}
        local:
          format: squad
          files: {{train: data/qa.json, eval: data/qa.json}}
          carve: {{by: row_index, eval_fraction: 0.5, seed: 1}}
        metrics: [{metric}]
        primary_metric: {metric}
    """), encoding="utf-8")
    return path


def _load_error(tmp_path, family: str, doc: str) -> str:
    with pytest.raises(DataError) as info:
        load_task_data(_spec(tmp_path, family, doc), tmp_path)
    return str(info.value)


def test_unanswerable_questions_load_with_no_answers(tmp_path):
    data = load_task_data(_spec(tmp_path, V2.name, _v2_json()), tmp_path)
    rows = {r["id"]: r for split in data.splits.values() for r in split.to_list()}
    assert len(rows) == 8
    assert rows["q1"] == {"id": "q1", "title": "Normans", "question": "Who led the Danes?", "context": CONTEXT,
                          "answers": {"text": [], "answer_start": []},
                          "_source": "data/qa.json:data[0].paragraphs[0].qas[1]"}, "plausible answers are not gold"
    assert rows["q0"]["answers"] == {"text": ["Rollo"], "answer_start": [0]}
    assert V2.rows.describe_labels(list(rows.values())) == "4 answerable, 4 unanswerable"


@pytest.mark.parametrize("bad, expected", [
    ({"id": "x", "question": "?", "answers": [{"text": "Rollo", "answer_start": 0}], "is_impossible": True},
     "expected [] for a question with is_impossible: true"),
    ({"id": "x", "question": "?", "answers": [], "is_impossible": False},
     "expected at least one answer for a question with is_impossible: false"),
    ({"id": "x", "question": "?", "answers": [], "is_impossible": "yes"}, "field 'is_impossible': got 'yes'"),
    ({"id": "x", "question": "?", "answers": [{"text": "Rollo", "answer_start": 3}], "is_impossible": False},
     "field 'answers.text[0]'"),  # an answerable question keeps extractive QA's checks
])
def test_bad_v2_rows_name_file_and_json_path(tmp_path, bad, expected):
    message = _load_error(tmp_path, V2.name, _v2_json(bad))
    assert "data/qa.json:data[0].paragraphs[0].qas[8]" in message and expected in message, message


def test_extractive_qa_refuses_unanswerable_questions_naming_the_json_path(tmp_path):
    message = _load_error(tmp_path, V1.name, _v2_json())
    assert "data/qa.json:data[0].paragraphs[0].qas[1]" in message and "at least one answer" in message
    assert "extractive_qa_with_no_answer" in message
    data = load_task_data(_spec(tmp_path, V1.name, _v2_json()), tmp_path, drop_bad_rows=True)  # as before: dropped
    assert len(data.dropped) == 4 and all(r["answers"]["text"] for s in data.splits.values() for r in s.to_list())


def test_spec_rules(tmp_path):
    spec = load_spec("squad_v2")
    assert spec.family == V2.name and spec.primary_metric == "f1" and set(spec.metrics) == set(V2.predictions.metrics)
    path = tmp_path / "bad.yaml"
    base = _spec(tmp_path, V2.name, _v2_json()).read_text()
    path.write_text(base.replace("metrics: [f1]\nprimary_metric: f1",
                                 "metrics: [f1, best_f1_threshold]\nprimary_metric: best_f1_threshold"))
    with pytest.raises(SpecError, match="is a threshold, not a score to select models on"):
        load_spec(path)
    path.write_text(base.replace(V2.name, V1.name).replace("metrics: [f1]", "metrics: [f1, has_ans_f1]"))
    with pytest.raises(SpecError, match="has_ans_f1"):
        load_spec(path)


# ---------------------------------------------------------------- the threshold stored with a model


@pytest.fixture(scope="module")
def tiny_v2(tmp_path_factory):
    """(save(threshold) -> model folder, rows): a tiny random model of the family, saved with a given threshold."""
    root = tmp_path_factory.mktemp("v2_models")
    (root / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer.from_vocab(root / "vocab.txt")
    torch.manual_seed(0)
    model = V2.build_model(BertEncoder(BertConfig(**TINY)), None).eval()

    def save(threshold: float | None):
        meta = {"family": V2.name, "label_names": None, "task": "demo", "max_seq_length": 128, "doc_stride": 32,
                "max_answer_length": 10}
        if threshold is not None:
            meta["no_answer_threshold"] = threshold
        return save_finetuned(model, tokenizer, root / f"t{threshold}", meta)

    rows = [{"question": "who visited paris ?", "context": "john visited paris ."},
            {"question": "who played ?", "context": "john played in the city of paris ."}]
    return save, rows


def test_predictor_decides_with_the_stored_threshold(tiny_v2):
    save, rows = tiny_v2
    everything = Predictor(save(-1e9)).predict(rows)
    assert all(p["answer"] == p["best_span"] != "" for p in everything)
    margin = everything[0]["answer_margin"]
    at_margin = Predictor(save(margin)).predict(rows)
    assert at_margin[0]["answer"] == "" and (at_margin[0]["start"], at_margin[0]["end"]) == (0, 0)
    assert at_margin[0]["answer_margin"] == margin and at_margin[0]["best_span"] == everything[0]["best_span"]
    assert Predictor(save(margin - 1e-6)).predict(rows)[0]["answer"] == everything[0]["answer"]
    default = Predictor(save(None)).predict(rows)  # no stored threshold: 0.0
    assert [p["answer"] for p in default] == [p["best_span"] if p["answer_margin"] > 0 else "" for p in default]


def test_the_served_model_returns_an_empty_answer_and_the_margin(tiny_v2):
    from mlflow.pyfunc import PythonModelContext

    from tracking.packaging import BertPyfunc

    save, rows = tiny_v2
    margin = Predictor(save(-1e9)).predict(rows)[0]["answer_margin"]
    served = BertPyfunc()
    served.load_context(PythonModelContext(artifacts={"model_dir": str(save(margin))}, model_config={}))
    out = served.predict(None, pd.DataFrame(rows))
    assert list(out.columns) == ["answer", "start", "end", "score", "answer_margin"]
    assert out["answer"][0] == "" and out["answer_margin"][0] == approx(margin)


# ---------------------------------------------------------------- a real fine-tune


def test_a_small_real_fine_tune_tunes_stores_and_uses_the_threshold(data_dir, tmp_path):
    from bert_core.training import TrainConfig, evaluate_model_dir, fit_task

    # fp32: fit's evaluation and the evaluate step's then read the same logits (bf16 autocast, auto's choice on
    # CPUs that have it, would move every score a little).
    cfg = TrainConfig(max_train_samples=160, max_eval_samples=80, max_seq_length=256, epochs=1, batch_size=16,
                      learning_rate=3e-4, precision="fp32", progress_bar=False)
    result = fit_task("squad_v2", cfg, tmp_path / "run", data_dir=data_dir, cache_dir=tmp_path / "cache")
    scores = result.eval_metrics
    assert set(scores) == set(V2.predictions.metrics)
    meta = json.loads((result.model_dir / "config.json").read_text(encoding="utf-8"))["bertflow"]
    assert meta["no_answer_threshold"] == scores["best_f1_threshold"], "the F1-tuned threshold is saved"
    assert scores["f1"] == approx(scores["best_f1"]), "scored with the threshold tuned on the same rows"

    eval_rows = load_task_data("squad_v2", data_dir).splits["eval"].to_list()[:80]
    unanswerable = sum(not r["answers"]["text"] for r in eval_rows)
    assert 0 < unanswerable < 80
    assert scores["best_f1"] >= unanswerable / 80 - 1e-12, "answering none is one of the thresholds searched"
    assert scores["has_ans_f1"] * (80 - unanswerable) + scores["no_ans_f1"] * unanswerable == approx(scores["f1"] * 80)

    predictions = Predictor(result.model_dir).predict([{k: r[k] for k in ("id", "question", "context")}
                                                        for r in eval_rows])
    assert V2.predictions.compute_metrics(predictions, eval_rows, ["f1", "exact_match"]) == approx(
        {"f1": scores["f1"], "exact_match": scores["exact_match"]}), "Predictor decides with the stored threshold"
    again, _ = evaluate_model_dir(result.model_dir, load_spec("squad_v2"), eval_rows, "x", cache_dir=tmp_path / "cache")
    assert again == approx(scores), "the evaluate step scores as fit did"
