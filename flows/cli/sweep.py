"""`bertflow sweep`: the sweep flow here, then its trials and the best one."""

from __future__ import annotations

import argparse

from flows.cli.finetune_options import finetune_options
from flows.cli.flags import add_verbose
from flows.cli.local_flow import run_here
from flows.cli.options import Form, ModelOptions, space_option
from flows.cli.table import table
from flows.params import SweepParams

SPACE = Form(flag="--space", metavar="FIELD=VALUES", parse=space_option, required=True,
             syntax="FIELD=V1,V2,... or FIELD=LOW:HIGH[:log|:STEP] (a range: --sampler tpe only); repeat it for "
             "more fields.")
OPTIONS = ModelOptions(
    SweepParams, title="search (SweepParams)",
    nested={"base": finetune_options(title="each trial's fine-tune (FinetuneParams)")},
    # TrainConfig has a `seed` too: this one seeds the sampler.
    forms={"space": SPACE, "seed": Form(flag="--sampler-seed"), "register_best": Form(flag="--no-register")})


def add(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "sweep", help="hyperparameter search for a task (the sweep flow), then register the best trial",
        description="Trials are fine-tunes with some TrainConfig fields varied; the Optuna study is kept in a "
        "database, so the same command again resumes an interrupted sweep. Example: bertflow sweep mrpc --space "
        "learning_rate=2e-5,3e-5,5e-5 --space batch_size=16,32")
    OPTIONS.add_to(p)
    add_verbose(p)
    p.set_defaults(handle=handle, name="sweep")


def params(args: argparse.Namespace) -> SweepParams:
    return OPTIONS.build(args)


def handle(args: argparse.Namespace) -> int:
    from bert_core.spec import load_spec

    metric = load_spec(args.task).primary_metric
    sweep_params = params(args)
    from flows.sweep import sweep

    result = run_here(args, sweep, params=sweep_params)
    print(table([{"trial": t["number"], "state": t["state"], **t["params"],
                  metric: "-" if t["value"] is None else f"{t['value']:.4f}", "mlflow run": t["mlflow_run_id"] or "-"}
                 for t in result["trials"]]))
    best, registered = result["best"], result["registered"]
    print(f"best: trial {best['number']}, {metric} {best['value']:.4f}"
          + (f"; {registered['model_uri']} is {registered['alias']}" if registered else ""))
    for line in result["serving"]:
        print(f"  {line}")
    print(f"study {result['study']} in {result['storage']}; table {result['table']}, plot {result['plot']}")
    return 0
