"""`bertflow tasks`: the built-in task specs."""

from __future__ import annotations

import argparse

from flows.cli.table import table


def add(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("tasks", help="list the built-in task specs")
    p.set_defaults(handle=handle, name="tasks")


def handle(args: argparse.Namespace) -> None:
    from bert_core.spec import builtin_specs, load_spec

    rows = []
    for name in builtin_specs():
        spec = load_spec(name)
        source = "local" + ("+hub" if spec.hub else "") if spec.local else "hub"
        rows.append({"task": name, "family": spec.family, "primary metric": spec.primary_metric,
                     "data": source, "description": spec.description})
    print(table(rows))
