"""Retrain on change through the finetune flow and the suite, on a tiny random model and toy data: one
sequence of runs of the same fine-tune, as a schedule would start them, in one store.

1. the first run trains and registers v1 (no champion to compare with);
2. the same fine-tune again trains nothing, registers nothing and says "no change since models:/.../1";
3. with `force` it trains anyway (v2) and its card says nothing changed;
4. a line added to the training file: it trains (v3), and the run, the version and the card name the change;
   it asks for int8 too, which becomes v4 beside v3;
5. the same again: nothing trained, since v3 (whichever alias v3 got), and its summary names v4;
6. the suite over that task: nothing trained, its leaderboard row says `unchanged`.
"""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient
from prefect.artifacts import Artifact

from bert_core.training import TrainConfig
from flows.finetune import finetune
from flows.params import FinetuneParams, SuiteParams
from flows.suite import suite, summary_from_mlflow
from flows.summary import FinetuneSummary
from tests.tiny_models import write_tiny_checkpoint
from tests.toy_task import write_toy_task

pytest.importorskip("transformers")
TRAINING = TrainConfig(batch_size=16, epochs=1, learning_rate=3e-3, precision="fp32", progress_bar=False, seed=3)
MODEL = "bert-toy_sentiment"


@pytest.fixture(scope="module")
def runs(flow_root) -> dict:
    data, run_root = flow_root / "data", flow_root / "runs"
    spec, tiny = write_toy_task(data), write_tiny_checkpoint(flow_root / "tiny")
    params = FinetuneParams(task=str(spec), data_dir=str(data), pretrained=str(tiny), training=TRAINING,
                            run_root=str(run_root))
    client, seen = MlflowClient(), {}

    def run(step: str, **fields) -> None:
        state = finetune(params.model_copy(update=fields), return_state=True)
        assert state.is_completed(), state.result(raise_on_failure=False)
        seen[step] = {"state": state, "summary": state.result(), "folders": sorted(run_root.glob("*/*")),
                      "versions": sorted(int(v.version) for v in client.search_model_versions(f"name = '{MODEL}'")),
                      "artifact": Artifact.get("toy-sentiment-registry-decision").data}

    run("first")
    run("unchanged")
    run("forced", force=True)
    train = data / "toy" / "train.tsv"
    train.write_text(train.read_text(encoding="utf-8") + "a truly great film\tpos\n", encoding="utf-8")
    # A margin no interval can miss (accuracy - accuracy >= -1): int8 passes, v4 beside v3.
    run("changed", serving_precisions=["int8"], precision_margin=1.0)
    run("unchanged_again")
    leaderboard = suite(SuiteParams(tasks=[str(spec)], base=params), return_state=True)
    return {**seen, "suite": leaderboard, "client": client, "params": params}


def card(runs: dict, step: str) -> str:
    summary = runs[step]["summary"]
    return runs["client"].get_model_version(summary["model_name"], summary["model_version"]).description


def test_the_first_run_trains_and_records_what_it_was_trained_on(runs):
    first, client = runs["first"]["summary"], runs["client"]
    assert first["model_uri"] == f"models:/{MODEL}/1" and first["unchanged_since"] is None
    run_tags = client.get_run(first["mlflow_run_id"]).data.tags
    version_tags = client.get_model_version(MODEL, "1").tags
    assert run_tags["finetune_identity"] == version_tags["finetune_identity"]
    assert run_tags["changed_since"] == "none" and "finetune_identity.json" in version_tags
    assert "**Why this version**: there was no champion to compare with." in card(runs, "first")


def test_an_unchanged_run_trains_nothing_and_registers_nothing(runs):
    unchanged, client = runs["unchanged"], runs["client"]
    summary = unchanged["summary"]
    assert unchanged["state"].message == f"no change since models:/{MODEL}/1"
    assert summary["unchanged_since"] == summary["model_uri"] == f"models:/{MODEL}/1"
    assert summary["decision"] == f"no change since models:/{MODEL}/1" and summary["alias"] == "champion"
    assert unchanged["versions"] == runs["first"]["versions"] == [1], "no new version"
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["skipped"] == "unchanged" and run.data.tags["unchanged_since"] == f"models:/{MODEL}/1"
    assert not any(k.startswith("features.") for k in run.data.params), "nothing tokenized"
    assert "train/loss" not in run.data.metrics and "logged_model_uri" not in run.data.tags, "nothing trained"
    assert unchanged["folders"] == runs["first"]["folders"], "no run folder left behind"
    assert f"no change since models:/{MODEL}/1" in unchanged["artifact"]


