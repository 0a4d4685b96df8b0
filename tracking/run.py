"""An MLflow run as the flows and tasks use it, so that none of them calls MLflow itself.

- `start_run(experiment_id, name, tags)`: the run a fine-tune works in, as a `with` block. It is MLflow's
  active run (the model is logged into it, system metrics are sampled for it). An exception inside the
  block records the `error` tag (secrets masked, 5000 characters) and an `error.txt` traceback, and the run
  ends FAILED; otherwise FINISHED.
- `create_run` / `reopen_run`: a run that stays open while other processes work (a sweep's parent run),
  ended with `TrackedRun.end`.
- `active_again(run_id)`: a finished run made the active one for a block, to log a model into it after the
  fact (a sweep's best trial's serving precisions); it ends as it was.
- `TrackedRun`: logging to one run by its id: params (nested, secrets masked), tags, text, metrics,
  artifacts, tables. A small dataclass, so tasks take it as a parameter.
- `read_run`, `find_run`, `finished_run_of_flow_run`: a run read back (`RunRecord`: tags, metrics, params).
"""

from __future__ import annotations

import contextlib
import dataclasses
import traceback
from collections.abc import Iterator, Mapping

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tracking.store import log_params_safely, mask_secrets

MAX_ERROR_CHARS = 5000  # of the `error` tag (MLflow allows 8000 per tag value)
PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's UI shows a run with this tag under its parent


@dataclasses.dataclass(frozen=True)
class TrackedRun:
    """One MLflow run, by its id."""

    run_id: str

    def log_params(self, params: Mapping) -> dict[str, str]:
        """Nested params as dotted keys, secrets masked, values cut to MLflow's limit (tracking.store)."""
        return log_params_safely(params, run_id=self.run_id)

    def set_tag(self, key: str, value: object) -> None:
        MlflowClient().set_tag(self.run_id, key, value)

    def log_text(self, text: str, path: str) -> None:
        mlflow.log_text(text, path, run_id=self.run_id)

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, run_id=self.run_id)

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        MlflowClient().log_metric(self.run_id, key, value, step=step)

    def log_artifact(self, path: str) -> None:
        MlflowClient().log_artifact(self.run_id, path)

    def log_table(self, columns: Mapping[str, list], path: str) -> None:
        """A table (column name -> values) as MLflow's table artifact ``path`` (``.json``), which the UI's
        artifact view shows as a table. MLflow appends to a table already at ``path``: log each one once."""
        mlflow.log_table(dict(columns), artifact_file=path, run_id=self.run_id)

    def log_artifacts(self, folder: str, artifact_path: str) -> None:
        mlflow.log_artifacts(folder, artifact_path=artifact_path, run_id=self.run_id)

    def record_error(self, err: BaseException) -> None:
        """The `error` tag: the exception's type and message, secrets masked."""
        self.set_tag("error", mask_secrets(f"{type(err).__name__}: {err}")[:MAX_ERROR_CHARS])

    def end(self, status: str = "FINISHED") -> None:
        """End a run of `create_run` / `reopen_run` as FINISHED or FAILED."""
        MlflowClient().set_terminated(self.run_id, status)


@contextlib.contextmanager
def start_run(experiment_id: str, name: str, tags: Mapping[str, str],
              parent_run_id: str | None = None) -> Iterator[TrackedRun]:
    """A new active run in `experiment_id`, tagged with `tags` (and shown under `parent_run_id`, a sweep's run,
    when given); a failure inside the block is recorded in it and ends it FAILED, then raised on."""
    tags = {**tags, PARENT_RUN_TAG: parent_run_id} if parent_run_id else dict(tags)
    with mlflow.start_run(experiment_id=experiment_id, run_name=name, tags=tags, log_system_metrics=True) as active:
        run = TrackedRun(active.info.run_id)
        try:
            yield run
        except BaseException as err:  # noqa: BLE001 (recorded, then raised on)
            run.record_error(err)
            run.log_text(mask_secrets(traceback.format_exc()), "error.txt")
            raise  # start_run's context manager ends the MLflow run as FAILED


def create_run(experiment_id: str, name: str, tags: Mapping[str, str]) -> TrackedRun:
    """A new RUNNING run that is not this process's active run: it stays open until `TrackedRun.end`."""
    return TrackedRun(MlflowClient().create_run(experiment_id, run_name=name, tags=dict(tags)).info.run_id)


@contextlib.contextmanager
def active_again(run_id: str) -> Iterator[TrackedRun]:
    """Finished run `run_id` as this process's active run for the block (MLflow logs a model into the active run
    only); afterwards it has its status and end time back, whatever the block did."""
    before = MlflowClient().get_run(run_id).info
    mlflow.start_run(run_id=run_id, log_system_metrics=False)
    try:
        yield TrackedRun(run_id)
    finally:
        mlflow.end_run(before.status)
        MlflowClient().set_terminated(run_id, before.status, end_time=before.end_time)


def reopen_run(run_id: str) -> TrackedRun | None:
    """Run `run_id` set RUNNING again; None when this tracking store does not hold it (another store, or deleted)."""
    client = MlflowClient()
    try:
        client.get_run(run_id)
        client.update_run(run_id, status="RUNNING")
    except MlflowException:
        return None
    return TrackedRun(run_id)


@dataclasses.dataclass
class RunRecord:
    """A run read back: what it logged."""

    run_id: str
    status: str  # RUNNING, FINISHED, FAILED, KILLED
    tags: dict[str, str]
    metrics: dict[str, float]  # the last value of each
    params: dict[str, str]


def read_run(run_id: str) -> RunRecord:
    return _record(MlflowClient().get_run(run_id))


def find_run(run_id: str) -> RunRecord | None:
    """`read_run`, or None when this tracking store does not hold the run (deleted for good, another store)."""
    try:
        return read_run(run_id)
    except MlflowException as err:  # an unreachable store raises too, with another code: that is not "none"
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def finished_run_of_flow_run(experiment_name: str, flow_run_id: str) -> RunRecord | None:
    """The FINISHED run of `experiment_name` tagged with Prefect flow run `flow_run_id`; None if there is none."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name(experiment_name)
    found = client.search_runs(
        [experiment.experiment_id] if experiment else [],
        filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}' and attributes.status = 'FINISHED'")
    return _record(found[0]) if found else None


def _record(run) -> RunRecord:
    return RunRecord(run_id=run.info.run_id, status=run.info.status, tags=dict(run.data.tags),
                     metrics=dict(run.data.metrics), params=dict(run.data.params))
