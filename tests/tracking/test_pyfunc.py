"""BertPyfunc end to end: a tiny random model per family, saved by bert_core, logged through
``tracking.packaging.log_model``, loaded back with ``mlflow.pyfunc.load_model`` and asked for predictions."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException

from bert_core import BertConfig, BertEncoder, BertTokenizer, get_family, save_finetuned
from tests.mlflow_store import sqlite_store
from tests.tiny_models import TINY, VOCAB
from tracking.packaging import log_model
from tracking.registry import register_version
from tracking.request_check import MAX_TEXT_CHARS

LABELS = {
    "single_classification": ["neg", "pos"],
    "pair_classification": ["entailment", "neutral", "contradiction"],
    "pair_regression": None,
    "token_tagging": ["O", "B-PER", "B-LOC"],
    "extractive_qa": None,
}
DISPLAY = {"neg": "negative", "pos": "positive"}
EXAMPLE_ROWS = {
    "single_classification": [{"text_a": "the movie was good", "text_b": None, "label": "pos", "_source": "x:1"}],
    "pair_classification": [{"text_a": "john visited paris", "text_b": "john played", "label": "neutral"}],
    "pair_regression": [{"text_a": "a good film", "text_b": "a great movie", "label": 4.2}],
    "token_tagging": [{"tokens": ["john", "visited", "paris"], "tags": ["B-PER", "O", "B-LOC"]}],
    "extractive_qa": [{"id": "q1", "title": "t", "question": "who visited paris ?", "context": "john visited paris .",
                       "answers": {"text": ["john"], "answer_start": [0]}}],
}
REQUESTS = {
    "single_classification": pd.DataFrame({"text": ["the film was bad", "very good fun"]}),
    "pair_classification": pd.DataFrame({"text_a": ["john visited paris"], "text_b": ["john visited london"]}),
    "pair_regression": pd.DataFrame({"text_a": ["a good film", "the city"], "text_b": ["a bad movie", "a river"]}),
    "token_tagging": pd.DataFrame({"tokens": [["john", "visited", "london"], ["the", "cafe"]]}),
    "extractive_qa": pd.DataFrame({"question": ["who played ?"], "context": ["john played in the city of paris ."]}),
}
OUTPUT_COLUMNS = {
    "single_classification": ["label", "label_value", "score"], "pair_classification": ["label", "label_value", "score"],
    "pair_regression": ["score"], "token_tagging": ["tags"], "extractive_qa": ["answer", "start", "end", "score"],
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sqlite tracking + registry store for this module; the global MLflow URIs are reset afterwards."""
    yield from sqlite_store(tmp_path_factory, "pyfunc")


