"""Fixtures shared by the flow tests; tests/conftest.py has `flow_root`, which these build on."""

import pytest

from tests.tiny_models import write_tiny_checkpoint
from tests.toy_task import write_toy_task


@pytest.fixture(scope="module")
def toy(flow_root):
    """The toy task written under `flow_root` ("spec": its toy.yaml, "data": its data folder) and a tiny
    random checkpoint ("tiny"). A module that needs more (a registered parent, say) defines its own `toy`."""
    return {"spec": write_toy_task(flow_root / "data"), "data": flow_root / "data",
            "tiny": write_tiny_checkpoint(flow_root / "tiny")}
