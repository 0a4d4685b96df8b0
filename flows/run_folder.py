"""Run folders: where a finetune flow run works, which earlier folder it resumes, and what `bertflow runs` lists.

A run folder is `<run_root>/<task>/<start time>-<flow run name>`, with a `run.json` record and a `.lock`
that a flow run holds (`fcntl.flock`) while it works there; the OS releases it when the process dies.

`run.json` status: `running` while a flow works there, then `finished` or `failed` (with `error`). A folder
left `running` with its lock free was interrupted (killed, crashed, machine lost).

What makes an unfinished folder resumable (docs/reliability.md, "Resuming"):
- `resume_identity`: the task spec's content, the pretrained checkpoint, the training recipe (the
  TrainConfig with the spec's defaults, less the fields that may change between an interruption and its
  resumption), the resolved data root and `drop_bad_rows`. A new flow run takes over the newest
  interrupted or failed folder with the same identity, so `fit` resumes from its checkpoints; otherwise
  it starts a new folder. Finished folders are never taken over.
- After taking over, the flow compares the data fingerprint and the code version with the record's: if
  either changed, the old checkpoints are set aside (`set_aside`), not deleted, and training starts over.
- The tracking store, the run root and the registry policy are not part of it: a folder whose MLflow run
  is in another store (or was deleted) is still taken over, with a warning.
- A retry of the same flow run always gets its own folder back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from prefect.runtime import flow_run

from bert_core.checkpoint import OFFLINE_DEFAULT
from bert_core.home import runs_root
from bert_core.loading import ENV_DATA_DIR
from bert_core.spec import TaskSpec
from bert_core.training import TrainConfig
from bert_core.training.recipe import RESUME_INDIFFERENT
from flows.params import FinetuneParams

RECORD = "run.json"
LOCK = ".lock"
RUNNING, FINISHED, FAILED, INTERRUPTED = "running", "finished", "failed", "interrupted"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclasses.dataclass
class RunFolder:
    path: Path
    record: dict
    taken_over: bool  # an earlier flow run's unfinished folder
    _lock: IO = dataclasses.field(repr=False)

    def update(self, **fields) -> None:
        """Merge `fields` into run.json, written atomically."""
        self.record.update(fields)
        _write(self.path, self.record)

    def keep_only_results(self) -> None:
        """After a successful run: delete the resumable checkpoints, the best model's copy (the model is in
        MLflow) and set-aside training output; keep the data, the evaluation and the records."""
        removed = [p for p in (self.path / "training" / "checkpoints", self.path / "training" / "best",
                               *self.path.glob("training.stale-*")) if p.exists()]
        for path in removed:
            shutil.rmtree(path)
        self.update(removed_after_success=[str(p.relative_to(self.path)) for p in removed])

    def set_aside(self, why: str) -> Path | None:
        """Move the old training output (checkpoints, best model) to `training.stale-<time>` so training
        starts over here; returns where it went, None if there was none."""
        training = self.path / "training"
        if not training.exists():
            return None
        stale = self.path / f"training.stale-{datetime.now(UTC):%Y%m%d-%H%M%S}"
        training.rename(stale)
        self.update(set_aside=[*self.record.get("set_aside", []), {"folder": stale.name, "why": why}])
        return stale


def resume_identity(params: FinetuneParams, spec: TaskSpec, cfg: TrainConfig) -> dict:
    """What a new flow run must share with an unfinished folder to take it over (see the module docstring).
    `cfg`: the training config with the spec's defaults filled in, as `fit` sees it."""
    data_root = params.data_dir or os.environ.get(ENV_DATA_DIR)
    pretrained = params.pretrained or OFFLINE_DEFAULT
    if Path(pretrained).expanduser().is_dir():  # a folder: the same one from any working directory
        pretrained = str(Path(pretrained).expanduser().resolve())
    return {
        "task": spec.name,
        "spec_sha256": hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:16],
        "pretrained": pretrained,
        "training": cfg.model_dump(mode="json", exclude=RESUME_INDIFFERENT),
        "data_root": str(Path(data_root).expanduser().resolve()) if data_root else None,
        "drop_bad_rows": params.drop_bad_rows,
    }


