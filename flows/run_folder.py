"""Run folders: where a finetune flow run works, which earlier folder it resumes, and what `bertflow runs` lists.

A run folder is `<run_root>/<task>/<start time>-<flow run name>`, with a `run.json` record and a `.lock`
that a flow run holds (`bert_core/file_lock.py`) while it works there; the OS releases it when the process dies.

`run.json` status: `running` while a flow works there, then `finished` or `failed` (with `error`). A folder
left `running` with its lock free was interrupted (killed, crashed, machine lost).

What makes an unfinished folder resumable (docs/reliability.md, "Resuming") is the fine-tune's identity,
`bert_core.training.identity.FinetuneIdentity`, recorded in `run.json`:
- its first part, known before any data is read (the task spec's content, the pretrained checkpoint, the
  training recipe, the resolved data root, `drop_bad_rows`): a new flow run takes over the newest
  interrupted or failed folder whose record has the same `identity_key`, so `fit` resumes from its
  checkpoints; otherwise it starts a new folder. Finished folders are never taken over.
- its second part, once the data is read (`set_aside_if_changed`): if the data fingerprint or the code
  version differ from the record's, the old checkpoints are set aside (`set_aside`), not deleted, and
  training starts over.
- The tracking store, the run root and the registry policy are not part of it: a folder whose MLflow run
  is in another store (or was deleted) is still taken over, with a warning.
- A retry of the same flow run always gets its own folder back.
- A run that trained nothing (no change since the task's champion: flows/finetune.py) leaves no folder behind
  (`release_unused`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from prefect.runtime import flow_run

from bert_core.file_lock import FileLock, try_acquire
from bert_core.home import runs_root
from bert_core.spec import TaskSpec
from bert_core.training import TrainConfig
from bert_core.training.identity import FinetuneIdentity, data_root
from bert_core.training.state import list_checkpoints
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
    identity: FinetuneIdentity  # this flow run's: its first part, completed by set_aside_if_changed
    taken_over: bool  # an earlier flow run's unfinished folder
    _lock: FileLock = dataclasses.field(repr=False)

    def update(self, **fields) -> None:
        """Merge `fields` into run.json, written atomically."""
        self.record.update(fields)
        _write(self.path, self.record)

    def set_aside_if_changed(self, data_fingerprint: str, code_version: str) -> str | None:
        """Complete this run's identity with the data's fingerprint and the code version, and record it. When
        the folder's earlier run read other data or ran other code, its checkpoints belong to another
        fine-tune (fit would refuse them, or resume a recipe that no longer exists): they are set aside and
        training starts over. Returns the warning line to log then, else None."""
        self.identity = self.identity.with_data(data_fingerprint, code_version)
        earlier = _recorded_identity(self.record)
        changed = (earlier.differences(self.identity) if earlier is not None
                   else ["this folder's run.json was written by an older bertflow"])
        stale = self.set_aside("; ".join(changed)) if changed else None
        self.update(identity=self.identity.to_json())  # after setting aside: a kill in between must not resume them
        if stale is None:
            return None
        since = " since this folder's earlier run" if earlier is not None else ""
        return f"{' and '.join(changed)}{since}: its checkpoints moved to {stale}, training starts over"

    def keep_only_results(self) -> None:
        """After a successful run: delete the resumable checkpoints, the best model's copy (the model is in
        MLflow) and set-aside training output; keep the data, the evaluation and the records."""
        removed = [p for p in (self.path / "training" / "checkpoints", self.path / "training" / "best",
                               *self.path.glob("training.stale-*")) if p.exists()]
        for path in removed:
            shutil.rmtree(path)
        self.update(removed_after_success=[str(p.relative_to(self.path)) for p in removed])

    def release_unused(self) -> None:
        """After a run that trained nothing (nothing changed since the task's champion): its own folder, which
        holds only a copy of the data, is deleted (a frequent schedule would otherwise fill the disk); a folder
        it took over gets its earlier run's record back, so a later run (e.g. with `force`) can still resume it."""
        if not self.taken_over:
            shutil.rmtree(self.path)  # the lock file goes too: the lock is held on its open handle until released
            return
        *earlier, last = self.record["earlier"]
        self.update(**last, earlier=earlier)

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

    def take_over(self) -> str | None:
        """For a folder taken over from an earlier flow run: keep that run's record under `earlier` and return
        the warning line that says so and where training resumes; None for this flow run's own folder."""
        if not self.taken_over:
            return None
        was = FAILED if self.record.get("status") == FAILED else INTERRUPTED
        done = list_checkpoints(self.path / "training" / "checkpoints")
        self.update(earlier=[*self.record.get("earlier", []), {
            k: self.record.get(k) for k in ("mlflow_run_id", "tracking_uri", "status", "error", "started", "ended")}])
        resumes = (f"training resumes from its checkpoint {done[-1].name}" if done
                   else "it holds no checkpoint, so training starts from the beginning")
        return (f"{self.record.get('task')}: taking over the {was} run folder {self.path} (same task, data root, "
                f"checkpoint and recipe): {resumes}")


def identity_of(params: FinetuneParams, spec: TaskSpec, cfg: TrainConfig,
                pretrained: str | None = None) -> FinetuneIdentity:
    """The first part of this fine-tune's identity, known before any data is read. `cfg`: the training
    config with the spec's defaults filled in, as `fit` sees it. `pretrained`: how the identity names
    `params.pretrained` once resolved (a registered model: its URI, version and model id); None: as given."""
    return FinetuneIdentity.of(spec, cfg, pretrained or params.pretrained, data_root=data_root(params.data_dir),
                               drop_bad_rows=params.drop_bad_rows)


@contextlib.contextmanager
def claim(params: FinetuneParams, spec: TaskSpec, cfg: TrainConfig, pretrained: str | None = None) -> Iterator[RunFolder]:
    """The folder this flow run works in, locked until the block ends: its own (a retry), else the newest
    unfinished folder of the same identity, else a new one. `pretrained`: as for `identity_of`."""
    task_root = runs_root(params.run_root) / spec.name
    identity = identity_of(params, spec, cfg, pretrained)
    key = identity.before_data().key()
    if flow_run.id:
        own = task_root / f"{flow_run.scheduled_start_time:%Y%m%d-%H%M%S}-{flow_run.name}"
    else:  # called as plain Python (`finetune.fn(...)`): no flow run to name the folder after
        own = task_root / datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    candidates = [own] if own.exists() else [*_unfinished(task_root, key), own]
    for path in candidates:
        path.mkdir(parents=True, exist_ok=True)
        lock = try_acquire(path / LOCK)
        if lock is None:  # another flow run works there now
            continue
        with lock:
            record = read_record(path) or {"task": spec.name, "identity_key": key, "identity": identity.to_json(),
                                           "created": now()}
            yield RunFolder(path, record, identity, taken_over=path != own, _lock=lock)
        return
    raise RuntimeError(f"run folder {own} is locked by another flow run")


def _unfinished(task_root: Path, key: str) -> list[Path]:
    """Folders of earlier runs with this identity that did not finish, newest first. Records of an older
    bertflow hold another kind of key: they match nothing, and the run starts a new folder."""
    if not task_root.is_dir():
        return []
    found = [p for p in task_root.iterdir() if (r := read_record(p)) and r.get("identity_key") == key
             and r.get("status") != FINISHED]
    return sorted(found, key=lambda p: p.name, reverse=True)


def _recorded_identity(record: dict) -> FinetuneIdentity | None:
    try:
        return FinetuneIdentity.from_json(record.get("identity"))
    except ValueError:  # a record of an older bertflow
        return None


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
    held = try_acquire(path / LOCK)
    if held is None:
        return RUNNING
    held.release()
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
        lock = try_acquire(run.path / LOCK) if run.path.is_dir() else None
        if lock is None:
            continue
        # Renamed first, under the lock, so no flow run can take the folder over while it is deleted.
        doomed = run.path.with_name(f".deleting-{run.path.name}")
        with lock:
            run.path.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        deleted.append(run.path)
    return deleted
