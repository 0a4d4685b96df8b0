"""MLflow's own console output, which `bertflow` keeps out of a console that shows its one line per step."""

from __future__ import annotations

import os

from mlflow.utils.logging_utils import disable_logging


def quiet_mlflow() -> None:
    """MLflow prints its events ("Created version ...", hints) and download bars to a stream of its own,
    warnings included: all off. The run's records (params, metrics, tags) are unchanged."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    disable_logging()
