"""`bertflow suite`: the suite flow here, then its leaderboard."""

from __future__ import annotations

import argparse

from flows.cli.finetune_options import finetune_options
from flows.cli.flags import add_verbose
from flows.cli.local_flow import run_here
from flows.cli.table import table

OPTIONS = finetune_options(exclude=("task",))  # the suite sets each fine-tune's task


def add(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("suite", help="fine-tune many tasks (the suite flow), then a leaderboard")
    # The suite flow's own parameters (flows/suite.py); tests/flows/test_cli.py keeps their defaults equal.
    p.add_argument("tasks", nargs="*", help="task names or spec paths; default: the GLUE tasks present, "
                   "conll2003_ner and squad")
    p.add_argument("--max-concurrency", type=int, default=1, metavar="N", help="fine-tunes at once (default 1)")
    p.add_argument("--deployment", help="run each fine-tune through this finetune deployment's work pool, e.g. "
                   "bertflow-finetune/on-demand (needs a Prefect server and a worker); default: processes here")
    OPTIONS.add_to(p)
    add_verbose(p)
    p.set_defaults(handle=handle, name="suite")


def params(args: argparse.Namespace):
    return OPTIONS.build(args)


def handle(args: argparse.Namespace) -> int:
    from bert_core.spec import load_spec

    for task in args.tasks:
        load_spec(task)
    finetune_params = params(args)
    from flows.suite import suite

    rows = run_here(args, suite, tasks=args.tasks or None, params=finetune_params,
                    max_concurrency=args.max_concurrency, deployment=args.deployment)
    print(table([{k: r[k] for k in ("task", "primary_metric", "score", "model", "alias", "train_seconds")}
                 for r in rows]))
    return 0
