"""Row validation for canonical rows (docs/design.md), with errors a person can act on.

Every message names the row's origin (`_source`, e.g. "SST-2/train.tsv:17"), the canonical field,
the value (truncated) and what was expected. Bad data fails loudly by default: a silently dropped
row changes the dataset a metric is reported on. `drop_bad_rows=True` skips bad rows instead and
returns one message per dropped row so the caller can log how many and which.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

VALUE_LIMIT = 80  # characters of a bad value shown in a message


class DataError(ValueError):
    """Task data that cannot be used; the message names file, line/row, field, value, expectation."""


class SourceUnavailable(DataError):
    """The data source could not be reached (the Hugging Face hub): unlike bad data, this may heal by itself."""


def show(value: Any, limit: int = VALUE_LIMIT) -> str:
    """repr(value), cut to `limit` characters so one long passage does not flood a log."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def expected_one_of(names: Iterable[str], limit: int = 20) -> str:
    names = list(names)
    listed = ", ".join(repr(n) for n in names[:limit])
    more = f", ... ({len(names)} names)" if len(names) > limit else ""
    return f"one of [{listed}{more}]"


# Each check gets the row, the label (tag) set or None, and how to word an expected label; it returns None
# for a good row, else "field 'x': got ..., expected ...". Checks may normalise a row in place
# (regression labels become floats).
Check = Callable[[dict, set[str] | None, str], str | None]


def _problem(field: str, value: Any, expected: str) -> str:
    return f"field '{field}': got {show(value)}, expected {expected}"


def _text(row: dict, field: str) -> str | None:
    value = row.get(field)
    if not isinstance(value, str) or not value.strip():
        return _problem(field, value, "non-empty text")
    return None


def _label(row: dict, label_set: set[str] | None, expected: str) -> str | None:
    value = row.get("label")
    if not isinstance(value, str) or not value:
        return _problem("label", value, "a label name (string)")
    if label_set is not None and value not in label_set:
        return _problem("label", value, expected)
    return None


def _check_single(row: dict, label_set, expected) -> str | None:
    return _text(row, "text_a") or _label(row, label_set, expected)


def _check_pair(row: dict, label_set, expected) -> str | None:
    return _text(row, "text_a") or _text(row, "text_b") or _label(row, label_set, expected)


def _check_regression(row: dict, label_set, expected) -> str | None:
    problem = _text(row, "text_a") or _text(row, "text_b")
    if problem:
        return problem
    value = row.get("label")
    number = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        return _problem("label", value, "a finite number (NaN, inf and text are rejected)")
    row["label"] = number
    return None


def _check_tagging(row: dict, label_set, expected) -> str | None:
    tokens, tags = row.get("tokens"), row.get("tags")
    if not isinstance(tokens, list) or not tokens:
        return _problem("tokens", tokens, "a non-empty list of tokens")
    if not isinstance(tags, list) or len(tags) != len(tokens):
        n = len(tags) if isinstance(tags, list) else "no"
        return _problem("tags", tags, f"one tag per token: {len(tokens)} tokens but {n} tags")
    for i, (token, tag) in enumerate(zip(tokens, tags, strict=True)):
        if not isinstance(token, str) or not token.strip():
            return _problem(f"tokens[{i}]", token, f"non-empty text (token {i + 1} of the sentence)")
        if not isinstance(tag, str) or not tag or (label_set is not None and tag not in label_set):
            wanted = expected if label_set is not None else "a tag name"
            return _problem(f"tags[{i}]", tag, f"{wanted} (token {i + 1} of the sentence)")
    return None


def _check_qa(row: dict, label_set, expected) -> str | None:
    problem = _text(row, "id") or _text(row, "question") or _text(row, "context")
    if problem:
        return problem
    if not isinstance(row.get("title"), str):
        return _problem("title", row.get("title"), "text (may be empty)")
    context, answers = row["context"], row.get("answers")
    if not isinstance(answers, dict) or not isinstance(answers.get("text"), list) \
            or not isinstance(answers.get("answer_start"), list):
        return _problem("answers", answers, "{'text': [str, ...], 'answer_start': [int, ...]}")
    texts, starts = answers["text"], answers["answer_start"]
    if not texts or len(texts) != len(starts):
        return _problem("answers", answers, "at least one answer, as many answer_start as text")
    for i, (text, start) in enumerate(zip(texts, starts, strict=True)):
        if not isinstance(text, str) or not text:
            return _problem(f"answers.text[{i}]", text, "non-empty text")
        if not isinstance(start, int) or isinstance(start, bool) \
                or not 0 <= start <= len(context) - len(text):
            return _problem(f"answers.answer_start[{i}]", start,
                            f"a character offset in 0..{len(context) - len(text)} so the "
                            f"{len(text)}-character answer fits the {len(context)}-character context")
        found = context[start:start + len(text)]
        if found != text:
            return _problem(f"answers.text[{i}]", text,
                            f"the context's text at answer_start {start}, which is {show(found)}")
    return None


CHECKS: dict[str, Check] = {
    "single_classification": _check_single,
    "pair_classification": _check_pair,
    "pair_regression": _check_regression,
    "token_tagging": _check_tagging,
    "extractive_qa": _check_qa,
}


def validate_rows(
    rows: Iterable[dict], family: str, label_names: list[str] | None, drop_bad_rows: bool = False,
    labels_from_train: bool = False,
) -> tuple[list[dict], list[str]]:
    """Check every row of one split; return (good rows, one message per dropped row).

    `label_names`: the label set (tag set for tagging); None skips the membership check.
    `labels_from_train`: the set was inferred from the training split (the spec lists none), so a label
    outside it is one the training split lacks, and the message says so.
    Regression labels come back as floats. Raises DataError on the first bad row unless
    `drop_bad_rows`.
    """
    check = CHECKS[family]
    label_set = set(label_names) if label_names is not None else None
    expected = expected_one_of(label_names or [])
    if labels_from_train:
        expected += (", the labels found in the training split (a label it lacks cannot be learned: list every "
                     "label in the spec's `labels`, or fix the row)")
    good, dropped = [], []
    for row in rows:
        problem = check(row, label_set, expected)
        if problem is None:
            good.append(row)
            continue
        message = f"{row.get('_source', '<unknown source>')}: {problem}"
        if not drop_bad_rows:
            raise DataError(f"{message} (pass drop_bad_rows=True to skip bad rows and report them)")
        dropped.append(message)
    return good, dropped
