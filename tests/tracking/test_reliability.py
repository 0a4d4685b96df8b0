"""What a run shows of a calibrated model: the evaluate task logs ece/brier before and after (as `eval_ece`, ...) and
the reliability diagram drawn from the report saved with the model; the model card states the temperature, the
scores before and after, and links the picture."""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path

import matplotlib.image
import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from datasets import Dataset

import tasks.evaluate
from bert_core import BertConfig, BertEncoder, BertTokenizer, get_family, save_finetuned
from bert_core.bootstrap import bootstrap_interval
from bert_core.calibration import CALIBRATION_METRICS, calibration_report
from bert_core.predict import Predictor
from bert_core.spec import TaskSpec
from bert_core.training import TrainConfig, evaluate_and_tune, feature_settings
from tasks.data import DataInfo
from tasks.train import Trained
from tests.tiny_models import TINY, VOCAB
from tracking.model_card import card_body
from tracking.plots import reliability_diagram_png
from tracking.run import start_run
from tracking.store import configure_tracking, experiment_for

SPEC = TaskSpec(name="toy3", family="single_classification", labels=["a", "b", "c"],
                local={"format": "tsv", "files": {"train": "t.tsv", "eval": "d.tsv"}},
                metrics=["accuracy", "f1_macro"], primary_metric="accuracy", max_seq_length=32)


def test_the_reliability_diagram_is_a_png_of_both_curves(tmp_path):
    rng = np.random.default_rng(0)
    logits, targets = rng.normal(scale=3.0, size=(200, 3)), rng.integers(0, 3, 200)
    path = reliability_diagram_png(calibration_report(logits, targets, "softmax", 2.5), tmp_path / "r.png")
    height, width, _ = matplotlib.image.imread(path).shape
    assert height > width > 300
    cells = calibration_report(logits, (logits > 0).astype(float), "sigmoid", 0.7)
    assert reliability_diagram_png(cells, tmp_path / "s.png").is_file()


def _rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"text_a": " ".join(rng.choices(VOCAB[5:40], k=6)), "text_b": None, "label": rng.choice(SPEC.labels),
             "_source": f"d.tsv:{i + 2}"} for i in range(n)]


