"""`bertflow compare`: a task's registered versions side by side, with bootstrap intervals."""

from __future__ import annotations

import argparse

from flows.cli.options import Form, ModelOptions
from flows.cli.table import table
from flows.params import CompareParams

OPTIONS = ModelOptions(CompareParams, positional=("task",),
                       forms={"n_resamples": Form(flag="--resamples"), "log_to_mlflow": Form(flag="--no-log")})


def add(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("compare", help="registered versions of a task side by side, with bootstrap intervals")
    OPTIONS.add_to(p)
    p.set_defaults(handle=handle, name="compare")


def params(args: argparse.Namespace) -> CompareParams:
    return OPTIONS.build(args)


def handle(args: argparse.Namespace) -> None:
    from tracking.compare import display_rows, run_comparison
    from tracking.store import configure_tracking

    given = params(args)
    configure_tracking(given.tracking_uri)
    result = run_comparison(given.task, given.confidence, given.n_resamples, given.run_root,
                            log_to_mlflow=given.log_to_mlflow)
    print(f"{result.name} (primary metric: {result.primary_metric}; {given.confidence:.0%} bootstrap intervals)")
    print(table(display_rows(result.rows)))
    print(f"chart: {result.chart}" + (f" (also in MLflow run {result.mlflow_run_id}, compare/)" if result.mlflow_run_id else ""))
