"""Extractive question answering where a question may have no answer in its passage (SQuAD 2.0).

Why a family of its own (``extractive_qa_with_no_answer``) rather than a spec flag on ``extractive_qa``: what
changes is exactly what a family object decides with no spec at hand. ``Rows.validate_row`` sees a row, not its
spec (here a question may have no answer); ``Predictions.metrics`` is what specs are validated against (here SQuAD
2.0's); and a saved model's meta names its family, from which the served model alone must know to weigh the best
span against "no answer". A flag would have to reach all three (and every ``compute_metrics`` caller's settings).
Head, windows, features and span search are extractive QA's, reused as they are (bert_core/families/qa.py); the
rows are extractive QA's where a question may have no answer; the predictions and metrics are this module's.

Model (as Google's run_squad and Hugging Face's run_qa do for version 2): the ``[CLS]`` position scores "no
answer". An unanswerable question's training targets point at ``[CLS]`` in each of its windows, as they do for a
window that does not hold the answer. At prediction, a question's null score is the lowest start[CLS] + end[CLS]
over its windows, its best span is extractive QA's (n-best over all windows), ``answer_margin`` = best span score -
null score, and it is answered only when ``answer_margin > no_answer_threshold`` (0.0 until tuned, the reference
implementations' default).

Threshold: ``tune`` picks it on the labelled split a run selects on, maximising F1 as the official v2.0
evaluation's ``find_best_thresh`` does (``metrics.best_no_answer_threshold``; Google's BERT README also tunes on
best_f1_thresh). ``fit`` predicts that split again with it, scores those predictions and saves the threshold with
the best model (meta key ``no_answer_threshold``, one of ``TASK_SETTINGS``), so ``Predictor``, the served model and
the evaluate step all decide with it.

Predictions: extractive QA's ``{"id", "answer", "start", "end", "score"}`` (``score``: the best span's start + end
logit, whether answered or not) plus ``null_score``, ``answer_margin`` (= score - null_score) and ``best_span``
(the best span's text, what tuning scores); a question judged unanswerable has ``answer`` "" and start = end = 0.
Metrics: SQuAD 2.0's (``metrics.SQUAD_V2_METRICS``): exact_match and f1 over all questions, has_ans_* / no_ans_*
over those with / without gold answers, best_* and their thresholds (in logits) from the threshold search.
"""

from __future__ import annotations

import numpy as np

from bert_core import metrics
from bert_core.families.base import Family, Predictions, as_rows
from bert_core.families.qa import (
    SpanPredictions,
    SquadRows,
    WindowFeatures,
    build_span_qa,
    qa_settings,
    question_spans,
    windows_note,
)

DEFAULT_THRESHOLD = 0.0  # answered when the best span outscores "no answer": run_qa's / run_squad's default


def decide(margin: float | None, threshold: float) -> bool:
    """Whether a question is answered: its best span beats the no-answer score by more than the threshold."""
    return margin is not None and margin > threshold


class UnanswerableRows(SquadRows):
    """SQuAD 2.0 rows: extractive QA's, where a question may have no answer (``answers`` with no text)."""

    unanswerable = True

    def check_spec(self, spec) -> None:
        super().check_spec(spec)
        if spec.primary_metric in metrics.SQUAD_V2_THRESHOLDS:
            raise ValueError(f"primary_metric {spec.primary_metric!r} is a threshold, not a score to select models "
                             "on; use f1 or exact_match")

    def check_data(self, spec, splits, label_names, origins) -> list[str]:
        """A split with only answerable (or only unanswerable) questions cannot teach (or tune) the no-answer
        decision: worth a warning, not an error."""
        warnings = []
        for split, rows in splits.items():
            unanswerable = sum(not row["answers"]["text"] for row in rows)
            if unanswerable in (0, len(rows)):
                kind = "no unanswerable" if unanswerable == 0 else "only unanswerable"
                warnings.append(f"{origins[split]}: split {split!r} has {kind} questions ({len(rows)} in all): "
                                f"{'training' if split == 'train' else 'the no-answer threshold tuned on it'} cannot "
                                "weigh answers against 'no answer'")
        return warnings

    def describe_labels(self, rows: list[dict]) -> str:
        unanswerable = sum(not row["answers"]["text"] for row in rows)
        return f"{len(rows) - unanswerable} answerable, {unanswerable} unanswerable"


