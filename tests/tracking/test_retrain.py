"""Retrain on change, the registry side, on a real (temporary sqlite) MLflow store: what a fine-tune was trained
on goes with its run and its version, and a new fine-tune is compared with the champion's (and with every
version's identity) before anything is trained. The flow end to end: tests/flows/test_retrain.py."""

from __future__ import annotations

import json
import math

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from bert_core.spec import load_spec
from bert_core.training import TrainConfig
from bert_core.training.identity import FinetuneIdentity
from tests.mlflow_store import sqlite_store
from tracking.leaderboard import leaderboard_row
from tracking.model_card import why_this_version
from tracking.registry import register_version
from tracking.retrain import (
    CHANGED_SINCE_TAG,
    CHANGES_TAG,
    IDENTITY_JSON,
    IDENTITY_TAG,
    compare_with_registry,
    read_version,
    record_comparison,
    version_tags,
)

SPEC = load_spec("sst2")
FINGERPRINT = "3f2a9c01b7d4" + "0" * 52


def identity(data_root: str = "/data/a", fingerprint: str = FINGERPRINT, **training) -> FinetuneIdentity:
    cfg = TrainConfig(**training).with_defaults(SPEC.defaults)
    return FinetuneIdentity.of(SPEC, cfg, None, data_root=data_root).with_data(fingerprint, "abc1234")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sqlite tracking + registry store shared by this module; each test registers under its own name."""
    yield from sqlite_store(tmp_path_factory, "retrain")


@pytest.fixture
def name(store, request):
    return "bert-" + request.node.name


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


def register(name: str, score: float, trained_on: FinetuneIdentity | None) -> str:
    """A run that logged a trivial model (and, unless None, compared `trained_on` with the registry, as the
    finetune flow does), registered under `name` as the register task does; returns the version."""
    with mlflow.start_run() as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=["mlflow"],
                                       input_example=pd.DataFrame({"x": [1.0]}))
    tags = {}
    if trained_on is not None:
        record_comparison(run.info.run_id, trained_on, compare_with_registry(name, trained_on))
        tags = version_tags(run.info.run_id)
    return register_version(info.model_uri, name, run.info.run_id, {"accuracy": score}, "accuracy", "fp",
                            tags=tags).version


def test_with_no_champion_there_is_nothing_to_compare(name):
    comparison = compare_with_registry(name, identity())
    assert comparison.champion is None and comparison.changes == [] and comparison.unchanged is None
    assert comparison.changed_since == "none"


def test_the_champions_identity_equal_means_unchanged_even_from_another_folder(name):
    register(name, 0.8, identity())
    same = compare_with_registry(name, identity())
    assert same.unchanged is not None and same.unchanged.uri == f"models:/{name}/1" == same.champion.uri
    assert same.unchanged.aliases == ["champion"] and same.unchanged.metrics == {"accuracy": 0.8}
    assert same.unchanged.identity == identity()
    # The same bytes under another data root are the same data (the fingerprint says so).
    moved = compare_with_registry(name, identity(data_root="/data/b"))
    assert moved.unchanged is not None and moved.changes == []


def test_what_changed_since_the_champion_is_said_in_words(name):
    register(name, 0.8, identity())
    changed = compare_with_registry(name, identity(fingerprint="8e1d0c55aa29" + "0" * 52, learning_rate=5e-5))
    assert changed.unchanged is None and changed.champion.version == "1"
    assert changed.changes == ["learning_rate changed (2e-05 -> 5e-05)",
                               "the data changed (3f2a9c01b7d4 -> 8e1d0c55aa29)"]


def test_a_version_of_the_same_identity_that_lost_to_the_champion_is_not_trained_again(name):
    """A weekly run whose recipe is not the champion's: once registered (as challenger), the same fine-tune
    again would give the same model."""
    register(name, 0.9, identity())
    weekly = identity(learning_rate=5e-5)
    assert register(name, 0.7, weekly) == "2"
    again = compare_with_registry(name, weekly)
    assert again.champion.version == "1" and again.changes == ["learning_rate changed (2e-05 -> 5e-05)"]
    assert again.unchanged is not None and again.unchanged.version == "2" and again.unchanged.aliases == ["challenger"]


def test_a_champion_that_recorded_no_identity_is_retrained_and_says_why(name):
    register(name, 0.8, None)  # registered before bertflow kept identities
    comparison = compare_with_registry(name, identity())
    assert comparison.unchanged is None
    assert comparison.changes == [f"models:/{name}/1 records no fine-tune identity (registered before bertflow "
                                  "kept one)"]


def test_the_run_and_its_version_keep_the_identity_and_what_changed(name):
    register(name, 0.8, identity())
    version = register(name, 0.9, identity(learning_rate=5e-5))
    client = MlflowClient()
    tags = client.get_model_version(name, version).tags
    run_tags = client.get_run(client.get_model_version(name, version).run_id).data.tags
    assert tags[IDENTITY_TAG] == run_tags[IDENTITY_TAG] == identity(learning_rate=5e-5).key()
    assert FinetuneIdentity.from_json(json.loads(tags[IDENTITY_JSON])) == identity(learning_rate=5e-5)
    assert tags[CHANGED_SINCE_TAG] == run_tags[CHANGED_SINCE_TAG] == f"models:/{name}/1"
    assert tags[CHANGES_TAG] == "learning_rate changed (2e-05 -> 5e-05)"
    assert read_version(f"models:/{name}/{version}").identity == identity(learning_rate=5e-5)
    first = client.get_model_version(name, "1").tags
    assert (first[CHANGED_SINCE_TAG], first[CHANGES_TAG]) == ("none", "none")


def test_the_cards_line_says_why_the_version_was_trained():
    assert why_this_version(None, None) == ""  # a run of an older bertflow
    assert "no champion" in why_this_version("none", "none")
    assert why_this_version("models:/bert-sst2/1", "the data changed (a -> b)") == \
        "**Why this version**: since models:/bert-sst2/1, the data changed (a -> b)."
    assert "nothing changed since models:/bert-sst2/1" in why_this_version("models:/bert-sst2/1", "none")


def test_an_unchanged_task_is_a_leaderboard_row_of_its_own():
    summary = {"task": "sst2", "family": "single_classification", "primary_metric": "accuracy", "score": 0.91,
               "metrics": {"eval_accuracy": 0.91, "eval_f1": 0.9}, "train_seconds": 0.0, "examples_per_second": 0.0,
               "model_name": "bert-sst2", "model_version": "3", "alias": "champion", "champion": None,
               "mlflow_run_id": "r", "unchanged_since": "models:/bert-sst2/3"}
    row = leaderboard_row("sst2", summary)
    assert (row["status"], row["model"], row["alias"], row["champion"], row["score"]) == \
        ("unchanged", "bert-sst2 v3", "champion", "", 0.91)
    trained = leaderboard_row("sst2", {**summary, "unchanged_since": None, "champion": True})
    assert (trained["status"], trained["champion"]) == ("trained", "yes")
    assert leaderboard_row("sst2", error="boom")["status"] == "failed"
    assert math.isnan(leaderboard_row("sst2", {**summary, "score": math.nan})["score"])
