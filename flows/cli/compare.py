"""`bertflow compare`: a task's registered versions side by side, with bootstrap intervals."""

from __future__ import annotations

import argparse

from flows.cli.flags import add_tracking_uri
from flows.cli.table import table


def add(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("compare", help="registered versions of a task side by side, with bootstrap intervals")
    p.add_argument("task", help="task name or spec YAML path")
    p.add_argument("--confidence", type=float, default=0.95, metavar="X", help="interval confidence (default 0.95)")
    p.add_argument("--resamples", type=int, default=1000, metavar="N", help="bootstrap resamples (default 1000)")
    p.add_argument("--run-root", help="where the comparison folder goes; default: $BERTFLOW_HOME/runs")
    p.add_argument("--no-log", action="store_true", help="do not keep the comparison as an MLflow run")
    add_tracking_uri(p)
    p.set_defaults(handle=handle, name="compare")


def handle(args: argparse.Namespace) -> None:
    from tracking.compare import display_rows, run_comparison
    from tracking.store import configure_tracking

    configure_tracking(args.tracking_uri)
    result = run_comparison(args.task, args.confidence, args.resamples, args.run_root, log_to_mlflow=not args.no_log)
    print(f"{result.name} (primary metric: {result.primary_metric}; {args.confidence:.0%} bootstrap intervals)")
    print(table(display_rows(result.rows)))
    print(f"chart: {result.chart}" + (f" (also in MLflow run {result.mlflow_run_id}, compare/)" if result.mlflow_run_id else ""))
