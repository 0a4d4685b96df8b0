"""What a run shows per label: the evaluate task logs each split's per-label report as an MLflow table and a bar
chart of per-label F1 (any family whose report has a row per label), and a multi-label model card states the
thresholds the model applies beside each label's dev scores, and what an empty answer means."""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path

import matplotlib.image
import mlflow
import pandas as pd
import pytest
import torch
from datasets import Dataset

import tasks.evaluate
from bert_core import BertConfig, BertEncoder, BertTokenizer, get_family, save_finetuned
from bert_core.bootstrap import bootstrap_interval
from bert_core.spec import load_spec
from bert_core.training import TrainConfig
from tasks.data import DataInfo
from tasks.train import Trained
from tests.tiny_models import TINY, VOCAB
from tracking.model_card import card_body
from tracking.plots import per_label_f1_png, per_label_rows
from tracking.run import start_run
from tracking.store import configure_tracking, experiment_for

SPEC = load_spec("semeval2018_ec")  # 11 emotions, one 0/1 column each
LABELS = list(SPEC.labels)
THRESHOLDS = {name: round(0.05 * (k + 3), 2) for k, name in enumerate(LABELS)}  # 0.15, 0.2, ..., 0.65: all differ


# ---------------------------------------------------------------- reports -> rows -> chart

def test_per_label_rows_read_every_report_shape_and_leave_the_averages_out():
    sklearn_report = {"negative": {"precision": 0.5, "recall": 1.0, "f1-score": 0.667, "support": 3},
                      "positive": {"precision": 1.0, "recall": 0.5, "f1-score": 0.667, "support": 4},
                      "accuracy": 0.7, "macro avg": {"precision": 0.75, "recall": 0.75, "f1-score": 0.667, "support": 7},
                      "micro avg": {"precision": 0.7, "recall": 0.7, "f1-score": 0.7, "support": 7},
                      "weighted avg": {"precision": 0.8, "recall": 0.7, "f1-score": 0.67, "support": 7},
                      "samples avg": {"precision": 0.8, "recall": 0.7, "f1-score": 0.67, "support": 7}}
    assert per_label_rows(sklearn_report) == [
        {"label": "negative", "precision": 0.5, "recall": 1.0, "f1": 0.667, "support": 3},
        {"label": "positive", "precision": 1.0, "recall": 0.5, "f1": 0.667, "support": 4}]
    entity_report = {"precision": 0.8, "recall": 0.7, "f1": 0.75,
                     "per_type": {"PER": {"precision": 0.9, "recall": 0.8, "f1": 0.85, "support": 10}}}
    assert per_label_rows(entity_report) == [{"label": "PER", "precision": 0.9, "recall": 0.8, "f1": 0.85, "support": 10}]
    assert per_label_rows({"accuracy": 1.0}) == []


def test_the_per_label_chart_is_a_png_one_bar_per_label_taller_with_more_labels(tmp_path):
    few = [{"label": n, "precision": 0.5, "recall": 0.5, "f1": 0.5, "support": k} for k, n in enumerate("abc")]
    many = [{**few[0], "label": f"TAG{i}"} for i in range(45)]
    short = matplotlib.image.imread(per_label_f1_png(few, tmp_path / "few.png")).shape[0]
    tall = matplotlib.image.imread(per_label_f1_png(many, tmp_path / "many.png")).shape[0]
    assert tall > 2 * short
    with pytest.raises(ValueError, match="no per-label rows"):
        per_label_f1_png([], tmp_path / "none.png")


# ---------------------------------------------------------------- the evaluate task and the card

def _rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    words = VOCAB[5:40]
    return [{"text_a": " ".join(rng.choices(words, k=6)), "text_b": None,
             "labels": sorted(rng.sample(LABELS, rng.randint(0, 3))), "_source": f"dev.txt:{i + 2}"} for i in range(n)]


