"""The suite's leaderboard: one row per task, published as a Prefect table artifact, a markdown file and
a CSV, both files logged to an MLflow run of the `bertflow-suite` experiment.

A row holds the task's primary dev metric and its secondary metrics, training time and throughput, the
registered model version, whether that version became champion, and the error of a task that failed.
"""

from __future__ import annotations

import csv
from pathlib import Path

import mlflow
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks import tracking
from tasks.retry_policy import retry_if_transient

COLUMNS = ["task", "family", "primary_metric", "score", "secondary_metrics", "train_seconds",
           "examples_per_second", "model", "alias", "champion", "mlflow_run_id", "error"]


def leaderboard_row(task_name: str, summary: dict | None = None, error: str = "") -> dict:
    """A row from the `finetune` flow's summary, or an error row for a task that failed."""
    if summary is None:
        return {column: "" for column in COLUMNS} | {"task": task_name, "error": error[:300], "score": None}
    primary = f"eval_{summary['primary_metric']}"
    secondary = {k: v for k, v in summary["metrics"].items() if k != primary}
    return {
        "task": summary["task"], "family": summary["family"], "primary_metric": summary["primary_metric"],
        "score": round(summary["score"], 4),
        "secondary_metrics": "; ".join(f"{k}={v:.4f}" for k, v in sorted(secondary.items())),
        "train_seconds": round(summary["train_seconds"], 1),
        "examples_per_second": round(summary["examples_per_second"], 1),
        "model": f"{summary['model_name']} v{summary['model_version']}", "alias": summary["alias"],
        "champion": "yes" if summary["champion"] else "no", "mlflow_run_id": summary["mlflow_run_id"], "error": "",
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


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10, retry_condition_fn=retry_if_transient)
def publish_leaderboard(rows: list[dict], folder: str, tracking_uri: str | None, tags: dict[str, str]) -> dict:
    """Write `leaderboard.md` and `leaderboard.csv` to `folder`, log both to a new MLflow run of the
    `bertflow-suite` experiment (each task's primary score as a metric), and create the Prefect table
    artifact `suite-leaderboard`; returns the file paths and the MLflow run id."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    title = f"bertflow suite {out.name}: {sum(not r['error'] for r in rows)} of {len(rows)} task(s) done"
    markdown = out / "leaderboard.md"
    markdown.write_text(leaderboard_markdown(rows, title), encoding="utf-8")
    table = write_csv(rows, out / "leaderboard.csv")

    uri = tracking.configure_tracking(tracking.check_tracking(tracking_uri))
    with mlflow.start_run(experiment_id=tracking.experiment_for("suite", uri), run_name=out.name, tags=tags) as run:
        mlflow.log_params({"tasks": ",".join(r["task"] for r in rows)})
        mlflow.log_metrics({f"{r['task']}.{r['primary_metric']}": r["score"] for r in rows if not r["error"]})
        mlflow.log_artifact(str(markdown))
        mlflow.log_artifact(str(table))
    create_table_artifact(rows, key="suite-leaderboard", description=title)
    create_markdown_artifact(markdown.read_text(encoding="utf-8"), key="suite-leaderboard-md", description=title)
    return {"markdown": str(markdown), "csv": str(table), "mlflow_run_id": run.info.run_id}