class NoAnswerPredictions(Predictions):
    """Extractive QA's best span, answered only when it beats "no answer" by the tuned threshold; SQuAD 2.0's
    metrics."""

    metrics = metrics.SQUAD_V2_METRICS
    response = {**SpanPredictions.response, "answer_margin": "answer_margin"}

    def postprocess(self, logits, features, rows, label_names, settings: dict) -> list[dict]:
        """logits[k]: (T, 2) -> per question extractive QA's prediction, answered only when its best span beats
        the null score by more than ``settings["no_answer_threshold"]`` (module docstring)."""
        threshold = settings.get("no_answer_threshold")
        threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
        settings = qa_settings(settings)
        rows = as_rows(rows)
        best, null = question_spans(logits, features, len(rows), settings)
        predictions = []
        for row, span, null_score in zip(rows, best, null, strict=True):
            score, start, end = (None, 0, 0) if span is None else span
            margin = None if score is None or null_score is None else score - null_score
            text = row["context"][start:end]
            answered = decide(margin, threshold)
            predictions.append({"id": row["id"], "answer": text if answered else "",
                                "start": start if answered else 0, "end": end if answered else 0, "score": score,
                                "null_score": null_score, "answer_margin": margin, "best_span": text})
        return predictions

    def tune(self, predictions, rows, settings) -> dict:
        """The no-answer threshold that maximises F1 on these labelled rows (``best_f1_threshold``)."""
        threshold = _questions(predictions, as_rows(rows)).metrics(["best_f1_threshold"])["best_f1_threshold"]
        return {"no_answer_threshold": threshold}

    def compute_metrics(self, predictions, rows, metric_names, label_names=None, settings=None) -> dict[str, float]:
        """SQuAD 2.0's metrics of the predictions' answers (module docstring); best_* search the threshold over
        each question's ``best_span`` and ``answer_margin``."""
        self.check_metric_names(metric_names)
        rows = as_rows(rows)
        by_id = {p["id"]: p for p in predictions}
        missing = [row.get("_source", row["id"]) for row in rows if row["id"] not in by_id]
        if missing:
            raise ValueError(f"compute_metrics: {len(missing)} questions have no prediction, e.g. {missing[0]}")
        return _questions([by_id[row["id"]] for row in rows], rows).metrics(metric_names)

    def weighted_metric(self, predictions, rows, metric, label_names=None, settings=None):
        """Per-question scores, margins and counts, summed by weight: exact for every metric, the threshold
        search included (a question drawn k times is k tied questions, answered together)."""
        questions = _questions(predictions, as_rows(rows))  # predictions[i] answers rows[i]
        return lambda weights: questions.metrics([metric], np.asarray(weights))[metric]

    def input_limit(self, spec, max_seq_length, label_names) -> str:
        return (f"{windows_note(spec, max_seq_length)}, a span of the passage, or empty ('no answer') when the best "
                "span does not beat the no-answer score by the threshold tuned on the eval split")


def _questions(predictions: list[dict], rows: list[dict]) -> metrics.SquadV2Questions:
    """``predictions[i]`` answers ``rows[i]``. Predictions without margins (answers only) leave best_* nan."""
    with_margins = any("answer_margin" in p for p in predictions)
    return metrics.SquadV2Questions.score(
        [p["answer"] for p in predictions], [list(row["answers"]["text"]) for row in rows],
        [p.get("best_span", p["answer"]) for p in predictions],
        [p.get("answer_margin") for p in predictions] if with_margins else None)


NAME = "extractive_qa_with_no_answer"
EXTRACTIVE_QA_WITH_NO_ANSWER = Family(NAME, rows=UnanswerableRows(), features=WindowFeatures(),
                                      build_model=build_span_qa, predictions=NoAnswerPredictions(NAME))
