"""Drift on scoring: a tiny model whose dev profile was saved with it (as the fine-tune's evaluate task saves it)
scores its own dev rows without drift, and shifted inputs (much longer texts; words it does not know) with the
`drift` tag, the PSI metrics and the summary's drift section; a model saved without a profile scores as before,
with one line saying drift is not measured; `retrain_on_drift` starts the deployment it names."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from bert_core import BertConfig, BertEncoder, get_family, save_finetuned
from bert_core.drift import PROFILE_FILE, profile_model_dir
from bert_core.predict import Predictor
from flows import score as score_flow
from flows.score import summary_text
from tests.tiny_models import TINY, WORDS
from tests.tracking.test_score import Registry, run_score
from tracking.store import configure_tracking

FAMILY = "single_classification"
PLAIN = [w for w in WORDS if w.isalpha()]
FOREIGN = "zebra quantum xylophone bicycle umbrella kettle volcano saxophone lantern meadow".split()


def texts(seed: int, n: int, words: list[str], low: int, high: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(low, high))) for _ in range(n)]


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("text\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def models(flow_root):
    """`bert-drift` v1: a tiny classifier with the profile of 400 dev rows in its folder; `bert-drift-old` v1: the
    same without a profile (a model registered before profiles were)."""
    (flow_root / "models").mkdir()
    registry = Registry(flow_root / "models", configure_tracking())
    torch.manual_seed(0)
    model = get_family(FAMILY).build_model(BertEncoder(BertConfig(**TINY)), ["neg", "pos"]).eval()
    meta = {"family": FAMILY, "label_names": ["neg", "pos"], "task": "demo", "max_seq_length": 32}
    dev = texts(1, 400, PLAIN, 3, 14)
    old = save_finetuned(model, registry.tokenizer, flow_root / "models" / "old", meta)
    registry.register_folder(old, FAMILY, "bert-drift-old")
    folder = save_finetuned(model, registry.tokenizer, flow_root / "models" / "new", meta)
    rows = [{"text_a": t, "text_b": None} for t in dev]
    profile_model_dir(folder, rows, Predictor(folder).predict(rows))
    registry.register_folder(folder, FAMILY, "bert-drift")
    return dev


def scored_run(tmp_path: Path, name: str, lines: list[str], model: str = "models:/bert-drift/1", **params):
    result = run_score(model=model, file=str(write_csv(tmp_path / f"{name}.csv", lines)), **params)
    done = result["files"][0]
    return result, done, MlflowClient().get_run(done["mlflow_run_id"]).data


def test_the_dev_rows_themselves_show_no_drift(models, tmp_path):
    result, done, run = scored_run(tmp_path, "dev", models)
    assert run.tags["drift"] == "false" and run.tags["drift_items"] == "none"
    assert done["drift"]["measured"] and not done["drift"]["drifted"]
    assert set(done["drift"]["psi"]) == {"token_length", "cut_share", "unk_rate", "predicted_label", "top_score"}
    assert all(value < 0.01 for value in done["drift"]["psi"].values()), done["drift"]["psi"]
    assert run.metrics["drift_psi_token_length"] < 0.01
    assert "  drift        none (PSI against 400 dev rows" in summary_text(result)


def test_a_sample_of_the_same_kind_of_text_shows_no_drift(models, tmp_path):
    _, done, run = scored_run(tmp_path, "same-kind", texts(2, 400, PLAIN, 3, 14))
    assert run.tags["drift"] == "false", done["drift"]["psi"]


def test_a_file_of_a_few_rows_is_within_sampling_noise_not_drift(models, tmp_path):
    """3 rows of dev's kind: PSIs far over the threshold (most bins empty), which 3 rows give by chance: no drift
    tag, the items named as within noise, in the tags and the summary."""
    result, done, run = scored_run(tmp_path, "few", texts(6, 3, PLAIN, 3, 14))
    assert done["drift"]["psi"]["token_length"] > 0.25 and done["drift"]["p"]["token_length"] > 0.01
    assert run.tags["drift"] == "false" and run.tags["drift_items"] == "none"
    assert "token_length" in run.tags["drift_within_noise"].split(",")
    assert run.metrics["drift_p_token_length"] == done["drift"]["p"]["token_length"]
    assert "within the sampling noise of 3 rows" in summary_text(result)


def test_much_longer_texts_set_the_drift_tag(models, tmp_path):
    result, done, run = scored_run(tmp_path, "long", texts(3, 200, PLAIN, 40, 80))
    assert run.tags["drift"] == "true"
    assert {"token_length", "cut_share"} <= set(run.tags["drift_items"].split(","))
    assert run.metrics["drift_psi_token_length"] > 1 and run.metrics["drift_psi_cut_share"] > 0.25
    report = json.loads(Path(MlflowClient().download_artifacts(done["mlflow_run_id"], "drift/drift_report.json",
                                                               str(tmp_path))).read_text())
    assert report["profile"]["items"]["cut_share"]["value"] == 1.0 and report["reference"]["rows"] == 400
    assert "  drift        DRIFT in token_length, cut_share" in summary_text(result)


def test_words_the_model_does_not_know_set_the_drift_tag_on_the_unk_rate(models, tmp_path):
    _, _, run = scored_run(tmp_path, "foreign", texts(4, 200, FOREIGN + PLAIN[:3], 3, 14))
    assert run.tags["drift"] == "true" and "unk_rate" in run.tags["drift_items"].split(",")
    # The user's threshold: nothing passes 1000.
    _, _, lenient = scored_run(tmp_path, "foreign2", texts(4, 200, FOREIGN + PLAIN[:3], 3, 14), drift_threshold=1000)
    assert lenient.tags["drift"] == "false" and lenient.tags["drift_threshold"] == "1000"


def test_a_model_without_a_profile_scores_as_before_with_drift_not_measured(models, tmp_path):
    result, done, run = scored_run(tmp_path, "old", models[:50], model="models:/bert-drift-old/1")
    assert done["rows_scored"] == 50 and run.tags["drift"] == "not measured"
    assert not [k for k in run.metrics if k.startswith("drift_")]
    assert [line for line in summary_text(result).splitlines() if line.startswith("  drift")] == [
        "  drift        not measured (the model was saved without its dev set's input profile)"]


def test_retrain_on_drift_starts_the_deployment_it_names_only_on_drift(models, tmp_path, monkeypatch):
    started = []

    class FlowRun:
        id, name = "0000", "brave-fox"

    monkeypatch.setattr(score_flow, "run_deployment", lambda name, **kw: started.append((name, kw)) or FlowRun())
    events = []
    monkeypatch.setattr(score_flow, "emit_event", lambda event, **kw: events.append((event, kw)))
    scored_run(tmp_path, "calm", models[:100], retrain_on_drift="bertflow-finetune/sst2")
    assert started == [] and events == []
    result, _, _ = scored_run(tmp_path, "drifting", texts(5, 100, PLAIN, 40, 80), retrain_on_drift="bertflow-finetune/sst2")
    assert [name for name, _ in started] == ["bertflow-finetune/sst2"] and started[0][1]["timeout"] == 0
    assert result["retrain"]["files"] == ["drifting.csv"]
    assert [event for event, _ in events] == ["bertflow.score.drift"]
    assert events[0][1]["resource"]["prefect.resource.id"] == "bertflow.model.bert-drift"
    assert set(events[0][1]["payload"]["files"]["drifting.csv"]) >= {"token_length", "cut_share"}
    assert "retrain on drift: started bertflow-finetune/sst2 (flow run brave-fox, 0000)" in summary_text(result)


def test_the_profile_lives_in_the_model_folder(models, flow_root):
    assert (flow_root / "models" / "new" / PROFILE_FILE).is_file()
    assert not (flow_root / "models" / "old" / PROFILE_FILE).exists()
