"""The `evaluate_model` task: the best model scored on the eval split and every extra eval split (e.g. CoNLL
testb), with predictions, per-class reports and plots written to `<run_dir>/evaluation` and logged to
the MLflow run. Metrics are named `eval_<metric>` for the eval split and `<split>_<metric>` for the rest.
A report with a row per label (class, entity type, tag) is also logged as the MLflow table
`evaluation/per_label_<split>.json` and drawn as `per_label_f1_<split>.png`. A model whose scores were calibrated
(classification, multi-label) gets `reliability_diagram.png`, drawn from the report saved with it (its meta's
`calibration_report`: the eval split, before and after the temperature it applies). The eval split's input profile
(bert_core.drift) is written into the model's folder as `input_profile.json`, so it is logged with the model: the
reference every scoring run's drift is measured against.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from bert_core.bootstrap import bootstrap_interval
from bert_core.checkpoint import read_finetuned_meta
from bert_core.drift import profile_model_dir
from bert_core.families import get_family
from bert_core.spec import TaskSpec
from bert_core.training import TrainConfig, evaluate_model_dir, features_fingerprint
from tasks.data import DataInfo, load_split
from tasks.tokenize import row_limit
from tasks.train import Trained
from tracking.plots import (
    confusion_matrix_png,
    learning_curve_png,
    per_label_f1_png,
    per_label_rows,
    reliability_diagram_png,
)
from tracking.run import TrackedRun


@dataclasses.dataclass
class Evaluation:
    """The best model's scores on every split but train, and the files written."""

    metrics: dict[str, float]  # `<split>_<metric>`, as logged to MLflow
    splits: dict[str, dict[str, float]]  # split -> metric -> score
    intervals: dict[str, tuple[float, float]]  # eval split: metric -> its 95% bootstrap interval (low, high)
    files: dict[str, str]  # predictions, per-class reports, plots: name -> path


@task(cache_policy=NO_CACHE)
def evaluate_model(spec: TaskSpec, cfg: TrainConfig, data: DataInfo, trained: Trained, run_dir: str, run: TrackedRun,
             cache_dir: str | None = None) -> Evaluation:
    """Score `trained.model_dir` on every split but train, with 95% bootstrap intervals on the eval split, and
    log the scores and files to `run`.

    `trained` is what `train_model` returned. The eval rows are the ones training selected on.
    """
    out = Path(run_dir) / "evaluation"
    out.mkdir(parents=True, exist_ok=True)
    family = get_family(spec.family)
    flat, by_split, files, intervals, tables = {}, {}, {}, {}, {}
    for split in (s for s in data.split_paths if s != "train"):
        rows = load_split(data, split, row_limit(cfg, split))
        scores, predictions = evaluate_model_dir(
            trained.model_dir, spec, rows, features_fingerprint(data.fingerprint, cfg, split), split,
            batch_size=cfg.eval_batch_size, cache_dir=cache_dir)
        by_split[split] = scores
        flat |= {f"{split}_{name}": value for name, value in scores.items()}
        files[f"predictions_{split}"] = _write_predictions(out / f"predictions_{split}.jsonl", rows, predictions)
        report = family.predictions.per_class_report(rows, predictions, data.label_names, spec)
        if report is not None:
            files[f"report_{split}"] = _write_json(out / f"per_class_report_{split}.json", report)
            if labels := per_label_rows(report):
                tables[f"evaluation/per_label_{split}.json"] = {key: [r[key] for r in labels] for key in labels[0]}
                files[f"per_label_f1_{split}"] = str(per_label_f1_png(
                    labels, out / f"per_label_f1_{split}.png", f"{split}: F1 per label (n = support)"))
        if split == "eval":  # how sure each dev score is: 95% bootstrap intervals over the dev rows
            intervals = {name: bootstrap_interval(spec.family, predictions, rows, name, data.label_names,
                                                  settings=family.rows.task_settings(spec)) for name in spec.metrics}
            # The dev set's input profile, saved in the model's folder (so logged with it): scoring's drift reference.
            files["input_profile"] = str(profile_model_dir(trained.model_dir, rows, predictions))
            confusion = family.predictions.confusion(rows, predictions, data.label_names, spec)
            if confusion is not None:
                files["confusion_matrix"] = str(confusion_matrix_png(*confusion, out / "confusion_matrix.png"))
    if report := read_finetuned_meta(trained.model_dir).get("calibration_report"):
        files["reliability_diagram"] = str(reliability_diagram_png(report, out / "reliability_diagram.png"))
    history = json.loads(Path(trained.history_path).read_text(encoding="utf-8"))
    files["learning_curve"] = str(learning_curve_png(history, out / "learning_curve.png"))

    bounds = {f"interval/eval_{name}_{end}": getattr(iv, end) for name, iv in intervals.items() for end in ("low", "high")}
    run.log_metrics(flat | bounds)
    run.log_artifacts(str(out), artifact_path="evaluation")
    for path, columns in tables.items():
        run.log_table(columns, path)
    run.log_artifact(trained.history_path)
    return Evaluation(metrics=flat, splits=by_split, files=files,
                      intervals={name: (iv.low, iv.high) for name, iv in intervals.items()})


def _write_predictions(path: Path, rows: list[dict], predictions: list[dict]) -> str:
    """One JSON line per row: its inputs and gold fields as loaded (with `_source`), and `prediction`."""
    with open(path, "w", encoding="utf-8") as f:
        for row, prediction in zip(rows, predictions, strict=True):
            f.write(json.dumps({**row, "prediction": prediction}, ensure_ascii=False) + "\n")
    return str(path)


def _write_json(path: Path, value) -> str:
    path.write_text(json.dumps(value, indent=1), encoding="utf-8")
    return str(path)
