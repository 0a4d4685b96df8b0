"""Where bertflow keeps local state: ``$BERTFLOW_HOME``, default ``~/.bertflow``.

Under it: ``cache/features`` (tokenized features), ``runs/`` (checkpoints, best models, predictions)
and ``mlflow.db`` (the default MLflow tracking and registry store).
"""

from __future__ import annotations

import os
from pathlib import Path


def bertflow_home() -> Path:
    return Path(os.environ.get("BERTFLOW_HOME") or Path.home() / ".bertflow").expanduser()


def runs_root(run_root: str | Path | None = None) -> Path:
    """Where run folders go: ``run_root`` if given, else ``$BERTFLOW_HOME/runs``."""
    return Path(run_root).expanduser() if run_root else bertflow_home() / "runs"
