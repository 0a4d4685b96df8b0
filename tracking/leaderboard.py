"""The suite's leaderboard: one row per task, as a markdown file and a CSV, both logged to an MLflow run of
the `bertflow-suite` experiment (the task `tasks.leaderboard.publish_leaderboard` adds Prefect artifacts).

A row holds the task's primary dev metric and its secondary metrics, training time and throughput, the
registered model version, whether that version became champion, and the error of a task that failed. Its
`status` is `trained`, `unchanged` (nothing changed since a registered version, so nothing was trained: the row
shows that version and its scores) or `failed`.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import mlflow

from bert_core.calibration import CALIBRATION_METRICS
from tracking import store

COLUMNS = ["task", "family", "primary_metric", "score", "secondary_metrics", "train_seconds",
           "examples_per_second", "model", "alias", "champion", "status", "mlflow_run_id", "error"]


def leaderboard_row(task_name: str, summary: dict | None = None, error: str = "") -> dict:
    """A row from the `finetune` flow's summary, or an error row for a task that failed."""
    if summary is None:
        return {column: "" for column in COLUMNS} | {"task": task_name, "status": "failed", "error": error[:300],
                                                     "score": None}
    primary = f"eval_{summary['primary_metric']}"
    # The spec's other metrics; calibration's four (every classifier logs them) would crowd every row.
    calibration = {f"eval_{name}" for name in CALIBRATION_METRICS}
    secondary = {k: v for k, v in summary["metrics"].items() if k != primary and k not in calibration}
    return {
        "task": summary["task"], "family": summary["family"], "primary_metric": summary["primary_metric"],
        "score": round(summary["score"], 4),
        "secondary_metrics": "; ".join(f"{k}={v:.4f}" for k, v in sorted(secondary.items())),
        "train_seconds": round(summary["train_seconds"], 1),
        "examples_per_second": round(summary["examples_per_second"], 1),
        "model": f"{summary['model_name']} v{summary['model_version']}", "alias": summary["alias"],
        "champion": "" if summary.get("unchanged_since") else "yes" if summary["champion"] else "no",
        "status": "unchanged" if summary.get("unchanged_since") else "trained",
        "mlflow_run_id": summary["mlflow_run_id"], "error": "",
    }


def leaderboard_markdown(rows: list[dict], title: str) -> str:
    def cell(value) -> str:
        return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")

    lines = [f"# {title}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_and_log(rows: list[dict], folder: str, tracking_uri: str | None, tags: dict[str, str]) -> dict:
    """Write `leaderboard.md` and `leaderboard.csv` to `folder` and log both to a new MLflow run of the
    `bertflow-suite` experiment (each task's primary score as a metric); returns the title, the file paths
    and the MLflow run id."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    unchanged = sum(r["status"] == "unchanged" for r in rows)
    title = (f"bertflow suite {out.name}: {sum(not r['error'] for r in rows)} of {len(rows)} task(s) done"
             + (f", {unchanged} of them unchanged (nothing trained)" if unchanged else ""))
    markdown = out / "leaderboard.md"
    markdown.write_text(leaderboard_markdown(rows, title), encoding="utf-8")
    table = write_csv(rows, out / "leaderboard.csv")

    uri = store.configure_tracking(store.check_tracking(tracking_uri))
    with mlflow.start_run(experiment_id=store.experiment_for("suite", uri), run_name=out.name, tags=tags) as run:
        mlflow.log_params({"tasks": ",".join(r["task"] for r in rows)})
        mlflow.log_metrics({f"{r['task']}.{r['primary_metric']}": r["score"] for r in rows
                            if not r["error"] and math.isfinite(r["score"])})
        mlflow.log_artifact(str(markdown))
        mlflow.log_artifact(str(table))
    return {"title": title, "markdown": str(markdown), "csv": str(table), "mlflow_run_id": run.info.run_id}
