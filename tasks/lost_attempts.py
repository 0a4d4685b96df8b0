"""Closing what an earlier attempt of the same flow run left open when it lost the tracking server.

An attempt that loses MLflow for longer than the client's retries cannot end its own run: the run stays
RUNNING on the server, and a model version registered just before the loss stays half-registered (no
decision tags, maybe no alias). Prefect's retry of the flow run calls ``close_lost_attempts`` first:
every RUNNING run of this experiment tagged with this flow run's id belongs to a dead attempt (attempts
of one flow run never overlap), so its versions are retracted and it ends FAILED with the reason.
"""

from __future__ import annotations

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.registry import retract_version

LOST = "an earlier attempt of this flow run lost the tracking server; its retry superseded this run"


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10)
def close_lost_attempts(experiment_id: str, flow_run_id: str) -> list[str]:
    """End the RUNNING runs of earlier attempts of ``flow_run_id`` as FAILED, retracting their model
    versions; returns their run ids."""
    client = MlflowClient()
    lost = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}' and attributes.status = 'RUNNING'")
    for run in lost:
        run_id = run.info.run_id
        for version in client.search_model_versions(f"run_id = '{run_id}'"):
            retract_version(client, version.name, version.version)
            get_run_logger().warning("retracted %s v%s, registered by lost run %s", version.name, version.version,
                                     run_id)
        client.set_tag(run_id, "error", LOST)
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
    return [run.info.run_id for run in lost]