@pytest.fixture
def evaluated(tmp_path, monkeypatch):
    """A random tiny multi-label model saved with per-label thresholds, evaluated by the evaluate task in a
    temporary MLflow store: (run id, DataInfo, Trained, Evaluation)."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)
    # 1000 resamples x 8 metrics of scikit-learn take a while; the intervals are not what this test is about
    monkeypatch.setattr(tasks.evaluate, "bootstrap_interval", functools.partial(bootstrap_interval, n_resamples=20))
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    torch.manual_seed(0)
    family = get_family(SPEC.family)
    model = family.build_model(BertEncoder(BertConfig(**TINY)), LABELS).eval()
    save_finetuned(model, BertTokenizer.from_vocab(vocab), tmp_path / "best",
                   {"family": SPEC.family, "label_names": LABELS, "max_seq_length": 32, "label_thresholds": THRESHOLDS})
    paths = {}
    for split, rows in (("train", _rows(8, 1)), ("eval", _rows(30, 2))):
        paths[split] = str(tmp_path / "data" / split)
        Dataset.from_list(rows, features=family.rows.arrow_features()).save_to_disk(paths[split])
    data = DataInfo(split_paths=paths, rows={"train": 8, "eval": 30}, fingerprint="f" * 16, label_names=LABELS,
                    source="local:test", carve=None, dropped=0, dropped_path=None)
    history = tmp_path / "history.json"
    history.write_text(json.dumps([{"step": 1, "loss": 0.7, "lr": 1e-4}, {"step": 1, "eval_f1_macro": 0.2}]))
    trained = Trained(model_dir=str(tmp_path / "best"), primary_metric="f1_macro", best_metric=0.2, best_step=1,
                      metrics={}, history_path=str(history), train_rows=8, eval_rows=30, final_step=1,
                      train_seconds=1.0, examples_per_second=8.0, tokens_per_second=50.0, precision="fp32", threads=1,
                      resumed_from_step=None, stopped_early=False, feature_cache_hit=True, pruned_at=None)
    uri = configure_tracking(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        with start_run(experiment_for("per-label", uri), "r", {}) as run:
            evaluation = tasks.evaluate.evaluate_model.fn(SPEC, TrainConfig(), data, trained, str(tmp_path / "run"),
                                                          run, cache_dir=str(tmp_path / "cache"))
        yield run.run_id, data, trained, evaluation
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


def test_evaluate_logs_the_per_label_report_as_a_table_and_a_chart(evaluated):
    run_id, _, _, evaluation = evaluated
    client = mlflow.MlflowClient()
    table = client.load_table(client.get_run(run_id).info.experiment_id, "evaluation/per_label_eval.json", [run_id])
    report = json.loads(Path(evaluation.files["report_eval"]).read_text())
    assert list(table.columns) == ["label", "precision", "recall", "f1", "support"]
    assert list(table["label"]) == LABELS, "one row per label, in label order; no average rows"
    for row in table.to_dict("records"):
        assert row["f1"] == pytest.approx(report[row["label"]]["f1-score"])
        assert row["support"] == report[row["label"]]["support"]
    logged = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert {"evaluation/per_label_f1_eval.png", "evaluation/per_label_eval.json"} <= logged


def _card(data, trained, evaluation) -> str:
    example = pd.DataFrame({"text": ["the movie was good"]})
    return card_body(SPEC, TrainConfig(), data, vars(trained), vars(evaluation), example, "tiny", "en", "run-id")


def test_the_card_states_each_labels_threshold_its_dev_scores_and_what_no_label_means(evaluated):
    _, data, trained, evaluation = evaluated
    card = _card(data, trained, evaluation)
    report = json.loads(Path(evaluation.files["report_eval"]).read_text())
    assert "## Labels and thresholds" in card and "One threshold per label" in card
    for name, threshold in THRESHOLDS.items():  # fails the moment the thresholds leave the card
        scores = report[name]
        assert (f"| `{name}` | {threshold:g} | {scores['precision']:.4f} | {scores['recall']:.4f} | "
                f"{scores['f1-score']:.4f} | {int(scores['support'])} |") in card, name
    assert "gets the empty list `[]`: none of the labels applies" in card


def test_a_card_says_so_when_one_global_threshold_or_none_was_tuned(evaluated):
    _, data, trained, evaluation = evaluated
    config = Path(trained.model_dir) / "config.json"
    values = json.loads(config.read_text())
    values["bertflow"]["label_thresholds"] = dict.fromkeys(LABELS, 0.35)
    config.write_text(json.dumps(values))
    card = _card(data, trained, evaluation)
    assert "One threshold for every label, 0.35" in card and f"| `{LABELS[0]}` | 0.35 |" in card
    del values["bertflow"]["label_thresholds"]
    config.write_text(json.dumps(values))
    assert "No thresholds were tuned: every label uses 0.5" in _card(data, trained, evaluation)


def test_families_without_saved_settings_to_explain_add_no_section():
    for name in ("single_classification", "token_tagging"):
        assert get_family(name).predictions.card_lines(["a", "b"], {"max_seq_length": 128}, None) == []
