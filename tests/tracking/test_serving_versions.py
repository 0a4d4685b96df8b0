"""Serving precisions through MLflow: the pyfunc predicts in the precision logged with it or the one a load (score,
`bertflow serve`) asks for, and a gated precision becomes its own registered version with its card
(tracking.packaging, tracking.serving, tracking.scoring, tracking.serving_versions)."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from bert_core import BertConfig, BertEncoder, BertTokenizer, get_family, save_finetuned
from bert_core.precision_gate import GateResult
from tests.mlflow_store import sqlite_store
from tests.tiny_models import TINY, VOCAB
from tracking import serving
from tracking.packaging import log_model
from tracking.pinning import pin_model
from tracking.scoring import load_model
from tracking.serving import serving_environment
from tracking.serving_versions import register_precision_version

QUANTIZED = torch.ao.nn.quantized.dynamic.Linear
ROWS = [{"text_a": "the movie was good", "text_b": None, "label": "pos"}]
REQUEST = pd.DataFrame({"text": ["the film was bad", "very good fun", "john visited paris"]})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sqlite tracking + registry store for this module; the global MLflow URIs are reset afterwards."""
    yield from sqlite_store(tmp_path_factory, "serving-precision")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("model")
    (root / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    torch.manual_seed(0)
    model = get_family("single_classification").build_model(BertEncoder(BertConfig(**TINY)), ["neg", "pos"]).eval()
    meta = {"family": "single_classification", "label_names": ["neg", "pos"], "task": "demo", "max_seq_length": 128}
    return save_finetuned(model, BertTokenizer.from_vocab(root / "vocab.txt"), root / "model", meta)


@pytest.fixture(scope="module")
def registered(store, model_dir):
    """(name, fp32 version, run id) of an fp32 model registered as version 1."""
    with mlflow.start_run() as run:
        info = log_model(model_dir, "single_classification", ROWS)
    name = "bert-demo-serving"
    version = mlflow.register_model(info.model_uri, name).version
    return name, str(version), run.info.run_id


def _predictor(model):
    return model.unwrap_python_model().predictor


def _quantized(model) -> int:
    return sum(isinstance(m, QUANTIZED) for m in _predictor(model).model.modules())


def test_the_pyfunc_predicts_in_the_precision_logged_with_it(store, model_dir):
    with mlflow.start_run():
        fp32 = mlflow.pyfunc.load_model(log_model(model_dir, "single_classification", ROWS).model_uri)
        int8 = mlflow.pyfunc.load_model(log_model(model_dir, "single_classification", ROWS, precision="int8",
                                                  name="model-int8").model_uri)
    assert _predictor(fp32).precision == "fp32" and _quantized(fp32) == 0
    assert _predictor(int8).precision == "int8" and _quantized(int8) == 10
    a, b = fp32.predict(REQUEST), int8.predict(REQUEST)
    assert list(b.columns) == list(a.columns) and (b["score"] - a["score"]).abs().max() < 0.02


def test_a_load_and_the_server_environment_override_the_logged_precision(registered, monkeypatch):
    name, version, _ = registered
    uri = f"models:/{name}/{version}"
    pinned = pin_model(uri)
    assert _predictor(load_model(pinned)[0]).precision == "fp32"
    assert _quantized(load_model(pinned, "int8")[0]) == 10, "bertflow score --precision int8"
    _, env = serving_environment(uri, precision="int8")
    assert json.loads(env["MLFLOW_PYFUNC_INFERENCE_CONFIG"]) == {"serving_precision": "int8"}
    assert "MLFLOW_PYFUNC_INFERENCE_CONFIG" not in serving_environment(uri)[1], "no --precision: the logged one"
    # `mlflow models serve` loads the model with this environment: what it predicts in
    monkeypatch.setenv("MLFLOW_PYFUNC_INFERENCE_CONFIG", env["MLFLOW_PYFUNC_INFERENCE_CONFIG"])
    assert _predictor(mlflow.pyfunc.load_model(uri)).precision == "int8"


def test_predict_rows_loads_the_model_in_the_precision_asked(registered, monkeypatch):
    """`bertflow predict --precision int8`: the model predicts quantized; without it, in the logged fp32."""
    name, version, _ = registered
    loaded = []
    real_load = mlflow.pyfunc.load_model
    monkeypatch.setattr(mlflow.pyfunc, "load_model", lambda *a, **kw: loaded.append(real_load(*a, **kw)) or loaded[-1])
    rows = [{"text": t} for t in REQUEST["text"]]
    fp32 = serving.predict_rows(f"models:/{name}/{version}", rows)
    int8 = serving.predict_rows(f"models:/{name}/{version}", rows, precision="int8")
    assert [_quantized(m) for m in loaded] == [0, 10]
    assert len(int8) == len(fp32) == 3 and (int8["score"] - fp32["score"]).abs().max() < 0.02


def _gate(passed: bool) -> GateResult:
    return GateResult("int8", passed, "accuracy", 0.9, 0.8975 if passed else 0.85, -0.0025 if passed else -0.05,
                      -0.004 if passed else -0.07, 0.0 if passed else -0.03, 0.95, 0.005, 400,
                      "int8 vs fp32, paired bootstrap on 400 dev rows: " + ("passed" if passed else "refused"))


def test_a_passed_gate_registers_its_own_version_with_tags_and_card(registered, model_dir):
    name, fp32_version, run_id = registered
    client = MlflowClient()
    with mlflow.start_run(run_id=run_id):
        version = register_precision_version(_gate(True), name, fp32_version, model_dir, "single_classification",
                                             ROWS, "body of the card: call <MODEL_URI>", "demo task")
    mv = client.get_model_version(name, version)
    assert version != fp32_version and mv.tags["precision"] == "int8"
    assert mv.tags["derived_from_version"] == fp32_version and mv.tags["gate.passed"] == "true"
    assert float(mv.tags["gate.low"]) == -0.004 and float(mv.tags["gate.margin"]) == 0.005
    assert client.get_model_version(name, fp32_version).tags["serving.int8"] == version
    card = mv.description
    assert "**Serving precision**: int8" in card and "| fp32 (v1) | 0.9000 |" in card
    assert "| int8 (this version) | 0.8975 |" in card and f"models:/{name}/{version}" in card
    served = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    assert _quantized(served) == 10, "the version serves in its precision"


def test_a_refused_gate_registers_nothing(registered, model_dir):
    name, fp32_version, run_id = registered
    before = {v.version for v in MlflowClient().search_model_versions(f"name = '{name}'")}
    with mlflow.start_run(run_id=run_id), pytest.raises(ValueError, match="did not pass the gate"):
        register_precision_version(_gate(False), name, fp32_version, model_dir, "single_classification", ROWS,
                                   "body", "demo task")
    assert {v.version for v in MlflowClient().search_model_versions(f"name = '{name}'")} == before
