"""A temporary MLflow sqlite store for test modules that log and register without Prefect (flow tests use
`flow_root` in tests/conftest.py). Each module keeps its own module-scoped fixture, which `yield from`s this."""

from __future__ import annotations

from collections.abc import Iterator

import mlflow
import pytest

from tracking.store import configure_tracking, experiment_for


def sqlite_store(tmp_path_factory: pytest.TempPathFactory, experiment: str) -> Iterator[str]:
    """Yields the tracking URI of a fresh sqlite tracking + registry store, with MLFLOW_EXPERIMENT_ID set to the
    experiment `bertflow-<experiment>` in it; the environment and the global MLflow URIs are reset afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        mp.delenv("MLFLOW_PYFUNC_INFERENCE_CONFIG", raising=False)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path_factory.mktemp('mlruns') / 'mlflow.db'}")
        uri = configure_tracking()
        # Not mlflow.set_experiment: it would leave its experiment active for later tests, on other stores.
        # experiment_for keeps the artifacts beside the database, not in ./mlruns of the current folder.
        mp.setenv("MLFLOW_EXPERIMENT_ID", experiment_for(experiment, uri))
        yield uri
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
