"""`bertflow audit`: the audit flow here, then the most suspect rows and where the rest are."""

from __future__ import annotations

import argparse
import csv
import itertools
import sys

from flows.cli.finetune_options import finetune_options
from flows.cli.flags import add_verbose
from flows.cli.local_flow import run_here
from flows.cli.options import ModelOptions
from flows.cli.table import table
from flows.params import AuditParams

# Folds register nothing: the registry's fields and the success clean-up of a run folder do not apply.
NOT_FOR_FOLDS = ("registry_policy", "registry_confidence", "keep_checkpoints_after_success", "serving_precisions",
                 "precision_margin")
OPTIONS = ModelOptions(AuditParams, title="audit (AuditParams)",
                       nested={"base": finetune_options(exclude=NOT_FOR_FOLDS,
                                                        title="each fold's fine-tune (FinetuneParams)")})
SHOWN = 10  # suspects printed; the CSV holds `--top`


def add(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "audit", help="find training rows whose label looks wrong (k-fold fine-tunes, then cleanlab's ranking)",
        description="Each training row is scored by a model fine-tuned on the other folds; the rows whose given "
        "label those models find least likely are listed in a CSV and an MLflow table. Example: bertflow audit sst2 "
        "--max-train-samples 4000 --k 5 --epochs 1 --max-concurrency 2")
    OPTIONS.add_to(p)
    add_verbose(p)
    p.set_defaults(handle=handle, name="audit")


def params(args: argparse.Namespace) -> AuditParams:
    return OPTIONS.build(args)


def handle(args: argparse.Namespace) -> int:
    from bert_core.audit import weak_folds_warning
    from bert_core.spec import load_spec

    load_spec(args.task)
    audit_params = params(args)
    from flows.audit import audit

    result = run_here(args, audit, params=audit_params)
    print(f"{result['flagged']} of {result['audited']} training rows flagged; by given label: "
          + ", ".join(f"{label or '(none)'} {n}" for label, n in result["counts"]["by_given_label"].items()))
    print(f"the fold models' suggestion is the given label for {result['agreement']:.1%} of the rows")
    warning = weak_folds_warning(result["flagged"], result["audited"], result["agreement"])
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    with open(result["csv"], newline="", encoding="utf-8") as f:
        shown = list(itertools.islice(csv.DictReader(f), SHOWN))
    if shown:
        print(table([{column: value[:60] for column, value in row.items()} for row in shown]))
    print(f"suspects: {result['csv']}; summary: {result['markdown']}; MLflow run {result['mlflow_run_id']}")
    return 0