@pytest.fixture
def evaluated(tmp_path, monkeypatch):
    """A random, over-confident tiny classifier whose temperature is fitted on its eval rows as ``fit`` does and saved
    with it, then evaluated by the evaluate task in a temporary MLflow store: (run id, meta, DataInfo, Trained,
    Evaluation)."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(tasks.evaluate, "bootstrap_interval", functools.partial(bootstrap_interval, n_resamples=20))
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer.from_vocab(vocab)
    torch.manual_seed(0)
    family = get_family(SPEC.family)
    model = family.build_model(BertEncoder(BertConfig(**TINY)), SPEC.labels).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2 and p.shape[0] == len(SPEC.labels):  # the head: large random logits, sure and often wrong
                p.mul_(40.0)
    rows = {"train": _rows(8, 1), "eval": _rows(60, 2)}
    settings = feature_settings(SPEC, TrainConfig())
    features = family.features.build(rows["eval"], tokenizer, SPEC.labels, settings)
    _, _, learnt = evaluate_and_tune(model, family, features, rows["eval"], SPEC.labels, settings, list(SPEC.metrics),
                                     tokenizer.pad_id)
    meta = {"family": SPEC.family, "label_names": SPEC.labels, **settings, **learnt}
    save_finetuned(model, tokenizer, tmp_path / "best", meta)
    paths = {}
    for split, split_rows in rows.items():
        paths[split] = str(tmp_path / "data" / split)
        Dataset.from_list(split_rows, features=family.rows.arrow_features()).save_to_disk(paths[split])
    data = DataInfo(split_paths=paths, rows={"train": 8, "eval": 60}, fingerprint="f" * 16, label_names=SPEC.labels,
                    source="local:test", carve=None, dropped=0, dropped_path=None)
    history = tmp_path / "history.json"
    history.write_text(json.dumps([{"step": 1, "loss": 0.7, "lr": 1e-4}, {"step": 1, "eval_accuracy": 0.3}]))
    trained = Trained(model_dir=str(tmp_path / "best"), primary_metric="accuracy", best_metric=0.3, best_step=1,
                      metrics={}, history_path=str(history), train_rows=8, eval_rows=60, final_step=1,
                      train_seconds=1.0, examples_per_second=8.0, tokens_per_second=50.0, precision="fp32", threads=1,
                      resumed_from_step=None, stopped_early=False, feature_cache_hit=True, pruned_at=None)
    uri = configure_tracking(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        with start_run(experiment_for("calibration", uri), "r", {}) as run:
            evaluation = tasks.evaluate.evaluate_model.fn(SPEC, TrainConfig(), data, trained, str(tmp_path / "run"),
                                                          run, cache_dir=str(tmp_path / "cache"))
        yield run.run_id, meta, data, trained, evaluation
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


def test_evaluate_logs_the_saved_models_calibration_and_its_diagram(evaluated):
    run_id, meta, _, _, evaluation = evaluated
    report = meta["calibration_report"]
    assert meta["temperature"] > 1.5, "an over-confident model is cooled down"
    logged = mlflow.MlflowClient().get_run(run_id).data.metrics
    for name in CALIBRATION_METRICS:  # the saved model's temperature, measured again on the same rows
        assert logged[f"eval_{name}"] == pytest.approx(report[name]), name
    assert "interval/eval_ece_low" not in logged and "interval/eval_accuracy_low" in logged
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "evaluation")}
    assert "evaluation/reliability_diagram.png" in artifacts
    assert evaluation.files["reliability_diagram"].endswith("reliability_diagram.png")


def test_the_card_states_the_temperature_the_scores_before_and_after_and_shows_the_diagram(evaluated):
    run_id, meta, data, trained, evaluation = evaluated
    report = meta["calibration_report"]
    example = pd.DataFrame({"text": ["the movie was good"]})
    card = card_body(SPEC, TrainConfig(), data, vars(trained), vars(evaluation), example, "tiny", "en", run_id)
    t = meta["temperature"]
    assert "## Calibration" in card and f"divided by T = {t:.4g}" in card and "over-confident" in card
    assert f"| expected calibration error (15 bins) | {report['ece_uncalibrated']:.4f} | {report['ece']:.4f} |" in card
    assert f"| Brier score | {report['brier_uncalibrated']:.4f} | {report['brier']:.4f} |" in card
    assert "](evaluation/reliability_diagram.png)" in card and f"MLflow run `{run_id}`" in card


def test_a_card_says_so_when_calibration_is_off_and_a_model_without_a_report_gets_no_section(evaluated):
    _, _, data, trained, evaluation = evaluated
    path = Path(trained.model_dir) / "config.json"
    config = json.loads(path.read_text())
    example = pd.DataFrame({"text": ["the movie was good"]})

    def card_without(key: str) -> str:
        del config["bertflow"][key]
        path.write_text(json.dumps(config))
        return card_body(SPEC, TrainConfig(), data, vars(trained), vars(evaluation), example, "tiny", "en", "run-id")

    assert "Scores are not calibrated (spec `calibration: none`)" in card_without("temperature")
    assert "## Calibration" not in card_without("calibration_report")  # a model saved before calibration existed


def test_the_served_model_divides_its_logits_by_the_saved_temperature(tmp_path):
    """What `bertflow predict`, `serve` and `score` answer: the pyfunc over the saved model, with its temperature."""
    from mlflow.pyfunc import PythonModelContext

    from tracking.packaging import BertPyfunc

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    torch.manual_seed(0)
    model = get_family(SPEC.family).build_model(BertEncoder(BertConfig(**TINY)), SPEC.labels).eval()
    meta = {"family": SPEC.family, "label_names": SPEC.labels, "max_seq_length": 32}
    texts = pd.DataFrame({"text": ["the movie was good", "a bad film", "fun", "boring plot"]})
    frames = {}
    for name, temperature in (("plain", {}), ("cooled", {"temperature": 4.0})):
        save_finetuned(model, BertTokenizer.from_vocab(vocab), tmp_path / name, {**meta, **temperature})
        served = BertPyfunc()
        served.load_context(PythonModelContext(artifacts={"model_dir": str(tmp_path / name)}, model_config={}))
        frames[name] = served.predict(None, texts)
    assert frames["cooled"]["label"].tolist() == frames["plain"]["label"].tolist()
    # p_T = softmax(z / T), and log p = z - const: the cooled scores follow from the plain probabilities
    plain = np.array([list(p["probabilities"].values())
                      for p in Predictor(tmp_path / "plain").predict([{"text_a": t} for t in texts["text"]])])
    expected = np.exp(np.log(plain) / 4.0)
    expected /= expected.sum(axis=1, keepdims=True)
    assert frames["cooled"]["score"].tolist() == pytest.approx(expected.max(axis=1).tolist(), rel=1e-4)
    assert (frames["cooled"]["score"] < frames["plain"]["score"]).all()
