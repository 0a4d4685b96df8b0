"""The options that are the command line's own, not a flow's parameter, shared by several commands and
declared here once: how results are shown (--json, --verbose) and, for the commands that run no flow, which
MLflow store they use (--tracking-uri; a flow's comes from its parameter model) and which precision a model
predicts in (--precision)."""

from __future__ import annotations

import argparse

from bert_core.serving_precision import SERVING_PRECISIONS


def add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true", help="show tracebacks and every library's INFO lines (Prefect, "
                   "MLflow); default: bertflow's own line per step, warnings and errors")


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON (default: a few lines for people)")


def add_tracking_uri(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", help="MLflow URI; default: $MLFLOW_TRACKING_URI, else $BERTFLOW_HOME/mlflow.db")


def add_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=SERVING_PRECISIONS,
                   help="predict in this precision (auto = bf16 where the CPU has it natively; int8 = dynamically "
                   "quantized linear layers) instead of the one the model was registered with (fp32, or its gated "
                   "bf16 / int8 version's); see docs/scoring.md")
