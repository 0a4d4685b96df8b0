"""`bertflow suite`: the suite flow here, then its leaderboard."""

from __future__ import annotations

import argparse

from flows.cli.finetune_options import finetune_options
from flows.cli.flags import add_verbose
from flows.cli.local_flow import run_here
from flows.cli.options import ModelOptions
from flows.cli.table import table
from flows.params import SuiteParams

# SuiteParams' fields, and its `base` fine-tune's (less `task`: the suite sets each fine-tune's task).
OPTIONS = ModelOptions(SuiteParams, positional=("tasks",), nested={"base": finetune_options(exclude=("task",))})


def add(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("suite", help="fine-tune many tasks (the suite flow), then a leaderboard")
    OPTIONS.add_to(p)
    add_verbose(p)
    p.set_defaults(handle=handle, name="suite")


def params(args: argparse.Namespace) -> SuiteParams:
    return OPTIONS.build(args)


def handle(args: argparse.Namespace) -> int:
    from bert_core.spec import load_spec

    for task in args.tasks:
        load_spec(task)
    suite_params = params(args)
    from flows.suite import suite

    rows = run_here(args, suite, params=suite_params)
    print(table([{k: r[k] for k in ("task", "status", "primary_metric", "score", "model", "alias", "train_seconds")}
                 for r in rows]))
    return 0
