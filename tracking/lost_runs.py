"""Closing what an earlier attempt of the same flow run left open when it lost the tracking server.

An attempt that loses MLflow for longer than the client's retries cannot end its own run: the run stays
RUNNING on the server, and a model version registered just before the loss stays half-registered (no
decision tags, maybe no alias). Prefect's retry of the flow run calls ``close_lost_runs`` first
(``tasks.lost_attempts``):
every RUNNING run of this experiment tagged with this flow run's id belongs to a dead attempt (attempts
of one flow run never overlap), so its versions are retracted and it ends FAILED with the reason. The
same goes for the MLflow run of an interrupted earlier flow run whose folder a new one took over
(flows/run_folder.py).
"""

from __future__ import annotations

import logging

import mlflow
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tracking.registry import retract_version
from tracking.store import mask_secrets

_log = logging.getLogger(__name__)
LOST = "an earlier attempt of this flow run lost the tracking server; its retry superseded this run"
INTERRUPTED = "interrupted (killed or crashed); a new flow run with the same parameters resumed its folder"


def close_lost_runs(experiment_id: str, flow_run_id: str | None, interrupted_run_id: str | None = None,
                    interrupted_store: str | None = None, log: logging.Logger | logging.LoggerAdapter = _log) -> list[str]:
    """End the RUNNING runs of earlier attempts of ``flow_run_id``, and ``interrupted_run_id`` (the MLflow
    run of an earlier flow run whose folder this one took over, recorded in ``interrupted_store``) if still
    RUNNING or FAILED, retracting their model versions; returns their run ids. An interrupted run that the
    current store does not hold (deleted, or kept by another store) is only reported."""
    client = MlflowClient()
    lost = []
    if flow_run_id:  # None: called as plain Python, with no flow run whose attempts could be told apart
        lost = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}' and attributes.status = 'RUNNING'")
    if interrupted_run_id and interrupted_run_id not in {r.info.run_id for r in lost}:
        # A killed process leaves its run RUNNING; one that failed (e.g. tracking lost) may hold a version.
        # FINISHED: it died after MLflow had everything; its version stands.
        try:
            interrupted = client.get_run(interrupted_run_id)
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            current = mask_secrets(mlflow.get_tracking_uri())
            where = ("deleted from it" if interrupted_store in (None, current)
                     else f"it was recorded in {interrupted_store}")
            log.warning("the earlier run's MLflow run %s is not in the tracking store %s (%s); going on "
                                     "without closing it", interrupted_run_id, current, where)
            interrupted = None
        if interrupted is not None and interrupted.info.status != "FINISHED":
            lost.append(interrupted)
    for run in lost:
        run_id = run.info.run_id
        for version in client.search_model_versions(f"run_id = '{run_id}'"):
            retract_version(client, version.name, version.version)
            log.warning("retracted %s v%s, registered by lost run %s", version.name, version.version,
                                     run_id)
        if run.info.status == "RUNNING":
            client.set_tag(run_id, "error", LOST if run_id != interrupted_run_id else INTERRUPTED)
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
    return [run.info.run_id for run in lost]
