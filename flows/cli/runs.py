"""`bertflow runs`: the run folders under the runs root, filtered; `--prune` deletes the listed ones."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

from flows.cli.table import megabytes, table

STATUSES = ["running", "finished", "failed", "interrupted"]


def add(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "runs", help="list run folders (status, size, MLflow run); prune them",
        description="Run folders under the runs root ($BERTFLOW_HOME/runs, or --run-root), oldest first. Status: "
        "running (a flow works there now), finished, failed, or interrupted (killed or crashed: a new run with "
        "the same task, data and recipe resumes it). With --prune the listed folders are deleted, never a "
        "running one.")
    p.add_argument("--task", help="only this task's folders")
    p.add_argument("--status", nargs="+", choices=STATUSES, help="only folders with these statuses")
    p.add_argument("--older-than", type=float, metavar="DAYS", help="only folders created more than DAYS ago")
    p.add_argument("--prune", action="store_true", help="delete the listed folders (needs --status or --older-than)")
    p.add_argument("--run-root", help="where run folders are; default: $BERTFLOW_HOME/runs")
    p.set_defaults(handle=handle, name="runs")


def select_runs(run_root: str | None, task: str | None, statuses: list[str] | None, older_than_days: float | None):
    """The run folders (flows.run_folder.RunSummary, oldest first) of `task` (None: every task) with one of
    `statuses` (None: any), created more than `older_than_days` days ago (None: whenever)."""
    from flows.run_folder import list_runs

    runs = list_runs(run_root, task)
    if statuses:
        runs = [r for r in runs if r.status in statuses]
    if older_than_days is not None:
        cutoff = (datetime.now(UTC) - timedelta(days=older_than_days)).isoformat(timespec="seconds")
        runs = [r for r in runs if (r.created or "") < cutoff]
    return runs


def handle(args: argparse.Namespace) -> int:
    from bert_core.home import runs_root
    from flows.run_folder import prune

    filtered = bool(args.status) or args.older_than is not None
    if args.prune and not filtered:
        raise ValueError("--prune deletes the listed folders: say which with --status (e.g. failed interrupted) "
                         "and/or --older-than DAYS")
    runs = select_runs(args.run_root, args.task, args.status, args.older_than)
    root = runs_root(args.run_root)
    if not runs:
        print(f"no run folders under {root}" + (" match" if filtered else ""))
        return 0
    print(table([{"folder": str(r.path.relative_to(root)), "status": r.status, "size": megabytes(r.size_bytes),
                  "mlflow run": r.mlflow_run_id or "-", "created": r.created or "-",
                  "error": (r.error or "")[:70] or "-"} for r in runs]))
    if args.prune:
        deleted = prune(runs)
        kept = len(runs) - len(deleted)
        print(f"deleted {len(deleted)} folder(s), {megabytes(sum(r.size_bytes for r in runs if r.path in deleted))}"
              + (f"; kept {kept} that a flow run works in now" if kept else ""))
    else:
        print(f"{len(runs)} folder(s), {megabytes(sum(r.size_bytes for r in runs))} under {root}; delete some with "
              "e.g. `bertflow runs --status failed interrupted --prune`")
    return 0
