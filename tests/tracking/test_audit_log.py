"""tracking/audit_log.py: a label audit's counts as MLflow metrics, whatever the labels are called. A label set
(multi-label, 'LOC|PER') or a label with characters MLflow refuses in a metric's name must not fail the run that
logs a finished audit."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from bert_core.audit import SUSPECT_COLUMNS, suspect_counts
from tests.mlflow_store import sqlite_store
from tracking.audit_log import flagged_metrics, write_and_log_audit


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    yield from sqlite_store(tmp_path_factory, "audit")


def test_label_names_become_metric_names_mlflow_takes():
    assert flagged_metrics({"LOC|PER": 3, "": 2, "neg": 1, "5★ / great!": 1, "LOC_PER": 1}) == {
        "flagged.LOC_PER": 4, "flagged.no label": 2, "flagged.neg": 1, "flagged.5_ _ great_": 1}


def test_a_multi_label_audit_is_logged_with_its_label_sets(store, tmp_path):
    suspects = [{"rank": 1, "row": 4, "source": "train.csv:6", "text_a": "Merkel in Paris", "text_b": None,
                 "given_label": "LOC|PER", "suggested_label": "LOC|ORG|PER", "given_label_probability": 0.01,
                 "label_quality": 0.02},
                {"rank": 2, "row": 9, "source": "train.csv:11", "text_a": "It rained", "text_b": None,
                 "given_label": "", "suggested_label": "LOC", "given_label_probability": 0.1, "label_quality": 0.2}]
    done = write_and_log_audit("news", str(tmp_path / "audit"), suspects, SUSPECT_COLUMNS, suspect_counts(suspects),
                               {"flagged": 2, "audited": 5, "agreement": 0.4}, store, {"k": 3}, {})
    metrics = MlflowClient().get_run(done["mlflow_run_id"]).data.metrics
    assert metrics["flagged_rows"] == 2 and metrics["flagged.LOC_PER"] == 1 and metrics["flagged.no label"] == 1
    assert metrics["fold_agreement"] == 0.4
    markdown = (tmp_path / "audit" / "label_audit.md").read_text(encoding="utf-8")
    assert "| LOC\\|PER | 1 |" in markdown and "| (none) | 1 |" in markdown
    assert "for 40.0% of the rows" in markdown and "**Warning**: 40% of the rows flagged" in markdown
