"""The `download` task: a task's splits from local files or the hub, saved into the run folder.

Later tasks read the splits back from disk (`load_splits`), so what a run trained and evaluated on
stays next to its model, and no task passes rows between processes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from datasets import Dataset, load_from_disk
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from bert_core.loading import load_task_data
from bert_core.spec import TaskSpec
from tasks.retry_policy import retry_if_transient


@dataclasses.dataclass
class DataInfo:
    """Where a run's splits are and what to log about them."""

    split_paths: dict[str, str]  # split name -> `Dataset.save_to_disk` folder
    rows: dict[str, int]  # split name -> row count
    fingerprint: str  # changes whenever the rows could change (bert_core.loading)
    label_names: list[str] | None
    source: str  # "local:<data dir>" or "hub:<path>"
    carve: dict | None  # how train/eval were carved out of one file, when they were
    dropped: int  # bad rows skipped (only with drop_bad_rows)
    dropped_path: str | None  # one message per dropped row
    warnings: list[str] = dataclasses.field(default_factory=list)  # the data checks' warnings (e.g. tag repairs)


# Retried only when the hub was unreachable: bad rows and missing files stay bad (tasks/retry_policy.py).
@task(retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=10), retry_condition_fn=retry_if_transient,
      cache_policy=NO_CACHE)
def download(spec: TaskSpec, run_dir: str, data_dir: str | None = None, drop_bad_rows: bool = False) -> DataInfo:
    """Load and validate `spec`'s splits (local files under `data_dir` / $BERTFLOW_DATA_DIR, else the
    hub) and save each one to `<run_dir>/data/<split>`."""
    data = load_task_data(spec, data_dir, drop_bad_rows=drop_bad_rows)
    folder = Path(run_dir) / "data"
    paths = {}
    for split, rows in data.splits.items():
        paths[split] = str(folder / split)
        rows.save_to_disk(paths[split])
    dropped_path = None
    if data.dropped:
        dropped_path = str(folder / "dropped_rows.txt")
        Path(dropped_path).write_text("\n".join(data.dropped) + "\n", encoding="utf-8")
        get_run_logger().warning("%s: dropped %d bad row(s), listed in %s", spec.name, len(data.dropped), dropped_path)
    for warning in data.warnings[:20]:
        get_run_logger().warning("%s: %s", spec.name, warning)
    return DataInfo(split_paths=paths, rows={s: len(r) for s, r in data.splits.items()}, fingerprint=data.fingerprint,
                    label_names=data.label_names, source=data.source, carve=data.carve, dropped=len(data.dropped),
                    dropped_path=dropped_path, warnings=data.warnings)


def load_split(data: DataInfo, split: str, limit: int | None = None) -> list[dict]:
    """The canonical rows of one saved split, the first `limit` of them (all with None)."""
    rows: Dataset = load_from_disk(data.split_paths[split])
    return rows.select(range(min(limit, len(rows)))).to_list() if limit else rows.to_list()
