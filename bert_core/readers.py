"""Readers for local data files: one function per format, each returning canonical rows (docs/design.md)
with the `_source` of every row (`file:line`, `file:[i]`, `file:row i`, or a JSON path), so that
validation errors point at the exact spot.

GLUE TSVs are read with no quoting at all: their sentences hold unbalanced `"` characters.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from typing import Any

from bert_core.spec import TaskSpec
from bert_core.validation import SKIP_BAD_ROWS_HINT, DataError, show

# The csv module refuses a field over 131,072 characters by default, which would fail a whole file over one long
# document (a spec's long_text reads them; a served model takes up to 1,000,000 characters). Ten times that
# bound: a longer field is a rejected row in scoring, and only a broken file (an unclosed quote) fails the read.
CSV_FIELD_CHARS = 10_000_000
csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_CHARS))


class Problems:
    """A structural problem in a file (wrong field count, broken JSON line): raise, or record and skip."""

    def __init__(self, drop: bool, dropped: list[str]):
        self.drop, self.dropped = drop, dropped

    def report(self, message: str) -> None:
        if not self.drop:
            raise DataError(f"{message} {SKIP_BAD_ROWS_HINT}")
        self.dropped.append(message)


def _decode(rel: str, data: bytes, encoding: str) -> str:
    try:
        return data.decode(encoding)
    except LookupError:
        raise DataError(f"{rel}: local.encoding {encoding!r} is not a known text encoding") from None
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - data.rfind(b"\n", 0, e.start)
        raise DataError(f"{rel}:{line}: bytes {data[e.start:e.end]!r} at byte offset {e.start} (column "
                        f"{column}) are not valid {encoding} ({e.reason}); set local.encoding if the "
                        f"file uses another encoding") from None


def _parse_json(rel: str, text: str, line_offset: int = 0) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{rel}:{e.lineno + line_offset}: broken JSON at line {e.lineno + line_offset}, "
                        f"column {e.colno}: {e.msg}") from None


def _read_table(spec: TaskSpec, rel: str, data: bytes, problems: Problems) -> list[dict]:
    local = spec.local
    delimiter = local.delimiter or ("\t" if local.format == "tsv" else ",")
    quoting = local.quoting or ("none" if local.format == "tsv" else "csv")
    reader = csv.reader(io.StringIO(_decode(rel, data, local.encoding), newline=""), delimiter=delimiter,
                        quoting=csv.QUOTE_NONE if quoting == "none" else csv.QUOTE_MINIMAL)
    records = _records(reader, rel)
    names = local.column_names
    if local.header:
        first = next(records, None)
        if first is None:
            raise DataError(f"{rel}: the file is empty; expected a header line (local.header: true)")
        names = names or first[1]
    index = _column_index(spec, rel, names)
    width = len(names) if names else max(index.values()) + 1
    rows = []
    for line, fields in records:
        if len(fields) != width and (names or len(fields) < width):
            problems.report(f"{rel}:{line}: found {len(fields)} field(s) when split on {delimiter!r}, expected "
                            f"{width}{f' {names}' if names else ''}: wrong delimiter, or a delimiter "
                            f"inside an unquoted field? Line starts {show(delimiter.join(fields))}")
            continue
        row = {canonical: fields[i] for canonical, i in index.items()}
        row["_source"] = f"{rel}:{line}"
        rows.append(row)
    return rows


def _records(reader, rel: str):
    """(first line number, fields) per record; the csv module counts physical lines for us."""
    last = 0
    try:
        for fields in reader:
            start, last = last + 1, reader.line_num
            if fields:  # csv yields [] for a blank line
                yield start, fields
    except csv.Error as e:
        raise DataError(f"{rel}:{reader.line_num}: cannot split the line: {e}") from None


def _column_index(spec: TaskSpec, rel: str, names: list[str] | None) -> dict[str, int]:
    index = {}
    for canonical, column in spec.column_map("local").items():
        if isinstance(column, int):
            index[canonical] = column
        elif names is not None and column in names:
            index[canonical] = names.index(column)
        elif names is None:
            raise DataError(f"{rel}: columns.{canonical} names column {column!r} but the file has no header "
                            f"(local.header: false): set local.column_names or give a 0-based index")
        else:
            bom = " The file starts with a UTF-8 byte-order mark: set local.encoding: utf-8-sig." \
                if names and names[0].startswith("\ufeff") else ""
            raise DataError(f"{rel}:1: column {column!r} (spec field columns.{canonical}) not found; "
                            f"the header has {names}.{bom}")
    return index


def _record_rows(spec: TaskSpec, records: list[tuple[str, Any]], rel: str, problems: Problems) -> list[dict]:
    """Rows from keyed records (json, jsonl, parquet): canonical field <- record[column]."""
    columns, rows = spec.column_map("local"), []
    for source, record in records:
        if not isinstance(record, dict):
            problems.report(f"{source}: expected a record (JSON object), got {show(record)}")
            continue
        missing = [f"{c!r} (columns.{f})" for f, c in columns.items() if c not in record]
        if missing:
            problems.report(f"{source}: column(s) {', '.join(missing)} not found; the record has {list(record)}")
            continue
        rows.append({f: record[c] for f, c in columns.items()} | {"_source": source})
    return rows


def _read_json(spec: TaskSpec, rel: str, data: bytes, problems: Problems) -> list[dict]:
    records = _parse_json(rel, _decode(rel, data, spec.local.encoding))
    if not isinstance(records, list):
        raise DataError(f"{rel}: expected a JSON list of records at the top level, got {type(records).__name__}")
    return _record_rows(spec, [(f"{rel}:[{i}]", r) for i, r in enumerate(records)], rel, problems)


def _read_jsonl(spec: TaskSpec, rel: str, data: bytes, problems: Problems) -> list[dict]:
    records = []
    for n, line in enumerate(_decode(rel, data, spec.local.encoding).split("\n"), start=1):
        if line.strip():
            try:
                records.append((f"{rel}:{n}", _parse_json(rel, line, line_offset=n - 1)))
            except DataError as e:
                problems.report(str(e))
    return _record_rows(spec, records, rel, problems)


def _read_parquet(spec: TaskSpec, rel: str, data: bytes, problems: Problems) -> list[dict]:
    import pyarrow.parquet as pq  # a datasets dependency; imported here as only parquet needs it

    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(f"{rel}: not a readable parquet file: {e}") from None
    return _record_rows(spec, [(f"{rel}:row {i}", r) for i, r in enumerate(table.to_pylist())], rel, problems)


def _read_conll(spec: TaskSpec, rel: str, data: bytes, problems: Problems) -> list[dict]:
    """One row per sentence: a token per line, blank lines between sentences, -DOCSTART- skipped."""
    columns = spec.column_map("local")
    word, tag = columns["tokens"], columns["tags"]
    rows, tokens, tags, start, bad = [], [], [], 0, False

    def end_sentence():
        if tokens and not bad:
            rows.append({"tokens": list(tokens), "tags": list(tags), "_source": f"{rel}:{start}"})
        tokens.clear()
        tags.clear()

    for n, line in enumerate(_decode(rel, data, spec.local.encoding).split("\n"), start=1):
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            end_sentence()
            bad = False
            continue
        if not tokens:
            start = n
        if len(parts) <= max(word, tag):
            problems.report(f"{rel}:{n}: found {len(parts)} space-separated column(s) in {show(line)}, expected "
                            f"at least {max(word, tag) + 1} (columns.tokens={word}, columns.tags={tag})")
            bad = True  # drop the whole sentence: a sentence missing a token is not the same sentence
            continue
        tokens.append(parts[word])
        tags.append(parts[tag])
    end_sentence()
    return rows


def _read_squad(spec: TaskSpec, rel: str, data: bytes, problems: Problems) -> list[dict]:
    """One row per question of the official SQuAD JSON (v1.1 or 2.0); `_source` is its JSON path.

    SQuAD 2.0's unanswerable questions (`is_impossible: true`, `answers: []`) become rows with no answers, which
    only a family that allows them accepts (the others refuse the row, naming this path); `is_impossible` must
    agree with `answers`, and `plausible_answers` (not gold) are left out."""
    doc = _parse_json(rel, _decode(rel, data, spec.local.encoding))
    articles = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(articles, list):
        raise DataError(f"{rel}: expected the SQuAD layout {{'data': [{{'title': ..., 'paragraphs': [...]}}]}}")
    rows = []
    for i, article in enumerate(articles):
        for j, paragraph in enumerate(_items(article, "paragraphs", f"{rel}:data[{i}]", problems)):
            where = f"{rel}:data[{i}].paragraphs[{j}]"
            for k, qa in enumerate(_items(paragraph, "qas", where, problems)):
                answers = qa.get("answers") if isinstance(qa, dict) else None
                if not isinstance(answers, list) or not all(isinstance(a, dict) for a in answers):
                    problems.report(f"{where}.qas[{k}]: field 'answers': got {show(answers)}, "
                                    "expected a list of {'text': ..., 'answer_start': ...}")
                    continue
                mismatch = _impossible_mismatch(qa.get("is_impossible"), answers)
                if mismatch:
                    problems.report(f"{where}.qas[{k}]: {mismatch}")
                    continue
                rows.append({"id": qa.get("id"), "title": article.get("title"), "question": qa.get("question"),
                             "context": paragraph.get("context"),
                             "answers": {"text": [a.get("text") for a in answers],
                                         "answer_start": [a.get("answer_start") for a in answers]},
                             "_source": f"{where}.qas[{k}]"})
    return rows


def _impossible_mismatch(impossible: Any, answers: list) -> str | None:
    """SQuAD 2.0's `is_impossible` (absent in v1.1) against the question's answers, or None when they agree."""
    if impossible is None:
        return None
    if not isinstance(impossible, bool):
        return f"field 'is_impossible': got {show(impossible)}, expected true or false"
    if impossible and answers:
        return (f"field 'answers': got {show(answers)}, expected [] for a question with is_impossible: true "
                "(SQuAD 2.0 keeps its candidate answers in 'plausible_answers')")
    if not impossible and not answers:
        return "field 'answers': got [], expected at least one answer for a question with is_impossible: false"
    return None


def _items(parent: Any, key: str, where: str, problems: Problems) -> list:
    items = parent.get(key) if isinstance(parent, dict) else None
    if not isinstance(items, list):
        problems.report(f"{where}: field '{key}': got {show(items)}, expected a list")
        return []
    return items


READERS: dict[str, Callable[[TaskSpec, str, bytes, Problems], list[dict]]] = {
    "tsv": _read_table, "csv": _read_table, "json": _read_json, "jsonl": _read_jsonl,
    "parquet": _read_parquet, "conll": _read_conll, "squad": _read_squad,
}
