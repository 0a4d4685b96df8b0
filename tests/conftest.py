"""Shared pytest fixtures. Keep each fixture small and say why it exists; add new ones below."""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
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
