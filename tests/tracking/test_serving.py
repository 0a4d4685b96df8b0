"""The served pyfunc (`mlflow models serve -m models:/<name>/<version> --env-manager local` on loopback)
answers malformed requests with a 4xx and a message, stays up, and serves a bounded load with no errors.

A tiny random model per family (classification, tagging, QA) is logged with `tracking.packaging.log_model`,
registered, and served by a real server subprocess (bench/serving_load.py `serve`). After every bad
request a good one must get 200 from the same process. The load test is the small version of
`python bench/serving_load.py --serve` (docs/reliability.md).
"""

from __future__ import annotations

import json

import mlflow
import pytest
import torch

from bench.serving_load import post, run_load, serve
from bert_core import BertConfig, BertEncoder, BertTokenizer, get_family, save_finetuned
from tests.tiny_models import TINY, VOCAB
from tracking.packaging import log_model
from tracking.store import configure_tracking

pytestmark = pytest.mark.slow  # one server start (~15 s) per family

LABELS = {"single_classification": ["neg", "pos"], "token_tagging": ["O", "B-PER", "B-LOC"], "extractive_qa": None}
EXAMPLES = {
    "single_classification": [{"text_a": "the movie was good", "text_b": None}],
    "token_tagging": [{"tokens": ["john", "visited", "paris"]}],
    "extractive_qa": [{"id": "q1", "question": "who visited paris ?", "context": "john visited paris ."}],
}
GOOD = {
    "single_classification": {"dataframe_records": [{"text": "a good film"}]},
    "token_tagging": {"dataframe_records": [{"tokens": ["john", "visited", "london"]}]},
    "extractive_qa": {"dataframe_records": [{"question": "who played ?", "context": "john played in paris ."}]},
}
LONG = "good " * 20_000  # 100,000 characters
NOT_JSON = b'{"dataframe_records": [{"text": "a good film"'
# family -> [(what, body: dict | bytes, expected status, substrings of the message)]
MALFORMED = {
    "single_classification": [
        ("missing column", {"dataframe_records": [{"sentence": "a good film"}]}, 400,
         ["missing input column 'text'", "expects columns 'text' or 'text_a'"]),
        ("a number for the text", {"dataframe_records": [{"text": 5}]}, 400,
         ["row 0, column 'text'", "expected a string, got 5"]),
        ("a list for the text", {"dataframe_records": [{"text": ["a", "b"]}]}, 400, ["row 0, column 'text'", "expected a string"]),
        ("an object for the text", {"dataframe_records": [{"text": {"a": 1}}]}, 400, ["row 0, column 'text'"]),
        ("null text", {"dataframe_records": [{"text": None}]}, 400, ["row 0, column 'text'", "missing value"]),
        ("empty string", {"dataframe_records": [{"text": ""}]}, 400, ["row 0, column 'text'", "the text is empty"]),
        ("blank string", {"dataframe_records": [{"text": "  \t "}]}, 400, ["the text is empty"]),
        ("an empty string in row 2", {"dataframe_records": [{"text": "fun"}, {"text": ""}]}, 400, ["row 1, column 'text'"]),
        ("100,000-character text", {"dataframe_records": [{"text": LONG}]}, 400,
         ["row 0, column 'text'", "100,000 characters", "the limit is 20,000", "`long_text: {stride: 64}`"]),
        ("no rows", {"dataframe_records": []}, 400, ["missing input column 'text'"]),
        ("bad JSON body", NOT_JSON, 400, ["valid JSON", "Expecting ',' delimiter"]),
        ("empty body", b"", 400, ["valid JSON"]),
        ("not UTF-8", b"\xff\xfe\x00{", 400, ["valid JSON"]),
        ("a JSON list", [{"text": "a good film"}], 400, ["JSON dictionary", "Received a list"]),
        ("an unknown top-level key", {"rows": [{"text": "a good film"}]}, 400, ["dataframe_records"]),
        ("ragged dataframe_split", {"dataframe_split": {"columns": ["text"], "data": [["a"], ["b", "c"]]}}, 400,
         ["dataframe_split", "1 columns passed"]),
    ],
    "token_tagging": [
        # MLflow's signature check answers this one, naming the column and the type it wanted
        ("words as numbers", {"dataframe_records": [{"tokens": [1, 2]}]}, 400, ["column tokens", "Array(string)"]),
        ("an empty word", {"dataframe_records": [{"tokens": ["john", " "]}]}, 400,
         ["row 0, column 'tokens'", "word 1", "non-empty string"]),
        ("no words", {"dataframe_records": [{"tokens": []}]}, 400, ["row 0, column 'tokens'", "non-empty list"]),
        ("100,000-character text", {"dataframe_records": [{"text": LONG}]}, 400, ["row 0, column 'text'", "limit"]),
        ("missing column", {"dataframe_records": [{"words": ["john"]}]}, 400, ["missing input column 'tokens'"]),
    ],
    "extractive_qa": [
        ("missing context", {"dataframe_records": [{"question": "who ?"}]}, 400, ["missing input column 'context'"]),
        ("100,000-character context", {"dataframe_records": [{"question": "who ?", "context": LONG}]}, 400,
         ["row 0, column 'context'", "100,000 characters"]),
        ("empty question", {"dataframe_records": [{"question": "", "context": "john played ."}]}, 400,
         ["row 0, column 'question'", "empty"]),
        ("a number for the context", {"dataframe_records": [{"question": "who ?", "context": 3.5}]}, 400,
         ["row 0, column 'context'", "expected a string"]),
    ],
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        uri = configure_tracking()
        # Artifacts in tmp too: with a sqlite store MLflow would otherwise put them in ./mlruns. (No
        # mlflow.set_experiment: it would leave MLFLOW_EXPERIMENT_ID set for later tests.)
        yield root, uri, mlflow.create_experiment("serving-test", (root / "artifacts").as_uri())
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


@pytest.fixture(scope="module", params=list(LABELS))
def served(request, store):
    """(family, base URL, server process) of a registered tiny model served on loopback."""
    family, (root, uri, experiment_id) = request.param, store
    (root / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    torch.manual_seed(0)
    model = get_family(family).build_model(BertEncoder(BertConfig(**TINY)), LABELS[family]).eval()
    meta = {"family": family, "label_names": LABELS[family], "task": "demo", "max_seq_length": 128}
    if family == "extractive_qa":
        meta |= {"doc_stride": 32, "max_answer_length": 10}
    folder = save_finetuned(model, BertTokenizer.from_vocab(root / "vocab.txt"), root / family, meta)
    name = f"bert-serving-{family.replace('_', '-')}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=family):
        info = log_model(folder, family, EXAMPLES[family], registered_model_name=name)
    with serve(f"models:/{name}/{info.registered_model_version}", uri, root / f"{family}.log") as (base, server):
        yield family, base, server


def _post(base: str, body) -> tuple[int, dict | str]:
    status, raw = post(base + "/invocations", body if isinstance(body, bytes) else json.dumps(body).encode())
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def test_malformed_requests_get_4xx_with_a_message_and_the_server_stays_up(served):
    family, base, server = served
    failures = []
    for what, body, expected_status, substrings in MALFORMED[family]:
        status, answer = _post(base, body)
        message = answer.get("message", "") if isinstance(answer, dict) else answer
        if status != expected_status or not all(s in message for s in substrings):
            failures.append(f"{what}: HTTP {status}, {message[:300]!r}")
        good_status, good = _post(base, GOOD[family])
        if good_status != 200 or server.poll() is not None:
            failures.append(f"after {what}: the good request got HTTP {good_status} ({good!r:.200})")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("served", ["single_classification"], indirect=True)  # the same for every family
def test_a_wrong_content_type_is_415(served):
    family, base, server = served
    import urllib.error
    import urllib.request

    request = urllib.request.Request(base + "/invocations", data=b"a good film", headers={"Content-Type": "text/plain"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=30)
    assert err.value.code == 415 and b"application/json" in err.value.read()
    assert _post(base, GOOD[family])[0] == 200


# One family is enough here; `python bench/serving_load.py --serve` measures the real MiniLM weights.
@pytest.mark.parametrize("served", ["single_classification"], indirect=True)
def test_a_bounded_load_gets_no_errors(served):
    family, base, server = served
    texts = ["a good film", "the plot is thin and the jokes fall flat", "john visited paris", "boring"]
    bodies = [json.dumps({"dataframe_records": [{"text": t}]}).encode() for t in texts]
    result = run_load(base, bodies, requests=100, concurrency=4)
    assert result.error_count == 0, result.errors.most_common(3)
    assert len(result.latencies_ms) == 100 and server.poll() is None
    print(result.summary())
