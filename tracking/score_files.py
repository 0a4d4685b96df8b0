"""The files of batch scoring, next to each input: their names, their lines, and which files of a folder are
inputs still to look at.

    reviews.csv -> reviews.predictions.bert-sst2-v3.jsonl   one line per input row, in input order
                   reviews.rejected.bert-sst2-v3.jsonl      one line per row that was not scored (only when some were not)

A scored row's line is ``{"row": 1, "source": "reviews.csv:2", "id": "r-1", <the model's response columns>}``
(``id`` only when the input names its rows); a rejected row's line is ``{"row": 3, "source": "reviews.csv:4",
"error": "field 'review': got '', expected non-empty text", "field": "review"}``. The rejected file's lines
add the input's path as ``file``. Files are written whole or not at all (a temporary file renamed), so a
predictions file that exists is complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from pathlib import Path

import numpy as np

from tracking.request_file import RequestFile

PREDICTIONS, REJECTED = "predictions", "rejected"
_OUTPUT = re.compile(rf".+\.({PREDICTIONS}|{REJECTED})\..+\.jsonl(\.tmp)?")
LINE_KEYS = ("row", "source", "id", "error", "field")  # response columns may not take these names


def output_paths(input_path: str | Path, label: str) -> tuple[Path, Path]:
    """(predictions file, rejected file) of ``input_path`` scored by the model ``label`` (e.g. bert-sst2-v3)."""
    path = Path(input_path)
    return (path.with_name(f"{path.stem}.{PREDICTIONS}.{label}.jsonl"),
            path.with_name(f"{path.stem}.{REJECTED}.{label}.jsonl"))


def is_output(path: str | Path) -> bool:
    """Whether a file is one that scoring wrote (never an input, whatever the folder's pattern)."""
    return bool(_OUTPUT.fullmatch(Path(path).name))


def prediction_lines(requests: RequestFile, responses: list[dict]) -> list[dict]:
    """One line per input row in input order: ``responses[i]`` belongs to ``requests.rows[i]``, and each
    rejected row gets its error instead."""
    if len(responses) != len(requests.rows):
        raise ValueError(f"{len(responses)} predictions for {len(requests.rows)} rows")
    clash = sorted(set(responses[0]) & set(LINE_KEYS)) if responses else []
    if clash:
        raise ValueError(f"the model's response columns {clash} clash with the predictions file's own keys")
    lines = [(r.row, {"row": r.row, "source": r.source, **({"id": r.id} if r.id is not None else {}), **response})
             for r, response in zip(requests.rows, responses, strict=True)]
    lines += [(r.row, {"row": r.row, "source": r.source, **({"id": r.id} if r.id is not None else {}),
                       "error": r.error, "field": r.field}) for r in requests.rejected]
    return [line for _, line in sorted(lines, key=lambda item: item[0])]


def rejected_lines(requests: RequestFile) -> list[dict]:
    return [{"file": requests.path, "row": r.row, "source": r.source, "field": r.field, "error": r.error,
             **({"id": r.id} if r.id is not None else {})} for r in requests.rejected]


def write_jsonl(path: Path, lines: list[dict]) -> Path:
    """Write the lines as JSON lines through a temporary file, so the file appears complete or not at all."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False, default=_plain) + "\n")
    os.replace(tmp, path)
    return path


def _plain(value):
    """numpy values (from the model's DataFrame) as JSON values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


@dataclasses.dataclass
class FolderScan:
    inputs: list[str]  # files matching the pattern, scoring's own files left out, oldest name first
    settling: list[str]  # modified in the last settle_seconds: maybe still being written, left for later
    conflicts: list[str]  # inputs sharing a stem (a.csv, a.jsonl): they would write one predictions file


def scan_folder(folder: str | Path, pattern: str, settle_seconds: float = 0) -> FolderScan:
    """The files of ``folder`` matching ``pattern`` (a glob, relative to the folder) that are inputs."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder {folder} does not exist (or is not a folder): create it, or point "
                                "`folder` at the one new files arrive in")
    found = sorted(p for p in folder.glob(pattern) if p.is_file() and not is_output(p))
    now = time.time()
    settling = [p for p in found if now - p.stat().st_mtime < settle_seconds]
    stems: dict[tuple[Path, str], list[Path]] = {}
    for path in found:
        stems.setdefault((path.parent, path.stem), []).append(path)
    conflicts = [p for group in stems.values() if len(group) > 1 for p in group]
    inputs = [p for p in found if p not in settling and p not in conflicts]
    return FolderScan([str(p) for p in inputs], [str(p) for p in settling], [str(p) for p in conflicts])