def identity_key(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


@contextlib.contextmanager
def claim(params: FinetuneParams, spec: TaskSpec, cfg: TrainConfig) -> Iterator[RunFolder]:
    """The folder this flow run works in, locked until the block ends: its own (a retry), else the newest
    unfinished folder of the same identity, else a new one."""
    task_root = runs_root(params.run_root) / spec.name
    identity = resume_identity(params, spec, cfg)
    key = identity_key(identity)
    if flow_run.id:
        own = task_root / f"{flow_run.scheduled_start_time:%Y%m%d-%H%M%S}-{flow_run.name}"
    else:  # called as plain Python (`finetune.fn(...)`): no flow run to name the folder after
        own = task_root / datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    candidates = [own] if own.exists() else [*_unfinished(task_root, key), own]
    for path in candidates:
        path.mkdir(parents=True, exist_ok=True)
        lock = _try_lock(path)
        if lock is None:  # another flow run works there now
            continue
        record = read_record(path) or {"task": spec.name, "identity_key": key, "identity": identity, "created": now()}
        folder = RunFolder(path, record, taken_over=path != own, _lock=lock)
        try:
            yield folder
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()
        return
    raise RuntimeError(f"run folder {own} is locked by another flow run")


def _unfinished(task_root: Path, key: str) -> list[Path]:
    """Folders of earlier runs with this identity that did not finish, newest first."""
    if not task_root.is_dir():
        return []
    found = [p for p in task_root.iterdir() if (r := read_record(p)) and r.get("identity_key") == key
             and r.get("status") != FINISHED]
    return sorted(found, key=lambda p: p.name, reverse=True)


def _try_lock(path: Path) -> IO | None:
    lock = open(path / LOCK, "a")  # noqa: SIM115 - held for the whole flow run
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    return lock


def read_record(path: Path) -> dict | None:
    try:
        return json.loads((path / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write(path: Path, record: dict) -> None:
    tmp = path / (RECORD + ".tmp")
    tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
    os.replace(tmp, path / RECORD)


# ---- listing and pruning (`bertflow runs`) -----------------------------------------------------------
@dataclasses.dataclass
class RunSummary:
    path: Path
    task: str
    status: str  # running, finished, failed or interrupted
    size_bytes: int
    mlflow_run_id: str | None
    tracking_uri: str | None
    created: str | None
    ended: str | None
    error: str | None


def list_runs(run_root: str | Path | None = None, task: str | None = None) -> list[RunSummary]:
    """Every run folder (one with a `run.json`) under the runs root, oldest first."""
    root = runs_root(run_root)
    tasks = [root / task] if task else sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    runs = []
    for task_root in tasks:
        for path in sorted(task_root.iterdir()) if task_root.is_dir() else []:
            record = read_record(path)
            if record is None:
                continue
            runs.append(RunSummary(path, record.get("task", task_root.name), _status(path, record), size(path),
                                   record.get("mlflow_run_id"), record.get("tracking_uri"), record.get("created"),
                                   record.get("ended"), record.get("error")))
    return runs


def _status(path: Path, record: dict) -> str:
    status = record.get("status", RUNNING)
    if status != RUNNING:
        return status
    lock = _try_lock(path)
    if lock is None:
        return RUNNING
    fcntl.flock(lock, fcntl.LOCK_UN)
    lock.close()
    return INTERRUPTED


def size(path: Path) -> int:
    """Bytes of the files under ``path``."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # a file a running flow just replaced
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def prune(runs: list[RunSummary]) -> list[Path]:
    """Delete these run folders, except any a flow run works in now; returns the deleted paths."""
    deleted = []
    for run in runs:
        lock = _try_lock(run.path) if run.path.is_dir() else None
        if lock is None:
            continue
        # Renamed first, under the lock, so no flow run can take the folder over while it is deleted.
        doomed = run.path.with_name(f".deleting-{run.path.name}")
        run.path.rename(doomed)
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
        shutil.rmtree(doomed, ignore_errors=True)
        deleted.append(run.path)
    return deleted
