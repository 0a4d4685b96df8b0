"""`bertflow run`: the finetune flow, here."""

from __future__ import annotations

import argparse
import json

from flows.cli.finetune_options import finetune_options
from flows.cli.flags import add_json, add_verbose
from flows.cli.local_flow import run_here

OPTIONS = finetune_options()


def add(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("run", help="fine-tune a task with the finetune flow, locally")
    OPTIONS.add_to(p)
    add_verbose(p)
    add_json(p)
    p.add_argument("--retries", type=int, default=0, metavar="N",
                   help="retry the flow run N times after a failure that may heal (tracking server or hub "
                   "unreachable, I/O), 60 s apart; errors of the input are never retried. Default 0: a run "
                   "here fails at once, and the same command again resumes from its newest checkpoint")
    p.set_defaults(handle=handle, name="run")


def params(args: argparse.Namespace):
    return OPTIONS.build(args)


def handle(args: argparse.Namespace) -> int:
    from bert_core.spec import load_spec

    load_spec(args.task)  # a bad spec fails here, before a Prefect server or MLflow run is started
    finetune_params = params(args)
    from flows.finetune import finetune  # imports Prefect and MLflow: only when a run is wanted
    from flows.summary import FinetuneSummary

    summary = run_here(args, finetune, params=finetune_params)
    print(json.dumps(summary, indent=2, default=str) if args.json else FinetuneSummary(**summary).text())
    return 0
