"""The finetune flow end to end, one task per family, on real packaged weights and a few hundred real rows.

Each test runs the whole flow under Prefect's test harness against a temporary MLflow SQLite store and
checks what a user would look at: the finished MLflow run (params, metrics, artifacts), the registered
version with its alias, the pyfunc answering its own input example, and a dev score above a floor.

Floors: each sits well below the score measured with these budgets (noted per task) and above what a
broken pipeline reaches (majority class, constant output, random spans); the numbers are in CASES.
"""

from __future__ import annotations

import shutil
import time

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from prefect import flow
from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
from prefect.testing.utilities import prefect_test_harness

from bert_core.spec import load_spec
from bert_core.training import TrainConfig
from flows.finetune import finetune
from flows.params import FinetuneParams
from tasks.data import download
from tasks.tokenize import tokenize

pytestmark = pytest.mark.integration

# MiniLM-L6 takes a higher learning rate than BERT-base; short sequences keep CPU time down.
FAST = {"learning_rate": 1e-4, "max_seq_length": 128, "progress_bar": False}
CASES = {
    # task: (training budget, primary metric floor, what a broken pipeline gets)
    "sst2": ({"max_train_samples": 400, "max_eval_samples": 200, "epochs": 3}, 0.65, "0.5 (balanced dev)"),
    "stsb": ({"max_train_samples": 400, "max_eval_samples": 200, "epochs": 3}, 0.15, "0 (no correlation)"),
    "rte": ({"max_train_samples": 400, "max_eval_samples": 200, "epochs": 3}, 0.5, "0.54 (majority)"),
    "conll2003_ner": ({"max_train_samples": 300, "max_eval_samples": 200, "epochs": 3}, 0.3, "0 (all O)"),
    "squad": ({"max_train_samples": 300, "max_eval_samples": 200, "epochs": 2, "max_seq_length": 256}, 0.1,
              "~0.05 (random spans)"),
}
CLASSIFICATION_ARTIFACTS = {"evaluation/confusion_matrix.png", "evaluation/per_class_report_eval.json"}
ARTIFACTS = {  # beyond what every run logs
    "sst2": CLASSIFICATION_ARTIFACTS, "rte": CLASSIFICATION_ARTIFACTS, "stsb": set(), "squad": set(),
    "conll2003_ner": {"evaluation/per_class_report_eval.json", "evaluation/predictions_test.jsonl",
                      "evaluation/per_class_report_test.json"},
}


@pytest.fixture(scope="session")
def pipeline_env(tmp_path_factory, data_dir):
    """Prefect test server + an MLflow SQLite store, BERTFLOW_HOME and feature cache, all temporary."""
    root = tmp_path_factory.mktemp("pipeline")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        mp.setenv("BERTFLOW_HOME", str(root / "home"))
        mp.setenv("BERTFLOW_CACHE_DIR", str(root / "features"))
        mp.setenv("BERTFLOW_DATA_DIR", str(data_dir))
        with prefect_test_harness(server_startup_timeout=120), temporary_settings({PREFECT_LOCAL_STORAGE_PATH: root / "prefect-results"}):
            yield root
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


def run_flow(task: str, **training) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()
    summary = finetune(FinetuneParams(task=task, training=TrainConfig(**{**FAST, **training})))
    # Printed for the record (pytest -s): CPU seconds say more than wall time on a shared machine.
    print(f"\n{task} {training}: {summary['primary_metric']} {summary['score']:.3f}, "
          f"{time.perf_counter() - wall:.0f} s wall, {time.process_time() - cpu:.0f} s CPU")
    return summary


