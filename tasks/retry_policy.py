"""Which failures a Prefect retry can heal, and failing at once on the rest.

A retry helps when the world was briefly wrong: the tracking server or the hub unreachable, an I/O error,
a lost connection, a crash of unknown cause. It cannot help when the input is wrong: a spec or data error,
a metric that does not fit the labels, a diverged loss, a missing checkpoint folder. Those fail the first
time, with their message, and are never retried:
- tasks: ``retry_condition_fn=retry_if_transient``;
- flows (Prefect flows have no retry condition): ``give_up_unless_transient(err)`` before re-raising sets
  the flow run's remaining retries to 0, so the server lets the failure stand.
"""

from __future__ import annotations

from prefect import get_client, get_run_logger
from prefect.runtime import flow_run

from bert_core.validation import SourceUnavailable
from tracking.errors import mlflow_error_may_heal
from tracking.store import TrackingRefusedError, TrackingUnavailableError

# Errors of the input or of the program: the same input fails the same way. (ValueError covers DataError,
# SpecError and pydantic's ValidationError; ArithmeticError covers a diverged loss.)
PERMANENT = (ValueError, TypeError, LookupError, ArithmeticError, NotImplementedError, ImportError, AssertionError,
             FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def is_transient(err: BaseException) -> bool:
    """Whether running the same thing again later may succeed."""
    if isinstance(err, SourceUnavailable | TrackingUnavailableError):
        return not isinstance(err, TrackingRefusedError)
    if (may_heal := mlflow_error_may_heal(err)) is not None:  # a refused request stays refused (tracking/errors.py)
        return may_heal
    return not isinstance(err, PERMANENT)


def retry_if_transient(task, task_run, state) -> bool:
    """A task's ``retry_condition_fn``: retry only what may heal."""
    return is_transient(state.result(raise_on_failure=False))


def give_up_unless_transient(err: BaseException) -> None:
    """Called by a flow that is about to fail with ``err``: when no retry can heal it, turn the flow run's
    retries off, so it fails now with this message instead of running again to the same end."""
    if is_transient(err) or not flow_run.id:
        return
    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(flow_run.id)
            if run.empirical_policy.retries:
                client.update_flow_run(flow_run.id,
                                       empirical_policy=run.empirical_policy.model_copy(update={"retries": 0}))
                # Marked as a line for people: `bertflow run` shows it among its step lines.
                get_run_logger(bertflow_step=True).info("not retrying: %s is not a failure that a retry can heal",
                                                        type(err).__name__)
    except Exception as api_error:  # noqa: BLE001 (the flow's own error matters more than this bookkeeping)
        get_run_logger().warning("could not turn this flow run's retries off (%s); it may be retried", api_error)
