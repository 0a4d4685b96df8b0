"""The audit flow through Prefect (a test server) on a tiny random BERT and a local sqlite MLflow store: a toy task
whose training file has 10% of its labels flipped is audited with k=3 folds in the flow's process pool. The
flipped rows come out on top of the CSV (with their file lines), the MLflow run holds the same suspects as a table,
the summary counts them per label, and the folds register no model."""

from __future__ import annotations

import csv
import json

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from prefect.artifacts import Artifact

from bert_core.audit import SUSPECT_COLUMNS
from bert_core.training import TrainConfig
from flows.audit import audit
from flows.params import AuditParams, FinetuneParams
from tests.bert_core.test_audit import flip
from tests.tiny_models import write_tiny_checkpoint
from tests.toy_task import SPEC, toy_rows

pytest.importorskip("transformers")
TRAINING = TrainConfig(batch_size=16, epochs=10, learning_rate=3e-3, precision="fp32", progress_bar=False, seed=7)


@pytest.fixture(scope="module")
def audited(flow_root):
    data = flow_root / "data"
    (data / "toy").mkdir(parents=True)
    train, flipped = flip(toy_rows(120, 11), 0.1, seed=1)
    for name, rows in (("train.tsv", train), ("dev.tsv", toy_rows(48, 2))):
        lines = ["sentence\tlabel"] + [f"{r['text_a']}\t{r['label']}" for r in rows]
        (data / "toy" / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    spec = data / "toy.yaml"
    spec.write_text(json.dumps(SPEC.model_dump(exclude_none=True)), encoding="utf-8")  # JSON is YAML
    base = FinetuneParams(task=str(spec), data_dir=str(data), training=TRAINING,
                          pretrained=str(write_tiny_checkpoint(flow_root / "tiny")))
    state = audit(AuditParams(base=base, k=3, top=15), return_state=True)
    assert state.is_completed(), state.result(raise_on_failure=False)
    return {"result": state.result(), "flipped": flipped}


def test_the_flipped_rows_top_the_suspects_csv(audited):
    result, flipped = audited["result"], audited["flipped"]
    with open(result["csv"], newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == SUSPECT_COLUMNS and len(rows) == result["listed"] == min(result["flagged"], 15)
    assert result["audited"] == 120
    top = [int(r["row"]) for r in rows[: len(flipped)]]
    assert len(set(top) & flipped) >= 0.8 * len(flipped), (top, sorted(flipped))
    for r in rows:
        assert r["source"].endswith(f"train.tsv:{int(r['row']) + 2}")  # the header is line 1
        assert r["suggested_label"] != r["given_label"] or float(r["given_label_probability"]) < 0.5
    assert sum(result["counts"]["by_given_label"].values()) == result["flagged"]
    # The fold models learn the toy task, so they agree with about the 90% of labels left unflipped.
    assert 0.75 <= result["agreement"] <= 0.95, result["agreement"]


def test_the_mlflow_run_holds_the_table_and_counts_and_nothing_is_registered(audited):
    result = audited["result"]
    client = MlflowClient()
    run = client.get_run(result["mlflow_run_id"])
    assert mlflow.get_experiment(run.info.experiment_id).name == "bertflow-audit"
    assert run.data.metrics["flagged_rows"] == result["flagged"] and run.data.params["k"] == "3"
    assert run.data.metrics["fold_agreement"] == result["agreement"]
    table = json.loads(open(mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                                 artifact_path="label_audit.json")).read())
    assert table["columns"] == list(SUSPECT_COLUMNS) and len(table["data"]) == result["listed"]
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"label_audit.csv", "label_audit.md", "label_audit.json"} <= names
    assert client.search_registered_models() == []
    summary = Artifact.get("label-audit-toy-sentiment-summary")
    assert summary is not None and "given -> suggested" in summary.data
