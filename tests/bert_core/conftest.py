"""Tiny random BERT checkpoints shared by the bert_core tests (one per test module: module scope)."""

from pathlib import Path

import pytest

from tests.tiny_models import write_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A 2-layer random BERT with dropout, as a pretrained checkpoint folder."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", seed=0)


@pytest.fixture(scope="module")
def tiny_no_dropout(tmp_path_factory) -> Path:
    """The same without dropout: two runs of it compute exactly the same losses."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny0") / "ckpt", seed=0, dropout=0.0)
