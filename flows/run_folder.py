"""Which folder a finetune flow run works in, so that an interrupted fine-tune resumes when run again.

`<run_root>/<task>/<start time>-<flow run name>`, with a `run.json` record (the parameters' hash, the
MLflow run id, the status) and a lock held while a flow works in it.

- A retry of the same flow run gets its own folder back (the same name).
- A new flow run with the same parameters as an unfinished earlier one (killed, crashed or failed:
  status not `finished`) takes over the newest such folder, so `fit` resumes from its checkpoints.
  Finished folders are never taken over: running the same parameters again trains a new model.
- The lock (`fcntl.flock` on `.lock`) keeps two flow runs out of one folder; the OS releases it when a
  process dies, so a killed run's folder is free at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from prefect.runtime import flow_run

from bert_core.home import runs_root
from bert_core.spec import TaskSpec
from flows.params import FinetuneParams

RECORD = "run.json"
FINISHED = "finished"


@dataclass
class RunFolder:
    path: Path
    record: dict
    taken_over: bool  # an earlier flow run's unfinished folder
    _lock: IO = field(repr=False)

    def update(self, **fields) -> None:
        """Merge `fields` into run.json, written atomically."""
        self.record.update(fields)
        tmp = self.path / (RECORD + ".tmp")
        tmp.write_text(json.dumps(self.record, indent=1), encoding="utf-8")
        os.replace(tmp, self.path / RECORD)


def params_key(params: FinetuneParams) -> str:
    return hashlib.sha256(params.model_dump_json().encode()).hexdigest()[:16]


@contextlib.contextmanager
def claim(params: FinetuneParams, spec: TaskSpec) -> Iterator[RunFolder]:
    """The folder this flow run works in, locked until the block ends."""
    root = runs_root(params.run_root)
    task_root = root / spec.name
    key = params_key(params)
    if flow_run.id:
        own = task_root / f"{flow_run.scheduled_start_time:%Y%m%d-%H%M%S}-{flow_run.name}"
    else:  # called as plain Python (`finetune.fn(...)`): no flow run to name the folder after
        own = task_root / datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    candidates = [own] if own.exists() else [*_unfinished(task_root, key), own]
    for path in candidates:
        path.mkdir(parents=True, exist_ok=True)
        lock = open(path / ".lock", "a")  # noqa: SIM115 - held for the whole flow run
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another flow run works there now
            lock.close()
            continue
        record = _read(path) or {"params_key": key}
        folder = RunFolder(path, record, taken_over=path != own, _lock=lock)
        try:
            yield folder
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()
        return
    raise RuntimeError(f"run folder {own} is locked by another flow run")


def _unfinished(task_root: Path, key: str) -> list[Path]:
    """Folders of earlier runs with these parameters that did not finish, newest first."""
    if not task_root.is_dir():
        return []
    found = [p for p in task_root.iterdir() if (r := _read(p)) and r.get("params_key") == key
             and r.get("status") != FINISHED]
    return sorted(found, key=lambda p: p.name, reverse=True)


def _read(path: Path) -> dict | None:
    try:
        return json.loads((path / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
