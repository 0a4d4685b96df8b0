"""Every registered version of a task side by side, with how sure each dev score is.

- ``compare_versions(task)``: one row per version of ``bert-<task>``, best first: its metrics, the 95%
  bootstrap interval of the primary metric, the paired bootstrap of (version - champion) on the same dev
  rows, and what produced it (pretrained checkpoint, the model it started from, key hyperparameters, data,
  time, throughput).
- ``interval_chart_png`` / ``comparison_markdown`` / ``display_rows``: the same rows as a chart, a
  markdown report and short text cells (for the CLI and the Prefect table).
- ``run_comparison(task)``: all of the above, written to a run folder and logged to a new MLflow run
  ``compare-<time>`` in the task's experiment (tag ``run_kind=compare``), so the comparison is kept.

Intervals are recomputed from each version's own dev predictions (``evaluation/predictions_eval.jsonl``
of its run), so they need no extra inference. Two versions are paired only when their runs were scored
on the same dev rows (same ``_source`` set and gold fields); otherwise the row says so.
"""

from __future__ import annotations

import csv
import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import mlflow
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from bert_core.bootstrap import bootstrap_interval, paired_bootstrap
from bert_core.families import get_family
from bert_core.home import runs_root
from bert_core.spec import load_spec
from tracking.registry import (
    CHAMPION,
    N_RESAMPLES,
    describe_versions,
    model_name,
    pair_on_rows,
    run_predictions,
)
from tracking.store import experiment_name

# Run params (dotted, as tracking.store.log_params_safely logs them) shown per version.
HYPERPARAMETERS = {"learning_rate": "training.learning_rate", "batch_size": "training.batch_size",
                   "epochs": "training.epochs", "max_train_samples": "training.max_train_samples"}
NOT_COMPARABLE = "not comparable: different dev rows"


def compare_versions(task: str, confidence: float = 0.95, n_resamples: int = N_RESAMPLES, seed: int = 0,
                     name: str | None = None) -> list[dict]:
    """One dict per registered version of ``name`` (default ``bert-<task>``), ranked by the primary metric,
    best first. Keys: ``rank, version, aliases, primary_metric, score, low, high`` (the interval),
    ``vs_champion, vs_champion_low, vs_champion_high, p_better`` (paired bootstrap; None when not
    paired), ``note``, one key per spec metric, ``pretrained``, ``parent`` (the pinned URI of the model it
    was fine-tuned from: its run's ``parent_model`` tag; None from a checkpoint), the ``HYPERPARAMETERS``,
    ``data_fingerprint, dev_rows, train_seconds, examples_per_second, run_id, created``.
    Raises LookupError when ``name`` has no versions."""
    spec = load_spec(task)
    name = name or model_name(spec.name)
    versions = describe_versions(name)
    if not versions:
        raise LookupError(f"{name} has no registered versions")
    metric = spec.primary_metric
    lines = {v["version"]: run_predictions(v["run_id"]) if v["run_id"] else None for v in versions}
    champion = next((v["version"] for v in versions if CHAMPION in v["aliases"]), None)
    rows = []
    for v in versions:
        row = {"rank": None, "version": v["version"], "aliases": v["aliases"], "primary_metric": metric,
               "score": v["metrics"].get(metric), "low": None, "high": None, "vs_champion": None,
               "vs_champion_low": None, "vs_champion_high": None, "p_better": None, "note": ""}
        row |= {m: v["metrics"].get(m) for m in spec.metrics}
        row |= _run_facts(v["run_id"])
        row |= {"data_fingerprint": row["data_fingerprint"] or v["data_fingerprint"], "run_id": v["run_id"],
                "created": v["created"]}
        mine = lines[v["version"]]
        if mine is None:
            row["note"] = "no dev predictions logged"
        else:
            gold = [_row(line) for line in mine]
            predictions = [line["prediction"] for line in mine]
            interval = bootstrap_interval(spec.family, predictions, gold, metric, spec.labels, n_resamples,
                                          confidence, seed, get_family(spec.family).rows.task_settings(spec))
            row |= {"score": interval.point, "low": interval.low, "high": interval.high, "dev_rows": len(gold)}
            row |= _versus_champion(v["version"], champion, mine, lines.get(champion), spec, confidence,
                                    n_resamples, seed)
        rows.append(row)
    # Best first; versions without a score last, newest first among equals.
    rows.sort(key=lambda r: (r["score"] is None, -(r["score"] or 0.0), -int(r["version"])))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def _versus_champion(version: str, champion: str | None, mine: list[dict], theirs: list[dict] | None, spec,
                     confidence: float, n_resamples: int, seed: int) -> dict:
    """The paired-bootstrap keys of a row (when it pairs with the champion) and its ``note``."""
    if champion is None:
        return {"note": "no champion"}
    if version == champion:
        return {"note": "champion"}
    if theirs is None:
        return {"note": f"champion v{champion} has no dev predictions"}
    paired = pair_on_rows(mine, theirs)
    if paired is None:
        return {"note": NOT_COMPARABLE}
    gold, new, old = paired
    gap = paired_bootstrap(spec.family, new, old, gold, spec.primary_metric, spec.labels, n_resamples, confidence,
                           seed, get_family(spec.family).rows.task_settings(spec))
    if gap.low > 0:
        note = f"better than champion v{champion} ({confidence:.0%})"
    elif gap.high < 0:
        note = f"worse than champion v{champion} ({confidence:.0%})"
    else:
        note = f"no significant difference from champion v{champion} ({confidence:.0%})"
    return {"vs_champion": gap.delta, "vs_champion_low": gap.low, "vs_champion_high": gap.high,
            "p_better": gap.p_candidate_better, "note": note}


