"""A binary model's saved decision threshold, applied by every way a registered model answers: `bertflow predict`
(tracking.serving.predict_rows), the served pyfunc (what `bertflow serve` runs) and batch scoring
(tracking.scoring.score_file, what `bertflow score` and the score flow call); and the run params that record the
class weights and the threshold (tracking.training_log.decision_params)."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest

from tests.bert_core.test_imbalance import p1_model
from tests.mlflow_store import sqlite_store
from tracking import scoring, serving
from tracking.packaging import log_model
from tracking.pinning import pin_model
from tracking.registry import register_version
from tracking.training_log import decision_params

ROW = {"text_a": "the movie was good", "text_b": None, "label": "pos", "_source": "x:1"}
TEXTS = ["the movie was good", "a bad film", "fun"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sqlite tracking + registry store for this module; the global MLflow URIs are reset afterwards."""
    yield from sqlite_store(tmp_path_factory, "threshold")


def registered(store, folder, name: str) -> str:
    with mlflow.start_run(run_name=name) as run:
        info = log_model(folder, "single_classification", [ROW])
    return f"models:/{name}/{register_version(info.model_uri, name, run.info.run_id, {'f1': 0.5}, 'f1', 'fp').version}"


@pytest.mark.parametrize(("threshold", "answer"), [(None, "pos"), (0.9, "neg"), (0.75, "pos")])
def test_predict_serve_and_score_apply_the_saved_threshold(store, tmp_path, threshold, answer):
    """The model answers p1 = 0.8 for every text: the most probable label without a threshold, `neg` at 0.9."""
    meta = {} if threshold is None else {"decision_threshold": threshold, "decision_threshold_tuned_for": "f1"}
    uri = registered(store, p1_model(tmp_path, meta), f"bert-threshold-{str(threshold).replace('.', '-')}")
    predicted = serving.predict_rows(uri, [{"text": t} for t in TEXTS])  # bertflow predict
    assert predicted["label_value"].tolist() == [answer] * 3
    assert predicted["score"].tolist() == pytest.approx([0.8 if answer == "pos" else 0.2] * 3)
    served = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"text": TEXTS}))  # what bertflow serve runs
    pd.testing.assert_frame_equal(served, predicted)
    (tmp_path / "texts.csv").write_text("text\n" + "\n".join(TEXTS) + "\n", encoding="utf-8")
    done = scoring.score_file(pin_model(uri), tmp_path / "texts.csv")  # bertflow score, the score flow
    lines = [json.loads(line) for line in open(done["predictions"], encoding="utf-8")]
    assert [line["label_value"] for line in lines] == [answer] * 3


def test_the_run_params_say_the_weights_used_and_the_threshold_applied():
    assert decision_params({"family": "x", "max_seq_length": 32}) == {}
    params = decision_params({"class_weights": {"neg": 0.625, "pos": 2.5}, "decision_threshold": 0.32,
                              "decision_threshold_tuned_for": "f1"})
    assert params == {"class_weights": '{"neg":0.625,"pos":2.5}', "decision_threshold": "0.32",
                      "decision_threshold_tuned_for": "f1"}
    assert decision_params({"decision_threshold": 0.7}) == {"decision_threshold": "0.7"}
