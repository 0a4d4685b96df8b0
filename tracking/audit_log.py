"""A label audit's outputs: the suspect rows as a CSV and a markdown summary in the audit's folder, both logged to
an MLflow run of the `bertflow-audit` experiment, with the suspects as an MLflow table (`label_audit.json`, shown
as a table by the UI's artifact view) and the counts as metrics. The rows come from `bert_core.audit`."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from bert_core.audit import weak_folds_warning
from tracking import store
from tracking.run import start_run

CSV_NAME, TABLE_NAME, MARKDOWN_NAME = "label_audit.csv", "label_audit.json", "label_audit.md"
SHOWN_IN_MARKDOWN = 20  # suspects listed in the summary; the CSV and the table hold all `top`


def write_suspects_csv(suspects: list[dict], columns: tuple[str, ...], path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(suspects)
    return path


def audit_markdown(title: str, suspects: list[dict], counts: dict[str, dict[str, int]], flagged: int,
                   audited: int, agreement: float | None = None) -> str:
    """The summary: how many rows were flagged, how often the fold models agree with the given labels (and the
    warning when they look too weak to judge), suspects per given label and per given -> suggested pair, and the
    first suspects."""
    def cell(value) -> str:
        return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")[:200]

    lines = [f"# {title}", "", f"{flagged} of {audited} training rows flagged ({flagged / max(audited, 1):.1%}); "
             f"{len(suspects)} listed."]
    if agreement is not None:
        lines += ["", f"The fold models' suggestion is the given label for {agreement:.1%} of the rows."]
        warning = weak_folds_warning(flagged, audited, agreement)
        lines += ["", f"**Warning**: {warning}"] if warning else []
    lines += ["", "| given label | suspects |", "|---|---|"]
    lines += [f"| {cell(label or '(none)')} | {n} |" for label, n in counts["by_given_label"].items()]
    lines += ["", "| given -> suggested | suspects |", "|---|---|"]
    lines += [f"| {cell(pair)} | {n} |" for pair, n in counts["given_to_suggested"].items()]
    shown = suspects[:SHOWN_IN_MARKDOWN]
    if shown:
        columns = list(shown[0])
        lines += ["", f"## The {len(shown)} most suspect rows", "", "| " + " | ".join(columns) + " |",
                  "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(cell(s[c]) for c in columns) + " |" for s in shown]
    return "\n".join(lines) + "\n"


def flagged_metrics(by_given_label: dict[str, int]) -> dict[str, int]:
    """``flagged.<given label>``: suspects per given label (a label set as its labels joined by ``_``, none as
    ``no label``). MLflow takes letters, digits, ``_ - . /``, spaces and colons in a metric's name (colons not on
    Windows): anything else in a label, such as a label set's ``|``, becomes ``_`` (labels that then read the same
    add up)."""
    metrics: dict[str, int] = {}
    for label, n in by_given_label.items():
        name = "flagged." + (re.sub(r"[^\w.\- ]", "_", label) if label else "no label")
        metrics[name] = metrics.get(name, 0) + n
    return metrics


def write_and_log_audit(task_name: str, folder: str, suspects: list[dict], columns: tuple[str, ...],
                        counts: dict[str, dict[str, int]], summary: dict, tracking_uri: str | None,
                        params: dict, tags: dict[str, str]) -> dict:
    """Write the CSV and markdown to `folder`, log them, the suspects' table, `params` and the counts to a new run
    of `bertflow-audit`. `summary`: {"flagged": int, "audited": int}. Returns the title, paths and the run id."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    title = f"bertflow audit {task_name} ({out.name})"
    table = write_suspects_csv(suspects, columns, out / CSV_NAME)
    markdown = out / MARKDOWN_NAME
    markdown.write_text(audit_markdown(title, suspects, counts, summary["flagged"], summary["audited"],
                                       summary.get("agreement")), encoding="utf-8")

    uri = store.configure_tracking(store.check_tracking(tracking_uri))
    with start_run(store.experiment_for("audit", uri), out.name, {"task": task_name, **tags}) as run:
        run.log_params(params)
        run.log_metrics({"audited_rows": summary["audited"], "flagged_rows": summary["flagged"],
                         **({"fold_agreement": summary["agreement"]} if "agreement" in summary else {}),
                         **flagged_metrics(counts["by_given_label"])})
        run.log_table({c: [s[c] for s in suspects] for c in columns}, TABLE_NAME)
        run.log_artifact(str(table))
        run.log_artifact(str(markdown))
    return {"title": title, "csv": str(table), "markdown": str(markdown), "mlflow_run_id": run.run_id}
