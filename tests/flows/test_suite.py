"""The suite flow on real data and the packaged weights, with tiny budgets: three families, two at a time,
plus a task whose files do not exist. The leaderboard must come out anyway, as a Prefect table artifact,
a markdown file and a CSV in an MLflow run, and agree with the fine-tunes' own MLflow runs."""

from __future__ import annotations

import csv
import io
import json

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from prefect.artifacts import Artifact

from bert_core.training import TrainConfig
from flows.params import FinetuneParams, SuiteParams
from flows.suite import default_tasks, suite
from tracking.leaderboard import COLUMNS

pytestmark = pytest.mark.integration

TINY_BUDGET = TrainConfig(max_train_samples=64, max_eval_samples=48, epochs=1, max_seq_length=64, batch_size=16,
                          learning_rate=1e-4, progress_bar=False)
FAMILIES = {"sst2": "single_classification", "stsb": "pair_regression", "conll2003_ner": "token_tagging"}
MISSING = """name: missing_files
family: single_classification
local: {format: tsv, files: {train: no_such_folder/train.tsv, eval: no_such_folder/dev.tsv}}
columns: {text_a: sentence, label: label}
labels: ["0", "1"]
metrics: [accuracy]
primary_metric: accuracy
"""


def max_overlap(intervals: list[tuple[int, int]]) -> int:
    """The most intervals (start, end) open at one instant."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    open_now = most = 0
    for _, change in events:
        open_now += change
        most = max(most, open_now)
    return most


@pytest.fixture(scope="module")
def suite_run(real_data_flow_root):
    missing = real_data_flow_root / "missing_files.yaml"
    missing.write_text(MISSING, encoding="utf-8")
    tasks = [*FAMILIES, str(missing)]
    params = FinetuneParams(training=TINY_BUDGET, run_root=str(real_data_flow_root / "runs"))
    state = suite(SuiteParams(tasks=tasks, base=params, max_concurrency=2), return_state=True)
    return {"state": state, "root": real_data_flow_root, "tasks": tasks}


def test_a_failed_task_fails_the_suite_after_the_others_finished(suite_run):
    state = suite_run["state"]
    assert state.is_failed()
    error = str(state.result(raise_on_failure=False))
    assert "1 of 4 task(s) failed: ['missing_files']" in error and "leaderboard.md" in error


def test_the_leaderboard_artifact_has_a_row_per_task(suite_run):
    artifact = Artifact.get("suite-leaderboard")
    assert artifact is not None and artifact.type == "table"
    data = artifact.data if isinstance(artifact.data, list) else json.loads(artifact.data)
    rows = {row["task"]: row for row in data}
    assert list(rows) == ["sst2", "stsb", "conll2003_ner", "missing_files"]
    for task, family in FAMILIES.items():
        row = rows[task]
        assert row["family"] == family and row["error"] == ""
        assert row["model"] == f"bert-{task} v1" and row["alias"] == "champion" and row["champion"] == "yes"
        assert float(row["train_seconds"]) > 0 and float(row["examples_per_second"]) > 0
    assert rows["stsb"]["primary_metric"] == "pearson" and "eval_spearman=" in rows["stsb"]["secondary_metrics"]
    assert rows["conll2003_ner"]["primary_metric"] == "entity_f1"
    assert "local file not found" in rows["missing_files"]["error"] and rows["missing_files"]["model"] == ""
    assert Artifact.get("suite-leaderboard-md").type == "markdown"


def test_markdown_and_csv_are_in_an_mlflow_run_and_match_the_fine_tunes(suite_run):
    client = MlflowClient()
    experiment = client.get_experiment_by_name("bertflow-suite")
    (run,) = client.search_runs([experiment.experiment_id])
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"leaderboard.md", "leaderboard.csv"} <= logged
    text = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/leaderboard.csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == COLUMNS and [r["task"] for r in rows] == ["sst2", "stsb", "conll2003_ner", "missing_files"]
    for row in rows[:3]:
        finetune_run = client.get_run(row["mlflow_run_id"])
        assert finetune_run.info.status == "FINISHED" and finetune_run.data.tags["task"] == row["task"]
        score = finetune_run.data.metrics[f"eval_{row['primary_metric']}"]
        assert float(row["score"]) == pytest.approx(score, abs=1e-4)
        assert run.data.metrics[f"{row['task']}.{row['primary_metric']}"] == pytest.approx(score, abs=1e-4)
    markdown = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/leaderboard.md")
    assert "| sst2 | single_classification | accuracy |" in markdown and "missing_files" in markdown


def test_at_most_max_concurrency_fine_tunes_ran_at_once(suite_run):
    client = MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments() if e.name.startswith("bertflow-")
                   and e.name != "bertflow-suite"]
    runs = client.search_runs(experiments)
    assert sorted(r.data.tags["task"] for r in runs) == sorted(["conll2003_ner", "missing_files", "sst2", "stsb"])
    intervals = [(r.info.start_time, r.info.end_time) for r in runs]
    assert max_overlap(intervals) == 2, intervals


def test_default_tasks_are_the_glue_tasks_present_then_ner_and_squad(data_dir, tmp_path):
    # The shared data holds every GLUE task but MNLI (hub only).
    assert default_tasks(str(data_dir)) == ["cola", "sst2", "mrpc", "rte", "stsb", "conll2003_ner", "squad"]
    assert default_tasks(str(tmp_path)) == ["conll2003_ner", "squad"]
