"""Row validation for canonical rows (docs/design.md), with errors a person can act on. Each family says
what a good row is (``Family.rows.validate_row``, worded with ``problem``); this module runs it over a split.

Every message names the row's origin (`_source`, e.g. "SST-2/train.tsv:17"), the canonical field,
the value (truncated) and what was expected. Bad data fails loudly by default: a silently dropped
row changes the dataset a metric is reported on. `drop_bad_rows=True` skips bad rows instead and
returns one message per dropped row so the caller can log how many and which.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# What a row-level refusal adds: how to skip such rows instead, in the flow's parameters and on the command line.
SKIP_BAD_ROWS_HINT = "(pass drop_bad_rows=True, or --drop-bad-rows on the command line, to skip bad rows and report them)"

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


def problem(field: str, value: Any, expected: str) -> str:
    """The wording of one bad value: "field 'x': got ..., expected ..."."""
    return f"field '{field}': got {show(value)}, expected {expected}"


def text_problem(row: dict, field: str) -> str | None:
    value = row.get(field)
    if not isinstance(value, str) or not value.strip():
        return problem(field, value, "non-empty text")
    return None


def label_problem(row: dict, label_set: set[str] | None, expected: str) -> str | None:
    value = row.get("label")
    if not isinstance(value, str) or not value:
        return problem("label", value, "a label name (string)")
    if label_set is not None and value not in label_set:
        return problem("label", value, expected)
    return None


def validate_rows(
    rows: Iterable[dict], family, label_names: list[str] | None, drop_bad_rows: bool = False,
    labels_from_train: bool = False,
) -> tuple[list[dict], list[str]]:
    """Check every row of one split with ``family.rows.validate_row``; return (good rows, one message per dropped row).

    `label_names`: the label set (tag set for tagging); None skips the membership check.
    `labels_from_train`: the set was inferred from the training split (the spec lists none), so a label
    outside it is one the training split lacks, and the message says so.
    Regression labels come back as floats. Raises DataError on the first bad row unless
    `drop_bad_rows`.
    """
    label_set = set(label_names) if label_names is not None else None
    expected = expected_one_of(label_names or [])
    if labels_from_train:
        expected += (", the labels found in the training split (a label it lacks cannot be learned: list every "
                     "label in the spec's `labels`, or fix the row)")
    good, dropped = [], []
    for row in rows:
        found = family.rows.validate_row(row, label_set, expected)
        if found is None:
            good.append(row)
            continue
        message = f"{row.get('_source', '<unknown source>')}: {found}"
        if not drop_bad_rows:
            raise DataError(f"{message} {SKIP_BAD_ROWS_HINT}")
        dropped.append(message)
    return good, dropped
