"""Extractive question answering (SQuAD v1.1): a start and an end score per token.

Head: ``Linear(H, 2)``; column 0 is the start logit, column 1 the end logit. The loss is the mean of
the start and end cross-entropies. The answer is the span i <= j < i + L with the best s_i + e_j
among passage positions (``best_span``).

Features: the question (cut to ``max_query_length`` tokens at a word boundary) and the passage in
overlapping windows of ``max_seq_length`` tokens, consecutive windows sharing ``doc_stride`` passage
tokens (the BERT paper's SQuAD setup). One feature per window: ``input_ids``, ``token_type_ids``,
``char_starts`` / ``char_ends`` (per token, its character span in the original context; -1 on the
question and the specials), ``example_index``, ``example_id`` and, when the rows have answers,
``start_positions`` / ``end_positions``: the tokens of the first gold answer, or 0 (``[CLS]``) in
windows that do not hold all of it. Offsets are two flat lists rather than pairs so ``collate`` pads
them like any other per-token list.

Rows: ``id``, ``title``, ``question``, ``context`` and ``answers`` (SQuAD's: texts and character offsets).
Extractive QA with unanswerable questions (``qa_no_answer.py``) reads the same rows (where a question may
have no answer), head and windows, and searches spans with ``question_spans``; its predictions and metrics
are its own.

Predictions: ``{"id", "answer", "start", "end", "score"}``; the best span over all windows of the
question (n-best starts x n-best ends per window), ``answer == context[start:end]`` in the original
context, ``score`` its start + end logit. Metrics: SQuAD v1.1 ``exact_match`` and ``f1`` (the token F1 of
the answer, ``metrics.squad_em_f1``).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Features, List, Value
from torch import nn

from bert_core import metrics
from bert_core.families.base import Family, FeatureBuilder, Output, Predictions, Rows, as_rows
from bert_core.model import BertEncoder
from bert_core.tokenizer import BertTokenizer, Encoding
from bert_core.validation import problem, show, text_problem

log = logging.getLogger(__name__)

# The BERT paper's / Hugging Face run_squad values; a spec's or the user's settings override them.
QA_DEFAULTS = {"doc_stride": 128, "max_query_length": 64, "max_answer_length": 30, "n_best": 20}
QA_METRICS = ("exact_match", "f1")
OUTSIDE = -1  # char_starts / char_ends value on question tokens and specials


class SpanQA(nn.Module):
    """BERT + ``Linear(H, 2)`` start/end scorer."""

    def __init__(self, encoder: BertEncoder):
        super().__init__()
        self.bert = encoder
        self.qa_outputs = nn.Linear(encoder.config.hidden_size, 2)
        nn.init.normal_(self.qa_outputs.weight, std=encoder.config.initializer_range)
        nn.init.zeros_(self.qa_outputs.bias)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, start_positions=None, end_positions=None) -> Output:
        """start_positions, end_positions: (B,) token indices (0 = [CLS] when the answer is not in the window)."""
        sequence, _ = self.bert(input_ids, token_type_ids, attention_mask)  # (B, T, H)
        logits = self.qa_outputs(sequence)  # (B, T, 2)
        loss = None
        if start_positions is not None and end_positions is not None:
            start, end = logits.float().unbind(-1)  # 2 x (B, T)
            loss = (F.cross_entropy(start, start_positions) + F.cross_entropy(end, end_positions)) / 2
        return Output(logits=logits, loss=loss)


def best_span(start: torch.Tensor, end: torch.Tensor, allowed: torch.Tensor, max_answer_len: int):
    """Best span per row, vectorised.

    start, end: (B, T) logits; allowed: (B, T) bool, True on passage tokens.
    Returns (i, j, score), each (B,): the i <= j <= i + max_answer_len - 1 with the largest
    start[i] + end[j], both inside ``allowed``. Rows with no allowed token get score -inf.
    """
    T = start.shape[-1]
    scores = start[:, :, None] + end[:, None, :]  # (B, T, T): scores[b, i, j] = s_i + e_j
    idx = torch.arange(T, device=start.device)
    width = idx[None, :] - idx[:, None]  # (T, T): j - i
    ok = (width >= 0) & (width < max_answer_len)  # (T, T)
    ok = ok[None] & allowed[:, :, None] & allowed[:, None, :]  # (B, T, T)
    scores = scores.masked_fill(~ok, float("-inf"))
    flat = scores.flatten(1)  # (B, T*T)
    best, arg = flat.max(dim=1)
    return arg // T, arg % T, best


def qa_settings(settings: dict) -> dict:
    """``settings`` over ``QA_DEFAULTS`` (None values, e.g. unset spec fields, keep the default), checked:
    every window must hold the longest question plus more passage tokens than the stride (the
    tokenizer panics otherwise)."""
    merged = {**QA_DEFAULTS, **{k: v for k, v in settings.items() if v is not None}}
    room = merged["max_seq_length"] - merged["max_query_length"] - 3  # [CLS] question [SEP] passage [SEP]
    if merged["doc_stride"] >= room:
        raise ValueError(
            f"QA settings: doc_stride={merged['doc_stride']} must be below max_seq_length - max_query_length - 3 "
            f"= {room} passage tokens per window"
        )
    return merged


def truncate_question(question: str, enc: Encoding, max_query_length: int) -> str:
    """The question cut to at most ``max_query_length`` tokens, at a word boundary so that it tokenizes
    to exactly the kept tokens. ``enc``: the question encoded alone (``[CLS] question [SEP]``)."""
    if len(enc) - 2 <= max_query_length:
        return question
    first_dropped = max_query_length + 1  # position 0 is [CLS]
    word_start = enc.word_ids.index(enc.word_ids[first_dropped])  # first token of the word it is in
    if word_start <= 1:
        raise ValueError(f"question {question[:50]!r}...: its first word alone is over max_query_length tokens")
    return question[: enc.offsets[word_start][0]]


def answer_token_span(char_starts: list[int], char_ends: list[int], answer: tuple[int, int] | None) -> tuple[int, int]:
    """Token positions (start, end) of the character span ``answer`` = [a, b) in one window, or (0, 0)
    (``[CLS]``) when the window does not hold the whole answer (or there is none)."""
    passage = [k for k, c in enumerate(char_starts) if c != OUTSIDE]
    if answer is None or not passage:
        return 0, 0
    a, b = answer
    if char_starts[passage[0]] > a or char_ends[passage[-1]] < b:
        return 0, 0
    # First token ending after the answer's start, last token starting before its end: an answer
    # starting on a space or ending inside a word still maps to the tokens that cover it.
    start = next(k for k in passage if char_ends[k] > a)
    end = next(k for k in reversed(passage) if char_starts[k] < b)
    return start, max(start, end)


def window_best_span(logits: np.ndarray, in_passage: np.ndarray, n_best: int, max_answer_length: int):
    """Best (score, i, j) in one window, or None when it has no passage token.

    logits: (T, 2) start/end; in_passage: (T,) bool. Pairs the ``n_best`` best passage starts with
    the ``n_best`` best passage ends and keeps i <= j < i + max_answer_length. If none of those pairs
    is valid, falls back to the exhaustive ``best_span``.
    """
    start, end = logits[:, 0], logits[:, 1]
    candidates = np.flatnonzero(in_passage)
    if len(candidates) == 0:
        return None
    starts = candidates[np.argsort(-start[candidates], kind="stable")[:n_best]]  # (S,)
    ends = candidates[np.argsort(-end[candidates], kind="stable")[:n_best]]  # (E,)
    i, j = starts[:, None], ends[None, :]  # (S, 1), (1, E)
    valid = (j >= i) & (j - i < max_answer_length)  # (S, E)
    if not valid.any():
        bi, bj, bs = best_span(
            torch.from_numpy(start)[None], torch.from_numpy(end)[None], torch.from_numpy(in_passage)[None], max_answer_length
        )
        return float(bs[0]), int(bi[0]), int(bj[0])
    scores = np.where(valid, start[i] + end[j], -np.inf)  # (S, E)
    si, ej = np.unravel_index(scores.argmax(), scores.shape)
    return float(scores[si, ej]), int(starts[si]), int(ends[ej])


def _first_answer(row: dict) -> tuple[int, int] | None:
    """Character span [start, end) of the first gold answer in the context, or None."""
    answers = row.get("answers") or {}
    if not answers.get("text"):
        return None
    start = answers["answer_start"][0]
    return start, start + len(answers["text"][0])


def question_spans(logits, features, n_questions: int,
                   settings: dict) -> tuple[list[tuple[float, int, int] | None], list[float | None]]:
    """Per question, over all its windows: the best span (score, char start, char end), or None when no window
    has a passage token; and the null ("no answer") score, the lowest start[CLS] + end[CLS] of its windows
    ([CLS] is each window's position 0), or None when it has no window.

    ``logits[k]``: (T, 2) of ``features[k]``; ``settings``: ``qa_settings`` (n_best, max_answer_length)."""
    best: list[tuple[float, int, int] | None] = [None] * n_questions  # (score, char start, char end)
    null: list[float | None] = [None] * n_questions
    for logit, feature in zip(logits, features, strict=True):
        char_starts = np.asarray(feature["char_starts"])
        logit = np.asarray(logit, dtype=np.float64)[: len(char_starts)]  # (T, 2)
        span = window_best_span(logit, char_starts != OUTSIDE, settings["n_best"], settings["max_answer_length"])
        k = feature["example_index"]
        if span is not None and (best[k] is None or span[0] > best[k][0]):
            best[k] = (span[0], feature["char_starts"][span[1]], feature["char_ends"][span[2]])
        window_null = float(logit[0, 0] + logit[0, 1])
        if null[k] is None or window_null < null[k]:
            null[k] = window_null
    return best, null


class SquadRows(Rows):
    """SQuAD rows: a question, its passage and the gold answers in it (none when ``unanswerable``)."""

    fields = ("id", "title", "question", "context", "answers")
    request = {"question": ("question",), "context": ("context",)}
    local_formats = ("squad", "json", "jsonl", "parquet")
    spec_fields = ("doc_stride", "max_answer_length")
    has_label_names = False
    unanswerable = False  # whether a question may have no answer (bert_core/families/qa_no_answer.py)

    def check_spec(self, spec) -> None:
        """BERT's SQuAD defaults: windows overlap by 128 tokens (half the passage room of shorter windows),
        answers of at most 30 tokens; the stride must leave each window new passage tokens."""
        room = spec.max_seq_length - QA_DEFAULTS["max_query_length"] - 3  # [CLS] question [SEP] passage [SEP]
        if spec.doc_stride is None:
            spec.doc_stride = min(QA_DEFAULTS["doc_stride"], room // 2)
        if spec.max_answer_length is None:
            spec.max_answer_length = QA_DEFAULTS["max_answer_length"]
        if spec.doc_stride >= room:
            raise ValueError(f"doc_stride {spec.doc_stride} leaves no new passage tokens per window: it must be below "
                             f"max_seq_length - {QA_DEFAULTS['max_query_length'] + 3} = {room} (room for a "
                             f"{QA_DEFAULTS['max_query_length']}-token question and [CLS]/[SEP]/[SEP])")

    def task_settings(self, spec) -> dict:
        return {"doc_stride": spec.doc_stride, "max_answer_length": spec.max_answer_length}

    def arrow_features(self) -> Features:
        text = Value("string")
        return Features(id=text, title=text, question=text, context=text,
                        answers={"text": List(text), "answer_start": List(Value("int32"))}, _source=text)

    def validate_row(self, row, label_set, expected):
        found = text_problem(row, "id") or text_problem(row, "question") or text_problem(row, "context")
        if found:
            return found
        if not isinstance(row.get("title"), str):
            return problem("title", row.get("title"), "text (may be empty)")
        context, answers = row["context"], row.get("answers")
        if not isinstance(answers, dict) or not isinstance(answers.get("text"), list) \
                or not isinstance(answers.get("answer_start"), list):
            return problem("answers", answers, "{'text': [str, ...], 'answer_start': [int, ...]}")
        texts, starts = answers["text"], answers["answer_start"]
        if len(texts) != len(starts):
            return problem("answers", answers, "as many answer_start as text")
        if not texts and not self.unanswerable:
            return problem("answers", answers, "at least one answer (a question without one, SQuAD 2.0's is_impossible, "
                           "needs family extractive_qa_with_no_answer)")
        for i, (text, start) in enumerate(zip(texts, starts, strict=True)):
            if not isinstance(text, str) or not text:
                return problem(f"answers.text[{i}]", text, "non-empty text")
            if not isinstance(start, int) or isinstance(start, bool) or not 0 <= start <= len(context) - len(text):
                return problem(f"answers.answer_start[{i}]", start,
                               f"a character offset in 0..{len(context) - len(text)} so the {len(text)}-character "
                               f"answer fits the {len(context)}-character context")
            found = context[start:start + len(text)]
            if found != text:
                return problem(f"answers.text[{i}]", text, f"the context's text at answer_start {start}, which is "
                               f"{show(found)}")
        return None


def build_span_qa(encoder: BertEncoder, label_names: list[str] | None) -> nn.Module:
    return SpanQA(encoder)


class WindowFeatures(FeatureBuilder):
    """The question and overlapping windows of the passage, one feature per window (module docstring)."""

    label_keys = ("start_positions", "end_positions")

    def build(self, rows, tokenizer: BertTokenizer, label_names: list[str] | None, settings: dict) -> list[dict]:
        settings = qa_settings(settings)
        rows = as_rows(rows)
        # Cut long questions first: the windows truncate only the passage ("only_second").
        question_encodings = tokenizer.encode_batch([row["question"] for row in rows], max_length=None)
        questions = [
            truncate_question(row["question"], enc, settings["max_query_length"])
            for row, enc in zip(rows, question_encodings, strict=True)
        ]
        cut = sum(q != row["question"] for q, row in zip(questions, rows, strict=True))
        if cut:
            log.warning("%d of %d questions cut to max_query_length=%d tokens", cut, len(rows), settings["max_query_length"])

        # Rows with gold answers (any: a split may hold only unanswerable questions) get training targets.
        labelled = any(isinstance(row.get("answers"), dict) for row in rows)
        features = []
        for i, (row, question) in enumerate(zip(rows, questions, strict=True)):
            answer = _first_answer(row)
            windows = tokenizer.encode_windows(question, row["context"], settings["max_seq_length"], settings["doc_stride"])
            for enc in windows:
                in_passage = [sid == 1 for sid in enc.sequence_ids]
                feature = {
                    "input_ids": enc.input_ids,
                    "token_type_ids": enc.token_type_ids,
                    "char_starts": [o[0] if p else OUTSIDE for o, p in zip(enc.offsets, in_passage, strict=True)],
                    "char_ends": [o[1] if p else OUTSIDE for o, p in zip(enc.offsets, in_passage, strict=True)],
                    "example_index": i,
                    "example_id": str(row["id"]),
                }
                if labelled:
                    start, end = answer_token_span(feature["char_starts"], feature["char_ends"], answer)
                    feature["start_positions"], feature["end_positions"] = start, end
                features.append(feature)
        return features

    def token_lengths(self, rows, tokenizer: BertTokenizer) -> list[int]:
        """Question + whole passage: longer than max_seq_length means several windows."""
        rows = as_rows(rows)
        encodings = tokenizer.encode_batch([r["question"] for r in rows], [r["context"] for r in rows], max_length=None)
        return [len(enc) for enc in encodings]


def windows_note(spec, max_seq_length: int) -> str:
    """How a QA model reads a long passage, and how long its answers are, for a model card's limits."""
    return (f"the question (at most {QA_DEFAULTS['max_query_length']} tokens) and the passage are read in windows "
            f"of {max_seq_length} tokens overlapping by {spec.doc_stride}; answers are at most "
            f"{spec.max_answer_length} tokens")


class SpanPredictions(Predictions):
    """The best span over all windows of a question; SQuAD v1.1's exact match and token F1."""

    metrics = QA_METRICS
    response = {"answer": "answer", "start": "start", "end": "end", "score": "score"}

    def postprocess(self, logits, features, rows, label_names, settings: dict) -> list[dict]:
        """logits[k]: (T, 2) -> per question {"id", "answer", "start", "end", "score"}: the best span over
        all its windows; ``answer = context[start:end]`` (characters), ``score`` = start + end logit.
        A question whose context has no token gets answer "" and score None."""
        settings = qa_settings(settings)
        rows = as_rows(rows)
        best, _ = question_spans(logits, features, len(rows), settings)
        predictions = []
        for row, span in zip(rows, best, strict=True):
            score, start, end = (None, 0, 0) if span is None else span
            predictions.append({"id": row["id"], "answer": row["context"][start:end], "start": start, "end": end, "score": score})
        return predictions

    def compute_metrics(self, predictions, rows, metric_names, label_names=None, settings=None) -> dict[str, float]:
        """SQuAD v1.1 exact match and token F1, each the best over all gold answers of a question."""
        self.check_metric_names(metric_names)
        rows = as_rows(rows)
        unanswered = [row.get("_source", row["id"]) for row in rows if not (row.get("answers") or {}).get("text")]
        if unanswered:
            raise ValueError(f"compute_metrics: {len(unanswered)} questions have no gold answer, e.g. {unanswered[0]}")
        gold = {row["id"]: list(row["answers"]["text"]) for row in rows}
        scores = metrics.squad_em_f1({p["id"]: p["answer"] for p in predictions}, gold)
        return {name: scores[name] for name in metric_names}

    def weighted_metric(self, predictions, rows, metric, label_names=None, settings=None):
        """Each question's exact match and F1, averaged by weight (SQuAD's scores are means over questions)."""
        rows = as_rows(rows)  # predictions[i] answers rows[i]: keyed by position, so repeated ids stay apart
        answers = {str(i): p["answer"] for i, p in enumerate(predictions)}
        per_question = metrics.squad_per_question(answers, {str(i): list(row["answers"]["text"])
                                                            for i, row in enumerate(rows)})
        column = per_question[:, QA_METRICS.index(metric)]
        return lambda weights: float(weights @ column / weights.sum())

    def input_limit(self, spec, max_seq_length, label_names) -> str:
        return f"{windows_note(spec, max_seq_length)}, and always a span of the passage (it never says 'no answer')"


NAME = "extractive_qa"
EXTRACTIVE_QA = Family(NAME, rows=SquadRows(), features=WindowFeatures(), build_model=build_span_qa,
                       predictions=SpanPredictions(NAME))
