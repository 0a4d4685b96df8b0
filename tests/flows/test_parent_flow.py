"""The finetune flow started from a registered model, on a tiny random BERT and a local sqlite MLflow store: a
parent fine-tune is registered, then children take `models:/bert-<task>@champion` as `pretrained`. The child's run
and version carry the parent's pinned URI and run, its card says where it came from, `compare` shows each
version's parent, its run folder's identity names the version the alias resolved to, and a URI that names nothing
fails before any MLflow run or training. (Loading itself, the encoder at step 0 and the head: tests/bert_core/
test_starting_model.py.)"""

from __future__ import annotations

import json

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from bert_core.training import TrainConfig
from flows.finetune import finetune
from flows.params import FinetuneParams
from tests.tiny_models import write_tiny_checkpoint
from tests.toy_task import SPEC, write_toy_task
from tracking.compare import compare_versions, display_rows

pytest.importorskip("transformers")
TRAINING = TrainConfig(batch_size=16, epochs=1, learning_rate=3e-3, precision="fp32", progress_bar=False, seed=3)
PARENT = "models:/bert-toy_sentiment@champion"


@pytest.fixture(scope="module")
def toy(flow_root):
    """The toy sentiment task (labels neg, pos), the same rows relabelled bad/good as a second task, the tiny
    checkpoint, and the parent: the toy task fine-tuned from the checkpoint, registered as v1 (champion)."""
    data = flow_root / "data"
    spec = write_toy_task(data)
    other = data / "toy_relabelled.yaml"
    relabelled = SPEC.model_dump(exclude_none=True) | {"name": "toy_relabelled", "labels": ["bad", "good"]}
    relabelled["local"]["label_map"] = {"neg": "bad", "pos": "good"}
    other.write_text(json.dumps(relabelled), encoding="utf-8")  # JSON is YAML
    found = {"spec": spec, "other": other, "data": data, "tiny": write_tiny_checkpoint(flow_root / "tiny")}
    found["parent"] = run(found, pretrained=str(found["tiny"]))
    return found


def run(toy, task=None, **params) -> dict:
    state = finetune(FinetuneParams(task=str(task or toy["spec"]), data_dir=str(toy["data"]), training=TRAINING,
                                    registry_policy="better", **params), return_state=True)
    assert state.is_completed(), state.result(raise_on_failure=False)
    return state.result()


def test_a_child_of_the_same_task_keeps_the_head_and_records_its_parent(toy):
    parent = toy["parent"]
    assert (parent["model_name"], parent["model_version"]) == ("bert-toy_sentiment", "1")
    child = run(toy, pretrained=PARENT)
    client = MlflowClient()
    lineage = {"parent_model": "models:/bert-toy_sentiment/1", "parent_run_id": parent["mlflow_run_id"],
               "parent_task": "toy_sentiment", "parent_requested": PARENT, "parent_head": "kept"}
    run_tags = client.get_run(child["mlflow_run_id"]).data.tags
    version = client.get_model_version(child["model_name"], child["model_version"])
    assert {k: run_tags.get(k) for k in lineage} == lineage and run_tags["pretrained"] == PARENT
    assert {k: version.tags.get(k) for k in lineage} == lineage
    assert run_tags["parent_model_id"] == version.tags["parent_model_id"]
    assert run_tags["parent_model_id"] == client.get_model_version("bert-toy_sentiment", "1").source.split("/")[-1]
    assert "Fine-tuned from models:/bert-toy_sentiment/1 (task toy_sentiment; head kept)." in version.description
    assert "| pretrained | models:/bert-toy_sentiment@champion |" in version.description
    # The run folder's identity names the version the alias resolved to (a moved alias: another fine-tune).
    identity = json.loads(open(f"{child['run_dir']}/run.json", encoding="utf-8").read())["identity"]
    assert identity["pretrained"] == (f"{PARENT} -> models:/bert-toy_sentiment/1 "
                                      f"(model {run_tags['parent_model_id']})")


def test_a_child_of_another_label_set_gets_a_new_head(toy):
    child = run(toy, task=toy["other"], pretrained=PARENT)
    version = MlflowClient().get_model_version(child["model_name"], child["model_version"])
    assert version.tags["parent_head"] == "new" and version.tags["parent_model"] == "models:/bert-toy_sentiment/1"
    assert "Fine-tuned from models:/bert-toy_sentiment/1 (task toy_sentiment; head new)." in version.description


def test_compare_shows_each_versions_parent(toy):
    run(toy, pretrained="models:/bert-toy_sentiment/1")
    rows = {r["version"]: r for r in compare_versions(str(toy["spec"]), n_resamples=50)}
    assert rows["1"]["parent"] is None
    assert {r["parent"] for v, r in rows.items() if v != "1"} == {"models:/bert-toy_sentiment/1"}
    cells = {c["version"]: c for c in display_rows(list(rows.values()))}
    assert cells["v1"]["parent"] == "-" and cells["v2"]["parent"] == "models:/bert-toy_sentiment/1"


def test_a_uri_that_names_nothing_fails_before_any_run_or_training(toy):
    experiment = mlflow.get_experiment_by_name("bertflow-toy_sentiment")
    runs_before = len(MlflowClient().search_runs([experiment.experiment_id]))
    state = finetune(FinetuneParams(task=str(toy["spec"]), data_dir=str(toy["data"]), training=TRAINING,
                                    pretrained="models:/bert-nope@champion"), return_state=True)
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert "models:/bert-nope@champion is not in the model registry" in message and "bert-toy_sentiment" in message
    assert len(MlflowClient().search_runs([experiment.experiment_id])) == runs_before
