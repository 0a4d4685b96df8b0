"""What a finished finetune flow leaves for people: one log line per step in Prefect's logs, a model card as
the registered version's description, and a run folder that keeps only what serves a purpose."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from prefect import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.logging.handlers import APILogWorker

from bert_core.training import TrainConfig
from flows.finetune import finetune
from flows.params import FinetuneParams
from flows.run_folder import size
from tests.toy_task import TRAINING, toy_rows

pytest.importorskip("transformers")


def run(toy, **params) -> tuple[dict, object]:
    # The same fine-tune runs several times here, each to train and register: `force`, or the runs after the
    # first would find nothing changed and train nothing (tests/flows/test_retrain.py).
    state = finetune(FinetuneParams(task=str(toy["spec"]), data_dir=str(toy["data"]), pretrained=str(toy["tiny"]),
                                    training=TRAINING, force=True, **params), return_state=True)
    assert state.is_completed(), state.result(raise_on_failure=False)
    return state.result(), state


def test_each_step_logs_one_line_that_says_what_it_did(toy):
    summary, state = run(toy)
    APILogWorker.drain_all(timeout=10)  # the API log handler sends its lines in the background
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])),
                                limit=200)
    lines = [log.message for log in logs]
    step = {n: next((m for m in lines if m.startswith(f"{n}/5 ")), None) for n in range(1, 6)}
    assert all(step.values()), lines
    assert "train 64, eval 32 rows from local:" in step[1] and "fingerprint" in step[1]
    assert "64 rows, 16 steps in" in step[3] and "examples/s" in step[3] and "best dev accuracy" in step[3]
    assert f"accuracy {summary['score']:.4f}" in step[4] and "95% interval" in step[4]
    assert f"{summary['model_uri']} is {summary['alias']}: {summary['decision']}" in step[5]
    assert any(m.startswith("done: ") and "MB" in m for m in lines)


def test_a_finished_run_folder_keeps_only_results_unless_asked(toy):
    summary, _ = run(toy)
    folder = summary["run_dir"]
    record = json.loads(open(f"{folder}/run.json", encoding="utf-8").read())
    assert record["status"] == "finished" and record["removed_after_success"] == ["training/checkpoints", "training/best"]
    kept = Path(folder)
    assert not (kept / "training" / "checkpoints").exists() and not (kept / "training" / "best").exists()
    assert (kept / "data" / "train").is_dir() and (kept / "evaluation" / "predictions_eval.jsonl").is_file()
    assert summary["run_dir_bytes"] == size(kept)

    kept_all, _ = run(toy, keep_checkpoints_after_success=True)
    assert (Path(kept_all["run_dir"]) / "training" / "checkpoints").is_dir()
    assert (Path(kept_all["run_dir"]) / "training" / "best" / "model.safetensors").is_file()
    kept_training = size(Path(kept_all["run_dir"]) / "training")
    assert kept_all["run_dir_bytes"] == size(Path(kept_all["run_dir"])) > summary["run_dir_bytes"] + kept_training / 2


def test_the_registered_version_carries_its_model_card(toy):
    summary, _ = run(toy)
    client = MlflowClient()
    card = client.get_model_version(summary["model_name"], summary["model_version"]).description
    assert card.startswith(f"# {summary['model_name']} v{summary['model_version']}: ")
    for part in ("`neg`, `pos`", "- data fingerprint:", "## Training", "learning_rate 0.003", "| eval | accuracy (primary) |",
                 f"bertflow predict {summary['model_uri']} --text", "## Limits", "cut to 32 word pieces",
                 "## Calibration", "| expected calibration error (15 bins) |", "](evaluation/reliability_diagram.png)"):
        assert part in card, part
    # Calibration through the flow: the four metrics in the run, the diagram among its artifacts.
    run_id = summary["mlflow_run_id"]
    assert {"eval_ece", "eval_ece_uncalibrated", "eval_brier", "eval_brier_uncalibrated"} <= set(
        client.get_run(run_id).data.metrics)
    assert "evaluation/reliability_diagram.png" in {a.path for a in client.list_artifacts(run_id, "evaluation")}
    low, high = summary["interval"]
    assert f"[{low:.4f}, {high:.4f}]" in card and low <= summary["score"] <= high
    assert "one version per fine-tune" in client.get_registered_model(summary["model_name"]).description


def test_class_weights_and_a_tuned_threshold_reach_the_params_the_card_and_the_served_model(toy):
    """The training config's class_weights and decision_threshold through the whole flow: the run's params say the
    weights used and the threshold applied, the card says why, and the registered model answers by it."""
    import mlflow
    import pandas as pd

    training = TrainConfig(**TRAINING.model_dump(exclude_unset=True), class_weights="balanced",
                           decision_threshold="tune")
    state = finetune(FinetuneParams(task=str(toy["spec"]), data_dir=str(toy["data"]), pretrained=str(toy["tiny"]),
                                    training=training), return_state=True)
    assert state.is_completed(), state.result(raise_on_failure=False)
    summary = state.result()
    params = MlflowClient().get_run(summary["mlflow_run_id"]).data.params
    labels = [r["label"] for r in toy_rows(64, 1)]  # the toy task's training rows
    weights = {name: 64 / (2 * labels.count(name)) for name in ("neg", "pos")}
    assert json.loads(params["class_weights"]) == pytest.approx(weights) and " " not in params["class_weights"]
    threshold = float(params["decision_threshold"])
    assert 0 < threshold < 1 and params["decision_threshold_tuned_for"] == "accuracy"
    card = MlflowClient().get_model_version(summary["model_name"], summary["model_version"]).description
    assert "## Class weights and decision threshold" in card and f"at least {threshold:g}" in card
    assert "best `accuracy`" in card
    served = mlflow.pyfunc.load_model(summary["model_uri"]).predict(
        pd.DataFrame({"text": [r["text_a"] for r in toy_rows(32, 2)]}))
    p1 = [s if v == "pos" else 1 - s for v, s in zip(served["label_value"], served["score"], strict=True)]
    assert list(served["label_value"]) == ["pos" if p >= threshold else "neg" for p in p1]
