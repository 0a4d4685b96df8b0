"""The `publish_sweep` task: a sweep's trials as files (table, plot, JSON) in its folder and its parent MLflow
run, and as two Prefect artifacts (a table of the trials, the outcome in markdown)."""

from __future__ import annotations

import json
from pathlib import Path

from mlflow.tracking import MlflowClient
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from bert_core.search import Range, Space
from tasks.train import artifact_key
from tracking.plots import sweep_png


@task(cache_policy=NO_CACHE)
def publish_sweep(task_name: str, metric: str, trials: list[dict], best: dict | None, registered: dict | None,
                  space: Space, folder: str, parent_run_id: str) -> dict:
    """Write `trials.json`, `sweep.md` and `sweep.png` to `folder` and to MLflow run `parent_run_id` (with the
    trial scores as metrics); returns the files' paths."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / "trials.json").write_text(json.dumps(trials, indent=1, default=str), encoding="utf-8")
    log_axes = [name for name, values in space.items() if isinstance(values, Range) and values.log]
    plot = sweep_png(trials, list(space), metric, out / "sweep.png", log_scale=log_axes)
    markdown = _markdown(task_name, metric, trials, best, registered, list(space))
    (out / "sweep.md").write_text(markdown, encoding="utf-8")

    client = MlflowClient()
    for path in ("trials.json", "sweep.md", "sweep.png"):
        client.log_artifact(parent_run_id, str(out / path))
    counts = {state: sum(t["state"] == state for t in trials) for state in ("COMPLETE", "PRUNED", "FAIL")}
    for state, n in counts.items():
        client.log_metric(parent_run_id, f"trials_{state.lower()}", n)
    for t in trials:  # the search's progress as one chart: score by trial number
        if t["state"] == "COMPLETE":
            client.log_metric(parent_run_id, f"trial/{metric}", t["value"], step=t["number"])
    if best is not None:
        client.log_metric(parent_run_id, f"best_{metric}", best["value"])
        client.set_tag(parent_run_id, "best_trial", str(best["number"]))
        client.set_tag(parent_run_id, "best_run_id", best["mlflow_run_id"])
    if registered:
        client.set_tag(parent_run_id, "model_uri", registered["model_uri"])

    create_table_artifact([_row(t, list(space), metric) for t in trials], key=artifact_key(task_name, "sweep-trials"),
                          description=f"{task_name} sweep: every trial, its parameters and dev {metric}")
    create_markdown_artifact(markdown, key=artifact_key(task_name, "sweep"), description=f"{task_name} sweep outcome")
    return {"markdown": str(out / "sweep.md"), "plot": str(plot), "json": str(out / "trials.json")}


def _row(trial: dict, params: list[str], metric: str) -> dict:
    value = trial["value"]
    return {"trial": trial["number"], "state": trial["state"], **{p: trial["params"].get(p) for p in params},
            metric: None if value is None else round(value, 4), "evaluations": trial["evaluations"],
            "seconds": None if trial["seconds"] is None else round(trial["seconds"]),
            "mlflow run": trial["mlflow_run_id"] or "", "error": (trial["error"] or "")[:120]}


def _markdown(task_name: str, metric: str, trials: list[dict], best: dict | None, registered: dict | None,
              params: list[str]) -> str:
    lines = [f"# {task_name} sweep: {len(trials)} trials", ""]
    if best is None:
        lines += ["No trial completed.", ""]
    else:
        chosen = ", ".join(f"{k} {v}" for k, v in best["params"].items())
        lines += [f"**Best: trial {best['number']}**, dev {metric} {best['value']:.4f} ({chosen}); "
                  f"MLflow run `{best['mlflow_run_id']}`."]
        if registered:
            lines += [f"Registered as `{registered['model_uri']}`: {registered['alias']}, {registered['reason']}."]
        lines.append("")
    rows = [_row(t, params, metric) for t in trials]
    if rows:
        header = list(rows[0])
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join("" if r[h] is None else str(r[h]) for h in header) + " |" for r in rows]
    return "\n".join(lines) + "\n"
