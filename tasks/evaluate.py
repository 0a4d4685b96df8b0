"""The `evaluate` task: the best model scored on the eval split and every extra eval split (e.g. CoNLL
testb), with predictions, per-class reports and plots written to `<run_dir>/evaluation` and logged to
the MLflow run. Metrics are named `eval_<metric>` for the eval split and `<split>_<metric>` for the rest.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
from prefect import task
from prefect.cache_policies import NO_CACHE
from sklearn.metrics import classification_report

from bert_core import metrics as official
from bert_core.bootstrap import bootstrap_interval
from bert_core.spec import TaskSpec
from bert_core.training import TrainConfig, evaluate_model_dir
from tasks.data import DataInfo, load_split
from tasks.plots import confusion_matrix_png, learning_curve_png
from tasks.tokenize import features_fingerprint, row_limit

_CLASSIFICATION = ("single_classification", "pair_classification")


@task(cache_policy=NO_CACHE)
def evaluate(spec: TaskSpec, cfg: TrainConfig, data: DataInfo, trained: dict, run_dir: str, run_id: str,
             cache_dir: str | None = None) -> dict:
    """Score `trained["model_dir"]` on every split but train; returns metrics (with 95% bootstrap intervals on
    the eval split) and the files written.

    `trained` is what `fine_tune` returned. The eval rows are the ones training selected on.
    """
    out = Path(run_dir) / "evaluation"
    out.mkdir(parents=True, exist_ok=True)
    flat, by_split, files, intervals = {}, {}, {}, {}
    for split in (s for s in data.split_paths if s != "train"):
        rows = load_split(data, split, row_limit(cfg, split))
        scores, predictions = evaluate_model_dir(
            trained["model_dir"], spec, rows, features_fingerprint(data.fingerprint, cfg, split), split,
            batch_size=cfg.eval_batch_size, cache_dir=cache_dir)
        by_split[split] = scores
        flat |= {f"{split}_{name}": value for name, value in scores.items()}
        files[f"predictions_{split}"] = _write_predictions(out / f"predictions_{split}.jsonl", rows, predictions)
        report = per_class_report(spec, rows, predictions, data.label_names)
        if report is not None:
            files[f"report_{split}"] = _write_json(out / f"per_class_report_{split}.json", report)
        if split == "eval":  # how sure each dev score is: 95% bootstrap intervals over the dev rows
            intervals = {name: bootstrap_interval(spec.family, predictions, rows, name, data.label_names,
                                                  settings=spec.metric_settings()) for name in scores}
        if spec.family in _CLASSIFICATION and split == "eval":
            gold, pred = [r["label"] for r in rows], [p["label"] for p in predictions]
            files["confusion_matrix"] = str(confusion_matrix_png(
                [spec.display_name(g) for g in gold], [spec.display_name(p) for p in pred],
                [spec.display_name(n) for n in data.label_names], out / "confusion_matrix.png"))
    history = json.loads(Path(trained["history_path"]).read_text(encoding="utf-8"))
    files["learning_curve"] = str(learning_curve_png(history, out / "learning_curve.png"))

    bounds = {f"interval/eval_{name}_{end}": getattr(iv, end) for name, iv in intervals.items() for end in ("low", "high")}
    mlflow.log_metrics({k: float(v) for k, v in (flat | bounds).items()}, run_id=run_id)
    mlflow.log_artifacts(str(out), artifact_path="evaluation", run_id=run_id)
    mlflow.log_artifact(trained["history_path"], run_id=run_id)
    return {"metrics": flat, "splits": by_split, "files": files,
            "intervals": {name: (iv.low, iv.high) for name, iv in intervals.items()}}


def per_class_report(spec: TaskSpec, rows: list[dict], predictions: list[dict], label_names) -> dict | None:
    """Precision/recall/F1 per class: labels (classification), entity types (NER), tags (other tagging);
    None for regression and QA, which have no classes."""
    if spec.family in _CLASSIFICATION:  # keyed by the names people read (the spec's display names)
        return classification_report([r["label"] for r in rows], [p["label"] for p in predictions],
                                     labels=label_names, target_names=[spec.display_name(n) for n in label_names],
                                     output_dict=True, zero_division=0)
    if spec.family != "token_tagging":
        return None
    gold, pred = [list(r["tags"]) for r in rows], [list(p["tags"]) for p in predictions]
    if spec.tag_scheme is not None:  # entity tags: score entities per type, as the entity metrics do
        return official.entity_prf(pred, gold, spec.tag_scheme)
    flat_gold = [t for sentence in gold for t in sentence]
    flat_pred = [t for sentence in pred for t in sentence]
    return classification_report(flat_gold, flat_pred, labels=label_names, output_dict=True, zero_division=0)


def _write_predictions(path: Path, rows: list[dict], predictions: list[dict]) -> str:
    """One JSON line per row: its inputs and gold fields as loaded (with `_source`), and `prediction`."""
    with open(path, "w", encoding="utf-8") as f:
        for row, prediction in zip(rows, predictions, strict=True):
            f.write(json.dumps({**row, "prediction": prediction}, ensure_ascii=False) + "\n")
    return str(path)


def _write_json(path: Path, value) -> str:
    path.write_text(json.dumps(value, indent=1), encoding="utf-8")
    return str(path)
