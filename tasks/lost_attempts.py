"""The `close_lost_attempts` task: before a flow run works, end what an earlier attempt of it (or the
interrupted run whose folder it took over) left open in MLflow (tracking.lost_runs)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.retry_policy import retry_if_transient
from tracking.lost_runs import close_lost_runs


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10, retry_condition_fn=retry_if_transient)
def close_lost_attempts(experiment_id: str, flow_run_id: str | None, interrupted_run_id: str | None = None,
                        interrupted_store: str | None = None) -> list[str]:
    """``tracking.lost_runs.close_lost_runs``, its warnings in the flow run's log; returns the runs it closed."""
    return close_lost_runs(experiment_id, flow_run_id, interrupted_run_id, interrupted_store, get_run_logger())
