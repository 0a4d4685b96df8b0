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

from bert_core.bootstrap import bootstrap_interval
from bert_core.families import get_family
from bert_core.spec import TaskSpec
from bert_core.training import TrainConfig, evaluate_model_dir, features_fingerprint
from tasks.data import DataInfo, load_split
from tasks.tokenize import row_limit
from tracking.plots import confusion_matrix_png, learning_curve_png


@task(cache_policy=NO_CACHE)
def evaluate(spec: TaskSpec, cfg: TrainConfig, data: DataInfo, trained: dict, run_dir: str, run_id: str,
             cache_dir: str | None = None) -> dict:
    """Score `trained["model_dir"]` on every split but train; returns metrics (with 95% bootstrap intervals on
    the eval split) and the files written.

    `trained` is what `fine_tune` returned. The eval rows are the ones training selected on.
    """
    out = Path(run_dir) / "evaluation"
    out.mkdir(parents=True, exist_ok=True)
    family = get_family(spec.family)
    flat, by_split, files, intervals = {}, {}, {}, {}
    for split in (s for s in data.split_paths if s != "train"):
        rows = load_split(data, split, row_limit(cfg, split))
        scores, predictions = evaluate_model_dir(
            trained["model_dir"], spec, rows, features_fingerprint(data.fingerprint, cfg, split), split,
            batch_size=cfg.eval_batch_size, cache_dir=cache_dir)
        by_split[split] = scores
        flat |= {f"{split}_{name}": value for name, value in scores.items()}
        files[f"predictions_{split}"] = _write_predictions(out / f"predictions_{split}.jsonl", rows, predictions)
        report = family.per_class_report(rows, predictions, data.label_names, spec)
        if report is not None:
            files[f"report_{split}"] = _write_json(out / f"per_class_report_{split}.json", report)
        if split == "eval":  # how sure each dev score is: 95% bootstrap intervals over the dev rows
            intervals = {name: bootstrap_interval(spec.family, predictions, rows, name, data.label_names,
                                                  settings=family.task_settings(spec)) for name in scores}
            confusion = family.confusion(rows, predictions, data.label_names, spec)
            if confusion is not None:
                files["confusion_matrix"] = str(confusion_matrix_png(*confusion, out / "confusion_matrix.png"))
    history = json.loads(Path(trained["history_path"]).read_text(encoding="utf-8"))
    files["learning_curve"] = str(learning_curve_png(history, out / "learning_curve.png"))

    bounds = {f"interval/eval_{name}_{end}": getattr(iv, end) for name, iv in intervals.items() for end in ("low", "high")}
    mlflow.log_metrics({k: float(v) for k, v in (flat | bounds).items()}, run_id=run_id)
    mlflow.log_artifacts(str(out), artifact_path="evaluation", run_id=run_id)
    mlflow.log_artifact(trained["history_path"], run_id=run_id)
    return {"metrics": flat, "splits": by_split, "files": files,
            "intervals": {name: (iv.low, iv.high) for name, iv in intervals.items()}}


def _write_predictions(path: Path, rows: list[dict], predictions: list[dict]) -> str:
    """One JSON line per row: its inputs and gold fields as loaded (with `_source`), and `prediction`."""
    with open(path, "w", encoding="utf-8") as f:
        for row, prediction in zip(rows, predictions, strict=True):
            f.write(json.dumps({**row, "prediction": prediction}, ensure_ascii=False) + "\n")
    return str(path)


def _write_json(path: Path, value) -> str:
    path.write_text(json.dumps(value, indent=1), encoding="utf-8")
    return str(path)