@pytest.fixture(scope="module")
def logged(store, tmp_path_factory):
    """family -> (ModelInfo, the model loaded back through MLflow), logged once per module."""
    root = tmp_path_factory.mktemp("models")
    (root / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer.from_vocab(root / "vocab.txt")
    out = {}
    for family, labels in LABELS.items():
        torch.manual_seed(0)
        model = get_family(family).build_model(BertEncoder(BertConfig(**TINY)), labels).eval()
        meta = {"family": family, "label_names": labels, "task": "demo", "max_seq_length": 128}
        if family == "extractive_qa":  # windows must hold the default 64-token question budget
            meta |= {"doc_stride": 32, "max_answer_length": 10}
        if family == "single_classification":  # what a spec's display_names become in the model's meta
            meta |= {"display_names": DISPLAY}
        folder = save_finetuned(model, tokenizer, root / family, meta)
        with mlflow.start_run(run_name=family):
            info = log_model(folder, family, EXAMPLE_ROWS[family])
        out[family] = (info, mlflow.pyfunc.load_model(info.model_uri))
    return out


@pytest.mark.parametrize("family", list(LABELS))
def test_predicts_a_dataframe_per_family(logged, family):
    _, model = logged[family]
    request = REQUESTS[family]
    result = model.predict(request)
    assert isinstance(result, pd.DataFrame) and list(result.columns) == OUTPUT_COLUMNS[family]
    assert len(result) == len(request)
    if family in ("single_classification", "pair_classification"):
        assert set(result["label_value"]) <= set(LABELS[family]) and result["score"].between(0, 1).all()
        shown = {value: DISPLAY.get(value, value) if family == "single_classification" else value
                 for value in LABELS[family]}
        assert list(result["label"]) == [shown[value] for value in result["label_value"]], "people read display names"
    if family == "token_tagging":
        assert [len(t) for t in result["tags"]] == [3, 2] and set(result["tags"][0]) <= set(LABELS[family])
    if family == "extractive_qa":
        context = request["context"][0]
        assert context[result["start"][0]:result["end"][0]] == result["answer"][0]


@pytest.mark.parametrize(("family", "request_frame"), [
    ("pair_classification", pd.DataFrame({"text": ["john visited paris"], "text_pair": ["john played"]})),
    ("token_tagging", pd.DataFrame({"text": ["john visited  london"]})),
    ("single_classification", pd.DataFrame({"text_a": ["good fun"]})),
    # JSON records that mix names become one frame with NaN gaps; each row uses the name it has
    ("pair_classification", pd.DataFrame([{"text_a": "john", "text_b": "paris"}, {"text": "a", "text_pair": "b"}])),
])
def test_alternative_column_names(logged, family, request_frame):
    result = logged[family][1].predict(request_frame)
    assert list(result.columns) == OUTPUT_COLUMNS[family]
    if family == "token_tagging":
        assert len(result["tags"][0]) == 3  # whitespace split, repeated spaces ignored


def test_logged_model_holds_safetensors_and_code_and_loads_without_unpickling(logged, monkeypatch):
    info, _ = logged["single_classification"]
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri))
    assert list(local.glob("artifacts/*/model.safetensors")) and list(local.glob("artifacts/*/tokenizer.json"))
    assert (local / "code" / "bert_core" / "predict.py").is_file() and (local / "code" / "tracking").is_dir()
    assert not (local / "code" / "tasks").exists(), "serving needs no Prefect task code"
    assert not list(local.rglob("*.pkl")), "models from code: no pickle is written"
    assert "model_code_path" in (local / "MLmodel").read_text()
    # With pickle loading forbidden, MLflow refuses any model that holds one; ours loads and predicts.
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    again = mlflow.pyfunc.load_model(info.model_uri)
    assert list(again.predict(REQUESTS["single_classification"])["label"]) == list(
        logged["single_classification"][1].predict(REQUESTS["single_classification"])["label"])
    requirements = (local / "requirements.txt").read_text()
    assert "torch==" in requirements and "mlflow==" in requirements and "prefect" not in requirements
    assert info.signature.inputs.input_names()[:1] == ["text"]


@pytest.mark.parametrize(("family", "frame", "words"), [
    ("single_classification", pd.DataFrame({"sentence": ["good"]}), ["'text'", "'text_a'"]),
    ("pair_classification", pd.DataFrame({"text_a": ["good"]}), ["'text_b'"]),
    ("single_classification", pd.DataFrame({"text": ["good", "  "]}), ["row 1", "'text'", "empty"]),
    ("single_classification", pd.DataFrame({"text": ["good", None]}), ["row 1", "'text'"]),
    ("extractive_qa", pd.DataFrame({"question": ["who ?"], "context": ["a" * (MAX_TEXT_CHARS + 1)]}),
     ["row 0", "'context'", "limit"]),
    ("single_classification", pd.DataFrame({"text": ["a" * (MAX_TEXT_CHARS + 1)]}),
     ["row 0", "'text'", "20,001 characters; the limit is 20,000", "`long_text: {stride: 64}` in the task spec"]),
    ("token_tagging", pd.DataFrame({"tokens": [["john"], []]}), ["row 1", "'tokens'"]),
    ("token_tagging", pd.DataFrame({"text": [""]}), ["row 0", "'text'", "empty"]),
])
def test_malformed_input_raises_invalid_parameter_naming_the_column(logged, family, frame, words):
    with pytest.raises(MlflowException) as err:
        logged[family][1].predict(frame)
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"
    for word in words:
        assert word in err.value.message
    if family == "extractive_qa":
        assert "long_text" not in err.value.message, "QA reads long passages in its own windows already"