def test_a_run_that_trained_nothing_reads_back_from_mlflow_as_the_suites_workers_do(runs):
    unchanged = runs["unchanged"]
    rebuilt = summary_from_mlflow(runs["params"], str(unchanged["state"].state_details.flow_run_id))
    assert rebuilt["unchanged_since"] == f"models:/{MODEL}/1" and rebuilt["mlflow_run_id"] == \
        unchanged["summary"]["mlflow_run_id"]
    assert rebuilt["score"] == unchanged["summary"]["score"] and rebuilt["metrics"] == unchanged["summary"]["metrics"]


def test_force_trains_anyway_and_the_card_says_nothing_changed(runs):
    forced = runs["forced"]["summary"]
    assert forced["unchanged_since"] is None and runs["forced"]["versions"] == [1, 2]
    assert forced["model_uri"] == f"models:/{MODEL}/2"
    tags = runs["client"].get_model_version(MODEL, "2").tags
    assert tags["changed_since"] == f"models:/{MODEL}/1" and tags["changes"] == "none"
    assert f"nothing changed since models:/{MODEL}/1; trained because it was asked to" in card(runs, "forced")


def test_changed_data_trains_and_the_run_the_version_and_the_card_name_the_change(runs):
    changed, client = runs["changed"]["summary"], runs["client"]
    assert changed["model_uri"] == f"models:/{MODEL}/3" and runs["changed"]["versions"] == [1, 2, 3, 4]
    champion = client.get_model_version(MODEL, "3").tags["champion_version"]  # the one it was compared with
    for tags in (client.get_run(changed["mlflow_run_id"]).data.tags, client.get_model_version(MODEL, "3").tags):
        assert tags["changed_since"] == f"models:/{MODEL}/{champion}"
        assert tags["changes"].startswith("the data changed (") and ";" not in tags["changes"]
    assert f"**Why this version**: since models:/{MODEL}/{champion}, the data changed (" in card(runs, "changed")


def test_the_changed_fine_tune_again_is_unchanged_since_its_own_version(runs):
    """v3 may have lost to the champion (its alias then is challenger): the same fine-tune is still not
    trained again."""
    again = runs["unchanged_again"]
    assert again["summary"]["unchanged_since"] == f"models:/{MODEL}/3" and again["versions"] == [1, 2, 3, 4]


def test_an_unchanged_run_names_the_serving_versions_its_version_has(runs):
    """v3's run registered v4 (int8) beside it: the fine-tune that trains nothing since v3 says so wherever it
    says "no change since": its result, `bertflow run`'s text, the suite's rebuild and the markdown artifact."""
    again, client = runs["unchanged_again"], runs["client"]
    assert client.get_model_version(MODEL, "4").tags["derived_from_version"] == "3"
    tag = client.get_run(runs["changed"]["summary"]["mlflow_run_id"]).data.tags["serving.int8"]
    assert tag.startswith(f"registered models:/{MODEL}/4 (")
    line = f"serving precision int8: {tag}"
    assert again["summary"]["serving"] == runs["changed"]["summary"]["serving"] == [line]
    assert f"\n  serving     int8: registered models:/{MODEL}/4 (" in FinetuneSummary(**again["summary"]).text()
    rebuilt = summary_from_mlflow(runs["params"], str(again["state"].state_details.flow_run_id))
    assert rebuilt["unchanged_since"] == f"models:/{MODEL}/3" and rebuilt["serving"] == [line]
    assert f"Registered beside v3 by its run:\n- {line}" in again["artifact"]
    assert runs["unchanged"]["summary"]["serving"] == [], "v1's run asked for none"


def test_the_suite_reports_an_unchanged_task_and_trains_nothing(runs):
    assert runs["suite"].is_completed(), runs["suite"].result(raise_on_failure=False)
    (row,) = runs["suite"].result()
    assert row["status"] == "unchanged" and row["model"] == f"{MODEL} v3" and row["error"] == ""
    versions = runs["client"].search_model_versions(f"name = '{MODEL}'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3, 4]
    assert runs["client"].get_run(row["mlflow_run_id"]).data.tags["skipped"]
