"""What a served bertflow model takes, checked in one place: for `bertflow predict` and `bertflow serve` (the
pyfunc's ``frame_to_rows``) and for `bertflow score` (``tracking.request_file``).

Columns. A model reads its family's request fields (``Family.rows.request``: ``text_a``/``text_b``, ``tokens``,
``question``/``context``). Each field comes in a column of one of several names, preferred first: the family's
own (``text`` or ``text_a``, ...), then the names the model's training spec read it from (the model meta's
``spec_columns``: SST-2's ``sentence``), so requests and files in the spec's own format need no mapping.

    request_columns(get_family("single_classification"), {"text_a": ["sentence"], "label": ["label"]})
    -> {"text_a": ("text", "text_a", "sentence")}

Values. A text is non-empty text; ``tokens`` are a non-empty list of non-empty words, or a text split on
whitespace; either is at most the model's ``TextLimit`` of characters (words counted with a space each):
``MAX_TEXT_CHARS``, or ``MAX_LONG_TEXT_CHARS`` for a model that reads long texts in windows (its meta's task
setting ``long_text``); ``text_limit`` says which, and how a model of a text family could take more. ``check_value``
returns the value as the model takes it or raises ``BadValue``, which words the problem for each place that
reports it: a served request's HTTP 400 (``request_error``) and a scoring file's rejected row (``file_error``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from bert_core.families import Family
from bert_core.validation import problem

MAX_TEXT_CHARS = 20_000  # ~4k words: far beyond any task here, small enough to bound one request's work
# With long_text a model reads a long document, so the bound is a document's, not a window's: 1,000,000 characters
# (~200k word pieces, a long book). It is still a bound, against abuse: tokenizing that many characters takes a few
# seconds, and the model reads at most text_encoding.MAX_WINDOWS windows of a text, whatever its length.
MAX_LONG_TEXT_CHARS = 1_000_000
# What the refusal of a long text says to a model of a family that could read it in windows.
WINDOWS_HINT = ("fine-tune with `long_text: {stride: 64}` in the task spec to read longer texts in overlapping "
                "windows")
WORDS = "a non-empty list of words, or a text to split on spaces"


@dataclasses.dataclass(frozen=True)
class TextLimit:
    """The most characters a model takes in one text (words of ``tokens`` counted with a space each), and what the
    refusal adds: how to take more, when a spec could ("" otherwise)."""

    chars: int
    hint: str = ""


DEFAULT_LIMIT = TextLimit(MAX_TEXT_CHARS)


def text_limit(family: Family, settings: dict) -> TextLimit:
    """A model's ``TextLimit`` from its family and the task settings of its meta (``long_text``: read in windows)."""
    if settings.get("long_text"):
        return TextLimit(MAX_LONG_TEXT_CHARS)
    return TextLimit(MAX_TEXT_CHARS, WINDOWS_HINT if "long_text" in family.rows.spec_fields else "")


def request_columns(family: Family, spec_columns: dict[str, list[str]] | None = None) -> dict[str, tuple[str, ...]]:
    """Request field -> the column names that may carry it, preferred first: the family's, then the spec's
    (``spec_columns``: canonical field -> the spec's column names, as a model's meta keeps them). A spec name
    that is another field's own name is left out: a request naming it means that field."""
    request = family.rows.request
    own = {name for names in request.values() for name in names}
    spec_columns = spec_columns or {}
    return {field: tuple(dict.fromkeys([*names, *(n for n in spec_columns.get(field, ()) if n not in own)]))
            for field, names in request.items()}


@dataclasses.dataclass
class BadValue(ValueError):
    """A value the model cannot take: which column, what was there, and what it takes instead."""

    column: str  # the column holding it
    value: Any  # what was there (for one bad word of ``tokens``: the word)
    expected: str  # what the model takes, as a scoring file's rejected row says it ("non-empty text")
    said: str  # the same, as a served request's error says it ("the text is empty")
    part: str = ""  # which part of the value is at fault: "[1]" for the second word

    def __str__(self) -> str:
        return self.file_error()

    def file_error(self) -> str:
        """A rejected row's error: "field 'review': got '', expected non-empty text"."""
        return problem(self.column + self.part, self.value, self.expected)

    def request_error(self, row: int) -> str:
        """A served request's error, ``row`` 0-based: "row 0, column 'text': the text is empty"."""
        return f"row {row}, column {self.column!r}: {self.said}"


def check_value(field: str, value: Any, column: str, limit: TextLimit | None = DEFAULT_LIMIT) -> str | list[str]:
    """``value`` of request ``field`` (read from ``column``) as the model takes it: a text, or for ``tokens`` a
    list of words (a text is split on whitespace). Raises ``BadValue``; ``limit`` None: no length limit."""
    taken = _words(value, column) if field == "tokens" else _text(value, column, "non-empty text")
    size = sum(len(w) + 1 for w in taken) if field == "tokens" else len(taken)
    if limit is not None and size > limit.chars:
        hint = f"; {limit.hint}" if limit.hint else ""
        raise BadValue(column, value, f"at most {limit.chars:,} characters, the model's limit (this one has {size:,})"
                       + hint, f"{size:,} characters; the limit is {limit.chars:,}" + hint)
    return taken


def _text(value: Any, column: str, expected: str) -> str:
    if not isinstance(value, str):
        raise BadValue(column, value, expected, f"expected a string, got {shown(value)}")
    if not value.strip():
        raise BadValue(column, value, expected, "the text is empty")
    return value


def _words(value: Any, column: str) -> list[str]:
    if isinstance(value, str):
        return _text(value, column, WORDS).split()
    if not isinstance(value, list | tuple | np.ndarray) or len(value) == 0:
        raise BadValue(column, value, WORDS, f"expected a non-empty list of words, got {shown(value)}")
    for k, word in enumerate(value):
        if not isinstance(word, str) or not word.strip():
            raise BadValue(column, word, f"a non-empty word (word {k + 1} of the row)",
                           f"word {k} is {shown(word)}; expected a non-empty string", part=f"[{k}]")
    return list(value)


def is_missing(value: Any) -> bool:
    """A gap: pandas fills a request's missing cells with None or NaN."""
    return value is None or (isinstance(value, float) and np.isnan(value))


def shown(value: Any) -> str:
    """A value in a served request's error: its repr (cut to 60 characters) and type."""
    if is_missing(value):
        return "a missing value"
    text = repr(value)
    return f"{text[:60]}... ({type(value).__name__})" if len(text) > 60 else f"{text} ({type(value).__name__})"
