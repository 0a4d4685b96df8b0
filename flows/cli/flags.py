"""The options that are the command line's own, not a flow's parameter, shared by several commands and
declared here once: how results are shown (--json, --verbose) and, for the commands that run no flow, which
MLflow store they use (--tracking-uri; a flow's comes from its parameter model)."""

from __future__ import annotations

import argparse


def add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true", help="show tracebacks and every library's INFO lines (Prefect, "
                   "MLflow); default: bertflow's own line per step, warnings and errors")


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON (default: a few lines for people)")


def add_tracking_uri(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", help="MLflow URI; default: $MLFLOW_TRACKING_URI, else $BERTFLOW_HOME/mlflow.db")

