"""MLflow's own console output, which `bertflow` keeps out of a console that shows its one line per step."""

from __future__ import annotations

import os


def no_download_bars() -> None:
    """No bar per artifact MLflow downloads (`compare`, `predict` and `score` read models and cards). Cheap: every
    `bertflow` command calls it first, before MLflow is imported."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def quiet_mlflow() -> None:
    """MLflow prints its events ("Created version ...", hints) and download bars to a stream of its own,
    warnings included: all off. The run's records (params, metrics, tags) are unchanged."""
    from mlflow.utils.logging_utils import disable_logging

    no_download_bars()
    disable_logging()