def _row(line: dict) -> dict:
    return {k: v for k, v in line.items() if k != "prediction"}


def _run_facts(run_id: str | None) -> dict:
    """What produced a version, read from its MLflow run; None for anything missing (e.g. a deleted run)."""
    facts = {"pretrained": None, "parent": None, **dict.fromkeys(HYPERPARAMETERS), "data_fingerprint": None,
             "dev_rows": None, "train_seconds": None, "examples_per_second": None}
    if not run_id:
        return facts
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException:
        return facts
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    facts |= {short: _param(params.get(key)) for short, key in HYPERPARAMETERS.items()}
    facts |= {"pretrained": tags.get("pretrained") or params.get("pretrained"), "parent": tags.get("parent_model"),
              "data_fingerprint": tags.get("data_fingerprint"),
              "train_seconds": metrics.get("train_seconds"), "examples_per_second": metrics.get("examples_per_second")}
    return facts


def _param(text: str | None):
    """Run params are strings: numbers back to numbers, "None" (unset budget) to None."""
    if text is None or text == "None":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


# ---- presenting the rows -------------------------------------------------------------------------------
def display_rows(rows: list[dict]) -> list[dict[str, str]]:
    """Short text cells, one dict per version (same keys in every dict): for tables people read."""
    def num(x, digits=4, sign=False):
        return "-" if x is None else (f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}")

    out = []
    for r in rows:
        paired = r["vs_champion"] is not None
        out.append({
            "rank": str(r["rank"]), "version": f"v{r['version']}", "alias": ",".join(r["aliases"]) or "-",
            r["primary_metric"]: num(r["score"]),
            "interval": f"[{num(r['low'])}, {num(r['high'])}]" if r["low"] is not None else "-",
            "vs champion": (f"{num(r['vs_champion'], sign=True)} [{num(r['vs_champion_low'], sign=True)}, "
                            f"{num(r['vs_champion_high'], sign=True)}]") if paired else "-",
            "p(better)": num(r["p_better"], 3), "note": r["note"] or "-",
            "pretrained": Path(str(r["pretrained"])).name if r["pretrained"] else "-",
            "parent": r["parent"] or "-",
            "lr": _plain(r["learning_rate"]), "batch": _plain(r["batch_size"]), "epochs": _plain(r["epochs"]),
            "max train": _plain(r["max_train_samples"]), "dev rows": _plain(r["dev_rows"]),
            "data": (r["data_fingerprint"] or "-")[:12], "train s": num(r["train_seconds"], 1),
            "examples/s": num(r["examples_per_second"], 1),
        })
    return out


def _plain(x) -> str:
    return "-" if x is None else f"{x:g}" if isinstance(x, float) else str(x)


