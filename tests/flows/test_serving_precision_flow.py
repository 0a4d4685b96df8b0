"""`serving_precisions` through the finetune flow: after the fp32 version, int8 is gated on the real dev predictions
of the trained model and registered as its own version only within the margin (tasks/serving_precision.py)."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from flows.finetune import finetune
from flows.params import FinetuneParams
from flows.summary import FinetuneSummary
from tests.toy_task import TRAINING

pytest.importorskip("transformers")


def run(toy, **params) -> dict:
    state = finetune(FinetuneParams(task=str(toy["spec"]), data_dir=str(toy["data"]), pretrained=str(toy["tiny"]),
                                    training=TRAINING, force=True, serving_precisions=["int8"], **params),
                     return_state=True)
    assert state.is_completed(), state.result(raise_on_failure=False)
    return state.result()


def _versions(name: str) -> dict[str, dict]:
    return {str(v.version): v.tags for v in MlflowClient().search_model_versions(f"name = '{name}'")}


def test_int8_within_the_margin_is_registered_and_outside_it_is_not(toy):
    client = MlflowClient()
    summary = run(toy, precision_margin=0.5)
    name, fp32_version = summary["model_name"], summary["model_version"]
    derived = {v: t for v, t in _versions(name).items() if t.get("derived_from_version") == fp32_version}
    assert len(derived) == 1, _versions(name)
    (version, tags), = derived.items()
    assert tags["precision"] == "int8" and tags["gate.passed"] == "true" and tags["gate.n_rows"] == "32"
    # the gate's fp32 score is the evaluation's own: real dev predictions of the trained model
    assert float(tags["gate.fp32_score"]) == pytest.approx(summary["score"])
    assert client.get_model_version(name, fp32_version).tags["serving.int8"] == version
    assert "**Serving precision**: int8" in client.get_model_version(name, version).description
    tag = client.get_run(summary["mlflow_run_id"]).data.tags["serving.int8"]
    assert tag.startswith(f"registered models:/{name}/{version} (int8 vs fp32, paired bootstrap on 32 dev rows")
    assert summary["serving"] == [f"serving precision int8: {tag}"], "the run's tag is the summary's line"
    assert f"  serving     int8: registered models:/{name}/{version} (" in FinetuneSummary(**summary).text()
    assert summary["alias"] in ("champion", "challenger") and "champion" not in (
        client.get_model_version(name, version).aliases or []), "aliases stay on fp32 versions"

    before = set(_versions(name))
    refused = run(toy, precision_margin=-1)  # no interval starts at or above +1: always refused
    assert set(_versions(name)) == before | {refused["model_version"]}, "only the fp32 version is new"
    reason = client.get_run(refused["mlflow_run_id"]).data.tags["serving.int8"]
    assert reason.startswith("not registered (") and "refused" in reason and "paired bootstrap on 32 dev rows" in reason
    assert refused["serving"] == [f"serving precision int8: {reason}"], "the summary says why not"


def test_a_precision_that_fails_leaves_the_fp32_version_and_the_run_standing(toy, monkeypatch):
    import tasks.serving_precision

    def broken(*args, **kwargs):
        raise RuntimeError("no int8 kernels here")

    monkeypatch.setattr(tasks.serving_precision, "register_precision_version", broken)
    summary = run(toy, precision_margin=0.5)
    client = MlflowClient()
    assert client.get_model_version(summary["model_name"], summary["model_version"]).status == "READY"
    assert "no int8 kernels here" in client.get_run(summary["mlflow_run_id"]).data.tags["serving.int8"]
    assert not any(t.get("derived_from_version") == summary["model_version"]
                   for t in _versions(summary["model_name"]).values())