def check_run(summary: dict, task: str, floor: float, artifacts: set[str]) -> None:
    """The MLflow run, the registry version and the pyfunc of one finished flow run."""
    client = MlflowClient()
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["task"] == task and run.data.tags["prefect.flow_run_id"] != "none"
    assert run.data.tags["data_fingerprint"] and run.data.tags["code_version"]
    assert run.data.params["training.learning_rate"] == "0.0001" and run.data.params["task"] == task
    primary = summary["primary_metric"]
    assert run.data.metrics[f"eval_{primary}"] == pytest.approx(summary["score"])
    assert {"train/loss", "train/lr", "train/examples_per_second", f"dev_curve/{primary}",
            "train_seconds"} <= set(run.data.metrics)
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    logged |= {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    expected = {"task_spec.yaml", "history.json", "evaluation/predictions_eval.jsonl",
                "evaluation/learning_curve.png"} | artifacts
    assert expected <= logged, f"missing artifacts {expected - logged}"
    assert summary["score"] > floor, f"{task}: {primary} {summary['score']:.3f} is not above the floor {floor}"

    version = client.get_model_version(summary["model_name"], summary["model_version"])
    assert version.run_id == run.info.run_id and version.tags["decision"] == summary["alias"]
    model = mlflow.pyfunc.load_model(f"models:/{summary['model_name']}/{summary['model_version']}")
    example = model.input_example
    assert example is not None and len(model.predict(example)) == len(example)


def test_sst2_champion_then_a_worse_challenger(pipeline_env):
    budget, floor, _ = CASES["sst2"]
    first = run_flow("sst2", **budget)
    check_run(first, "sst2", floor, ARTIFACTS["sst2"])
    assert first["alias"] == "champion" and first["champion"]
    # tokenize built the features, and fit found exactly those (a miss there = mismatched cache keys).
    assert first["feature_cache"] == {"tokenize_hit": False, "fit_hit": True}

    # 1/10 of the rows for one epoch: clearly worse, so it must not take the alias.
    second = run_flow("sst2", **{**budget, "max_train_samples": 40, "epochs": 1})
    assert second["score"] < first["score"]
    assert second["alias"] == "challenger" and not second["champion"]
    assert "different dev data" not in second["decision"]  # same dev rows: the scores are comparable
    champion = MlflowClient().get_model_version_by_alias("bert-sst2", "champion")
    assert champion.version == first["model_version"]


@pytest.mark.parametrize("task", ["stsb", "rte", "conll2003_ner", "squad"])
def test_family_end_to_end(pipeline_env, task):
    budget, floor, _ = CASES[task]
    summary = run_flow(task, **budget)
    check_run(summary, task, floor, ARTIFACTS[task])
    assert summary["alias"] == "champion"


def test_failed_run_is_recorded_and_registers_nothing(pipeline_env, tmp_path):
    """CoNLL has no hub fallback, so an empty data folder fails the download task at once."""
    params = FinetuneParams(task="conll2003_ner", data_dir=str(tmp_path), training=TrainConfig(**FAST))
    state = finetune(params, return_state=True)
    assert state.is_failed() and "local file not found" in str(state.result(raise_on_failure=False))

    client = MlflowClient()
    experiment = client.get_experiment_by_name("bertflow-conll2003_ner")
    runs = client.search_runs([experiment.experiment_id], "attributes.status = 'FAILED'")
    failed = next(r for r in runs if str(tmp_path) in r.data.tags.get("error", ""))
    assert failed.data.tags["error"].startswith("DataError: conll2003_ner: local file not found")
    assert "error.txt" in {a.path for a in client.list_artifacts(failed.info.run_id)}
    assert not client.search_model_versions(f"run_id = '{failed.info.run_id}'")


def test_tokenize_is_cached_by_prefect_only_while_its_features_exist(pipeline_env, tmp_path):
    cache = tmp_path / "features"

    @flow
    def tokenize_four_times() -> list:
        spec = load_spec("sst2")
        cfg = TrainConfig(max_train_samples=50, max_eval_samples=50).with_defaults(spec.defaults)
        data = download(spec, str(tmp_path / "run"))
        states = [tokenize(spec, cfg, data, cache_dir=str(cache), return_state=True) for _ in range(3)]
        shutil.rmtree(cache)  # someone clears the feature cache: Prefect must not skip the rebuild
        return [*states, tokenize(spec, cfg, data, cache_dir=str(cache), return_state=True)]

    built, found, skipped, rebuilt = tokenize_four_times()
    assert [s.name for s in (built, found, skipped, rebuilt)] == ["Completed", "Completed", "Cached", "Completed"]
    assert [s.result()["cache_hit"] for s in (built, found, rebuilt)] == [False, True, False]
