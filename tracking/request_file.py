"""A file of requests for a served model -> the rows it can score, in file order, and the ones it cannot.

    read_requests("reviews.csv", get_family(meta["family"]), columns={"text": "review"})
    -> RequestFile(rows=[RequestRow(row=1, source="reviews.csv:2", fields={"text_a": ...}, id=None), ...],
                   rejected=[Rejection(row=3, source="reviews.csv:4", field="review",
                                       error="field 'review': got '', expected non-empty text")], ...)

The fields are the model's request fields (``Family.rows.request``: ``text_a``/``text_b``, ``tokens``,
``question``/``context``). A file's column feeds a field when ``columns`` maps it (keys: a request column name,
such as ``text`` or ``text_pair``, or the field's own name; ``id`` names an id column), else when it is named
like one of the field's request columns, else like a column the model's training spec read the field from
(``spec_columns``: SST-2's ``sentence``); the first present wins (``tracking.request_check.request_columns``).
``tokens`` take a list of words or a text, split on whitespace (so a CSV column of sentences feeds a tagger).

Formats (``fmt``, else from the extension): tsv (GLUE style: no quoting), csv, json (a list of records; a
``.json`` file holding one object is read as SQuAD), jsonl, parquet, conll (a word per line, blank lines
between sentences; the words' column is ``tokens``, default 0), squad (the official layout; questions
without ``answers`` are fine). The format readers are ``bert_core.readers``, the ones training uses, and
text is decoded as UTF-8 with an optional byte-order mark.

Bad rows never stop the others: a record the reader cannot use (a wrong field count, a broken JSON line,
a missing column) or a value the model cannot take (``tracking.request_check.check_value``: empty or non-text,
longer than the model's ``limit``) becomes a ``Rejection`` naming the row, its source (``file:line``, ``file:[i]``,
``file:row i`` or a SQuAD JSON path), the field and what was expected. What makes the whole file unusable (unknown format, undecodable
bytes, no column for a field) raises ``DataError``.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any

from bert_core.families import Family
from bert_core.readers import READERS, Problems
from bert_core.validation import DataError
from tracking.request_check import BadValue, TextLimit, check_value, request_columns

FORMATS = tuple(READERS)
SUFFIXES = {".tsv": "tsv", ".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl",
            ".parquet": "parquet", ".pq": "parquet", ".conll": "conll"}
# Formats whose rows come with fields of their own rather than the file's column names.
FIXED_FIELDS = {"conll": ("tokens",), "squad": ("id", "question", "context")}
ID = "id"  # an optional column naming each row, carried to its prediction
ENCODING = "utf-8-sig"  # UTF-8; a leading byte-order mark (MRPC's files have one) is dropped


@dataclasses.dataclass
class RequestRow:
    row: int  # 1-based position among the file's rows, good and rejected
    source: str  # where it is: "reviews.csv:2", "q.json:[3]", "x.parquet:row 0", "dev.json:data[0].paragraphs[1].qas[2]"
    fields: dict[str, Any]  # request field -> value (tokens: a list of words)
    id: str | None = None


@dataclasses.dataclass
class Rejection:
    row: int
    source: str
    field: str | None  # the file's column (or field) at fault; None when the record as a whole is broken
    error: str  # what was found and what was expected
    id: str | None = None


@dataclasses.dataclass
class RequestFile:
    path: str
    format: str
    sha256: str  # of the file's bytes
    columns: dict[str, str | int]  # request field (and `id`) -> the file's column read for it
    rows: list[RequestRow]
    rejected: list[Rejection]

    @property
    def total(self) -> int:
        return len(self.rows) + len(self.rejected)


@dataclasses.dataclass
class _Local:
    """The `local` settings ``bert_core.readers`` take from a TaskSpec."""

    format: str
    delimiter: str | None = None
    quoting: str | None = None
    header: bool = True
    column_names: list[str] | None = None
    encoding: str = ENCODING


@dataclasses.dataclass
class _ReadAs:
    """What ``bert_core.readers`` use of a TaskSpec: its ``local`` settings and its column map."""

    local: _Local
    columns: dict[str, str | int]

    def column_map(self, source: str) -> dict[str, str | int]:
        return self.columns


def detect_format(path: str | Path, data: bytes | None = None) -> str:
    """The format of a file from its extension; a ``.json`` holding an object (not a list) is SQuAD."""
    path = Path(path)
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: cannot tell the format from the extension {path.suffix or '(none)'!r}; known: "
                        f"{', '.join(sorted(SUFFIXES))}; give the format (--format), one of {list(FORMATS)}")
    if fmt == "json" and data is not None and data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"{":
        return "squad"
    return fmt


def read_requests(path: str | Path, family: Family, columns: dict[str, str] | None = None, fmt: str | None = None,
                  limit: TextLimit | None = None, spec_columns: dict[str, list[str]] | None = None) -> RequestFile:
    """Read ``path`` into the request rows of a ``family`` model and the rejected rows, in file order.

    ``columns``: request column (or field, or ``id``) -> the file's column; ``fmt``: one of ``FORMATS``
    (default: from the extension); ``limit``: the longest text (words of ``tokens`` counted with a
    space each) the model takes (None: any); ``spec_columns``: the model's training spec's column names (its meta's).
    Raises ``DataError`` when the file as a whole cannot be read."""
    path = Path(path)
    data = path.read_bytes()
    fmt = fmt or detect_format(path, data)
    if fmt not in FORMATS:
        raise DataError(f"{path}: unknown format {fmt!r}; expected one of {list(FORMATS)}")
    rel = path.name
    request = request_columns(family, spec_columns)
    mapped = _file_columns(path, request, fmt, data, dict(columns or {}))
    local = _Local(fmt)
    if fmt in ("tsv", "csv"):  # GLUE's TSVs are not quoted; CSV is
        local.delimiter, local.quoting = ("\t", "none") if fmt == "tsv" else (",", "csv")
    read_as = _ReadAs(local, {"tokens": mapped["tokens"], "tags": mapped["tokens"]} if fmt == "conll" else mapped)
    dropped: list[str] = []
    records = READERS[fmt](read_as, rel, _with_empty_answers(data) if fmt == "squad" else data,
                           Problems(True, dropped))

    found: list[tuple[tuple[int, ...], RequestRow | Rejection]] = []
    for record in records:
        source, row_id = record["_source"], _id(record.get(ID))
        try:
            fields = {field: check_value(field, record.get(field), column if isinstance(column, str) else field,
                                         limit) for field, column in mapped.items() if field != ID}
        except BadValue as bad:
            found.append((_position(source, rel), Rejection(0, source, bad.column, bad.file_error(), row_id)))
            continue
        found.append((_position(source, rel), RequestRow(0, source, fields, row_id)))
    for message in dropped:  # records the reader could not use, told as "<rel>:<where>: <what is wrong>"
        where, _, error = message.removeprefix(f"{rel}:").partition(": ")
        named = re.search(r"field '([^']+)'|column\(s\) '([^']+)'", error)
        field = next((g for g in named.groups() if g), None) if named else None
        found.append((_position(f"{rel}:{where}", rel), Rejection(0, f"{rel}:{where}", field, error)))
    found.sort(key=lambda item: item[0])
    for n, (_, item) in enumerate(found, start=1):
        item.row = n
    return RequestFile(str(path), fmt, hashlib.sha256(data).hexdigest(), mapped,
                       [r for _, r in found if isinstance(r, RequestRow)],
                       [r for _, r in found if isinstance(r, Rejection)])


def _file_columns(path: Path, request: dict[str, tuple[str, ...]], fmt: str, data: bytes,
                  columns: dict[str, str]) -> dict[str, str | int]:
    """Request field (and ``id`` when there is one) -> the file's column that holds it. ``request``: field ->
    the column names that may hold it, preferred first (``request_columns``)."""
    accepted = {name: field for field, names in request.items() for name in (field, *names)}
    wanted = " and ".join(" or ".join(repr(n) for n in names) for names in request.values())
    unknown = sorted(set(columns) - set(accepted) - {ID})
    if unknown:
        raise DataError(f"column mapping {', '.join(f'{k}={columns[k]}' for k in unknown)}: the model reads "
                        f"{wanted} (and an optional {ID!r}); map those names to the file's columns")
    if fmt in FIXED_FIELDS:
        return _fixed_columns(path, fmt, request, wanted, columns)
    present, everywhere = _column_names(fmt, data)
    chosen: dict[str, str | int] = {}
    for field, names in request.items():
        given = [columns[k] for k in (field, *names) if k in columns]
        name = given[0] if given else next((n for n in (*names, field) if n in present), None)
        if name is None and present:
            raise DataError(f"{path}: no column for {names[0]!r}: the model reads {wanted}, and the file has "
                            f"{present}; say which column holds it with --column {names[0]}=COLUMN (the flow's "
                            f"`columns`)")
        chosen[field] = name or names[0]  # no names at all (an empty file): the reader says what is wrong
    if ID in columns or ID in everywhere:  # an id found in only some records is not worth rejecting the rest
        chosen[ID] = columns.get(ID, ID)
    missing = [c for c in chosen.values() if present and c not in present]
    if missing:
        where = "the header has" if fmt in ("tsv", "csv") else "its records have"
        raise DataError(f"{path}: column(s) {missing} not found; {where} {present}")
    return chosen


def _fixed_columns(path: Path, fmt: str, request: dict, wanted: str, columns: dict[str, str]) -> dict[str, str | int]:
    """conll and squad rows have their own fields: which the model reads, and (conll) where the words are."""
    fixed = FIXED_FIELDS[fmt]
    if not set(request) <= set(fixed):
        raise DataError(f"{path}: a {fmt} file holds {list(fixed)}; this model reads {wanted}: use a table or "
                        f"JSON file with those columns")
    if fmt == "squad":
        if columns:
            raise DataError(f"{path}: a SQuAD file has fixed fields; drop the column mapping {columns}")
        return {"question": "question", "context": "context", ID: ID}
    if ID in columns:
        raise DataError(f"{path}: a conll file has no id column; drop {ID}={columns[ID]}")
    given = str(next(iter(columns.values()), "0"))
    if not given.isdigit():
        raise DataError(f"{path}: a conll file's columns are numbered from 0 (the words are usually column 0); "
                        f"got {next(iter(columns))}={given!r}")
    return {"tokens": int(given)}


def _column_names(fmt: str, data: bytes) -> tuple[list[str], set[str]]:
    """(the columns any row has, in first-seen order; those every row has): a table's header, or the keys
    of records."""
    text = data.decode(ENCODING, errors="replace")
    if fmt in ("tsv", "csv"):
        quoting = csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if fmt == "tsv" else ",", quoting=quoting)
        try:
            header = next((fields for fields in reader if fields), [])
        except csv.Error:
            header = []  # the reader says what is wrong with the line
        return header, set(header)
    if fmt == "parquet":
        import pyarrow.parquet as pq  # a datasets dependency; only parquet needs it

        try:
            names = list(pq.read_schema(io.BytesIO(data)).names)
        except Exception:  # noqa: BLE001 (a damaged file: the reader names the problem)
            names = []
        return names, set(names)
    records: list = []
    if fmt == "json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError:
            records = []  # the reader says where
        records = records if isinstance(records, list) else []
    else:  # jsonl
        for line in text.split("\n"):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # blank or broken: the reader rejects the broken ones
    records = [r for r in records if isinstance(r, dict)]
    names = list(dict.fromkeys(k for r in records for k in r))
    return names, set.intersection(*(set(r) for r in records)) if records else set()


def _with_empty_answers(data: bytes) -> bytes:
    """SQuAD JSON with ``answers: []`` where a question has none: the squad reader checks gold answers,
    which a file to score need not hold. Broken JSON is left to the reader to report."""
    try:
        doc = json.loads(data.decode(ENCODING))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return data
    for article in doc.get("data", []) if isinstance(doc, dict) and isinstance(doc.get("data"), list) else []:
        for paragraph in article.get("paragraphs", []) if isinstance(article, dict) else []:
            for qa in paragraph.get("qas", []) if isinstance(paragraph, dict) else []:
                if isinstance(qa, dict) and "answers" not in qa:
                    qa["answers"] = []
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")


def _id(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and value != value) or value == "":
        return None
    return str(value)


def _position(source: str, rel: str) -> tuple[int, ...]:
    """A sort key in file order from a source: the numbers after the file name (line, [i], row i, JSON path)."""
    numbers = tuple(int(n) for n in re.findall(r"\d+", source.removeprefix(f"{rel}:")))
    return numbers or (1 << 62,)