def comparison_markdown(name: str, rows: list[dict], confidence: float, chart: str | None = None) -> str:
    """The rows as a markdown report: a table and how to read it."""
    cells = display_rows(rows)
    headers = list(cells[0])
    metric = rows[0]["primary_metric"]
    lines = [f"### {name}: {len(rows)} registered version(s), ranked by {metric}", "",
             "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(c[h] for h in headers) + " |" for c in cells]
    lines += ["", f"`interval`: {confidence:.0%} percentile bootstrap interval of {metric} over the dev rows. "
              f"`vs champion`: paired bootstrap of (version - champion) on the same dev rows, with its "
              f"{confidence:.0%} interval; `p(better)`: share of resamples where the version scored higher. "
              "Versions scored on other dev rows are not paired."]
    if chart:
        lines += ["", f"Chart: `{chart}`"]
    return "\n".join(lines)


def interval_chart_png(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """The primary metric of each version (in ``rows`` order) with its interval as an error bar; the
    champion in orange with a dashed line at its score. Versions without predictions show no bar."""
    metric = rows[0]["primary_metric"]
    fig = Figure(figsize=(max(4.0, 0.9 * len(rows) + 2), 4), layout="constrained")
    ax = fig.subplots()
    for x, r in enumerate(rows):
        if r["score"] is None:
            continue
        is_champion = CHAMPION in r["aliases"]
        color = "tab:orange" if is_champion else "tab:blue"
        if r["low"] is not None:
            ax.errorbar([x], [r["score"]], yerr=[[r["score"] - r["low"]], [r["high"] - r["score"]]], fmt="o",
                        color=color, capsize=6, markersize=7)
        else:
            ax.plot([x], [r["score"]], "x", color=color, markersize=8)
        ax.annotate(f"{r['score']:.3f}", (x, r["score"]), textcoords="offset points", xytext=(8, 0), va="center",
                    fontsize="small")
        if is_champion:
            ax.axhline(r["score"], color=color, linestyle="--", linewidth=1, alpha=0.6)
    labels = [f"v{r['version']}" + (f"\n{','.join(r['aliases'])}" if r["aliases"] else "") for r in rows]
    ax.set_xticks(range(len(rows)), labels)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_ylabel(metric)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title or f"{metric} per version, with bootstrap intervals")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig).print_png(str(path))
    return path


# ---- one comparison, kept ------------------------------------------------------------------------------
@dataclasses.dataclass
class Comparison:
    name: str  # the registered model
    primary_metric: str
    rows: list[dict]  # compare_versions' rows, best first
    chart: str  # the PNG in the comparison's folder
    markdown: str  # the report's text (also saved as comparison.md)
    folder: str
    mlflow_run_id: str | None  # the `compare-...` run holding chart, report and CSV; None if not logged


def run_comparison(task: str, confidence: float = 0.95, n_resamples: int = N_RESAMPLES, run_root: str | None = None,
                   log_to_mlflow: bool = True, name: str | None = None) -> Comparison:
    """``compare_versions`` written to ``<run_root>/<task>/compare-<time>`` (chart, markdown, CSV) and, with
    ``log_to_mlflow``, logged under ``compare/`` to a new run in the experiment ``bertflow-<task>`` (else
    the newest version's run's). The tracking URI must already be configured
    (``tracking.store.configure_tracking``)."""
    spec = load_spec(task)
    name = name or model_name(spec.name)
    rows = compare_versions(task, confidence, n_resamples, name=name)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    root = runs_root(run_root)
    folder = root / spec.name / f"compare-{stamp}"
    title = f"{name}: {spec.primary_metric}, {confidence:.0%} bootstrap intervals"
    chart = interval_chart_png(rows, folder / "comparison.png", title)
    markdown = comparison_markdown(name, rows, confidence, chart=str(chart))
    (folder / "comparison.md").write_text(markdown + "\n", encoding="utf-8")
    _write_csv(rows, folder / "comparison.csv")
    run_id = _log_to_mlflow(spec.name, name, rows, folder, confidence, n_resamples, stamp) if log_to_mlflow else None
    return Comparison(name, spec.primary_metric, rows, str(chart), markdown, str(folder), run_id)


def _write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([{**r, "aliases": ",".join(r["aliases"])} for r in rows])


def _log_to_mlflow(task: str, name: str, rows: list[dict], folder: Path, confidence: float, n_resamples: int,
                   stamp: str) -> str:
    client = MlflowClient()
    experiment = mlflow.get_experiment_by_name(experiment_name(task))
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:  # versions registered from runs in another experiment: keep the comparison next to them
        newest = max(rows, key=lambda r: int(r["version"]))
        experiment_id = client.get_run(newest["run_id"]).info.experiment_id
    champion = next((r["version"] for r in rows if CHAMPION in r["aliases"]), "none")
    tags = {"task": task, "run_kind": "compare", "model_name": name, "champion_version": champion}
    run = client.create_run(experiment_id, run_name=f"compare-{stamp}", tags=tags)
    try:
        for key, value in {"confidence": confidence, "n_resamples": n_resamples, "versions": len(rows)}.items():
            client.log_param(run.info.run_id, key, value)
        client.log_artifacts(run.info.run_id, str(folder), artifact_path="compare")
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id
