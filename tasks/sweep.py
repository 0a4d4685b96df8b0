"""The `publish_sweep` task: a sweep's trials as files (table, plot, JSON) in its folder and its parent MLflow
run, and as two Prefect artifacts (a table of the trials, the outcome in markdown)."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks.train import artifact_key
from tracking.plots import sweep_png
from tracking.run import TrackedRun


@task(cache_policy=NO_CACHE)
def publish_sweep(task_name: str, metric: str, trials: list[dict], best: dict | None, registered: dict | None,
                  serving: list[str], params: list[str], log_axes: list[str], folder: str, parent: TrackedRun) -> dict:
    """Write `trials.json`, `sweep.md` and `sweep.png` to `folder` and to the sweep's MLflow run `parent` (with
    the trial scores as metrics); returns the files' paths. `serving`: a line per serving precision asked of the
    best trial's version; `params`: the searched fields, `log_axes` those searched on a log scale."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / "trials.json").write_text(json.dumps(trials, indent=1, default=str), encoding="utf-8")
    plot = sweep_png(trials, params, metric, out / "sweep.png", log_scale=log_axes)
    markdown = _markdown(task_name, metric, trials, best, registered, serving, params)
    (out / "sweep.md").write_text(markdown, encoding="utf-8")

    for path in ("trials.json", "sweep.md", "sweep.png"):
        parent.log_artifact(str(out / path))
    counts = {state: sum(t["state"] == state for t in trials) for state in ("COMPLETE", "PRUNED", "FAIL")}
    for state, n in counts.items():
        parent.log_metric(f"trials_{state.lower()}", n)
    for t in trials:  # the search's progress as one chart: score by trial number
        if t["state"] == "COMPLETE":
            parent.log_metric(f"trial/{metric}", t["value"], step=t["number"])
    if best is not None:
        parent.log_metric(f"best_{metric}", best["value"])
        parent.set_tag("best_trial", str(best["number"]))
        parent.set_tag("best_run_id", best["mlflow_run_id"])
    if registered:
        parent.set_tag("model_uri", registered["model_uri"])

    create_table_artifact([_row(t, params, metric) for t in trials], key=artifact_key(task_name, "sweep-trials"),
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
              serving: list[str], params: list[str]) -> str:
    lines = [f"# {task_name} sweep: {len(trials)} trials", ""]
    if best is None:
        lines += ["No trial completed.", ""]
    else:
        chosen = ", ".join(f"{k} {v}" for k, v in best["params"].items())
        lines += [f"**Best: trial {best['number']}**, dev {metric} {best['value']:.4f} ({chosen}); "
                  f"MLflow run `{best['mlflow_run_id']}`."]
        if registered:
            lines += [f"Registered as `{registered['model_uri']}`: {registered['alias']}, {registered['reason']}."]
            lines += ["", *(f"- {line}" for line in serving)] if serving else []
        lines.append("")
    rows = [_row(t, params, metric) for t in trials]
    if rows:
        header = list(rows[0])
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join("" if r[h] is None else str(r[h]) for h in header) + " |" for r in rows]
    return "\n".join(lines) + "\n"
