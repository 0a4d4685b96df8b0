"""Shared pytest fixtures. Keep each fixture small and say why it exists; add new ones below."""

import os
from pathlib import Path

import mlflow
import pytest
from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
from prefect.testing.utilities import prefect_test_harness

REPO_ROOT = Path(__file__).resolve().parents[1]
# Test servers' telemetry heartbeat races the flows for the server's sqlite database and logs tracebacks.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Where the shared benchmark files sit next to this checkout (see shared/datasets/SOURCES.md).
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real benchmark data folder: $BERTFLOW_DATA_DIR, else ../shared/datasets next to the repo.

    Tests that need real data skip when it is missing, so the unit tests run anywhere; CI sets
    BERTFLOW_REQUIRE_DATA=1 so that missing data fails instead of silently skipping.
    """
    env = os.environ.get("BERTFLOW_DATA_DIR")
    path = Path(env) if env else DEFAULT_DATA_DIR
    if path.is_dir():
        return path
    if os.environ.get("BERTFLOW_REQUIRE_DATA") == "1":
        pytest.fail(f"real data not found at {path} but BERTFLOW_REQUIRE_DATA=1: "
                    "set BERTFLOW_DATA_DIR to the shared datasets folder")
    pytest.skip("real data not found: set BERTFLOW_DATA_DIR to the shared datasets folder")


@pytest.fixture(scope="module")
def flow_root(tmp_path_factory, request):
    """For tests that run flows: a Prefect test server, an MLflow sqlite store, BERTFLOW_HOME and the
    feature cache, all under one temporary folder (returned). Module-scoped, so a module's flows share
    one store and two test servers never run at once; the global MLflow URIs are reset afterwards."""
    root = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        # An experiment id of another module-scoped store (tests/mlflow_store.py) means nothing in this one.
        mp.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
        mp.setenv("BERTFLOW_HOME", str(root / "home"))
        mp.setenv("BERTFLOW_CACHE_DIR", str(root / "features"))
        # A busy 2-core machine needs more than Prefect's default 30 s to start the test server.
        with prefect_test_harness(server_startup_timeout=180), \
                temporary_settings({PREFECT_LOCAL_STORAGE_PATH: root / "prefect-results"}):  # tokenize's cache
            yield root
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


@pytest.fixture(scope="module")
def real_data_flow_root(flow_root, data_dir):
    """`flow_root`, with BERTFLOW_DATA_DIR pointing at the real data."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BERTFLOW_DATA_DIR", str(data_dir))
        yield flow_root