def test_a_number_where_text_belongs_is_invalid(logged):
    with pytest.raises(MlflowException) as err:
        logged["single_classification"][1].predict(pd.DataFrame({"text": ["good", 5]}))
    assert err.value.error_code == "INVALID_PARAMETER_VALUE" and "text" in err.value.message


def test_a_model_takes_its_training_specs_column_names_too(store, tmp_path):
    """A model whose meta keeps its spec's column names (`spec_columns`, saved by `fit`) takes requests in them
    as well as in its own; its signature lets them through; a missing column names them. (Models saved without
    them: every test above.)"""
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    torch.manual_seed(0)
    family = "pair_classification"
    model = get_family(family).build_model(BertEncoder(BertConfig(**TINY)), LABELS[family]).eval()
    meta = {"family": family, "label_names": LABELS[family], "task": "demo", "max_seq_length": 128,
            "spec_columns": {"text_a": ["premise"], "text_b": ["hypothesis", "text"], "label": ["gold"]}}
    folder = save_finetuned(model, BertTokenizer.from_vocab(tmp_path / "vocab.txt"), tmp_path / "model", meta)
    with mlflow.start_run(run_name="spec columns"):
        info = log_model(folder, family, EXAMPLE_ROWS[family])
    served = mlflow.pyfunc.load_model(info.model_uri)
    assert set(info.signature.inputs.input_names()) == {"text_a", "text", "text_b", "text_pair", "premise", "hypothesis"}
    pairs = [("john visited paris", "john visited london"), ("a good film", "the plot")]
    own = served.predict(pd.DataFrame({"text_a": [a for a, _ in pairs], "text_b": [b for _, b in pairs]}))
    spec = served.predict(pd.DataFrame({"premise": [a for a, _ in pairs], "hypothesis": [b for _, b in pairs]}))
    pd.testing.assert_frame_equal(spec, own)
    with pytest.raises(MlflowException) as err:
        served.predict(pd.DataFrame({"premise": ["john"]}))
    assert "missing input column 'text_b'" in err.value.message
    assert "'text_b' or 'text_pair' or 'hypothesis'" in err.value.message, "`text` is text_a's own name"


@pytest.mark.slow
def test_served_champion_answers_400_on_bad_input_and_stays_up(logged, store, tmp_path):
    """`mlflow models serve -m models:/<name>@champion --env-manager local`, as the README tells people."""
    info, _ = logged["pair_classification"]
    register_version(info.model_uri, "bert-serve-test", info.run_id, {"acc": 0.5}, "acc", "fp")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bin_dir = str(Path(sys.executable).parent)  # the server execs `uvicorn` from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed in finally
    server = subprocess.Popen(
        [str(Path(bin_dir) / "mlflow"), "models", "serve", "-m", "models:/bert-serve-test@champion",
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while not _get(base + "/ping"):
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.5)
        good = {"dataframe_records": [{"text_a": "john visited paris", "text_b": "the city"}]}
        assert _post(base, good)[0] == 200
        status, body = _post(base, {"dataframe_records": [{"text_a": "john", "text_b": ""}]})
        assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE" and "'text_b'" in body["message"]
        status, body = _post(base, {"dataframe_records": [{"text_a": "john"}]})
        assert status == 400 and "'text_b'" in body["message"]
        status, body = _post(base, good)
        assert status == 200 and set(body["predictions"][0]) == {"label", "label_value", "score"}
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn child, started above
        server.wait(30)
        log.close()


def _get(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def _post(base: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(base + "/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())
