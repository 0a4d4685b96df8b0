"""`bertflow score`: the score flow here, for a file or a folder's new files (docs/scoring.md)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from flows.cli.flags import add_json, add_verbose
from flows.cli.local_flow import run_here
from flows.cli.options import Form, ModelOptions
from flows.params import ScoreParams

OPTIONS = ModelOptions(ScoreParams, positional=("model", "file"), forms={
    "columns": Form(flag="--column", metavar="NAME=COLUMN", example="text=review",
                    syntax="NAME=COLUMN, e.g. --column text=review; repeat it for more."),
    "input_format": Form(flag="--format"),
    "settle_seconds": Form(metavar="S"),
})


def add(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "score", help="batch predictions of a registered model for a file, or a folder's new files",
        description="Runs the bertflow-score flow here: the model URI is pinned to one version (an alias "
        "resolved once), the file's rows are read (format from the extension: tsv, csv, json, jsonl, parquet, "
        "conll, SQuAD json) and scored; predictions go next to the file as "
        "<stem>.predictions.<model>-v<version>.jsonl, one line per input row, rows that cannot be scored listed "
        "with their error (and in <stem>.rejected.<model>-v<version>.jsonl); each file gets an MLflow run in the "
        "experiment bertflow-score-<model>. With --folder, the files matching --pattern that this version has "
        "not scored yet, as the bertflow-score/folder deployment does. See docs/scoring.md.")
    OPTIONS.add_to(p)
    add_json(p)
    add_verbose(p)
    p.set_defaults(handle=handle, name="score")


def params(args: argparse.Namespace) -> ScoreParams:
    """The flow's parameters, a file or folder given as its absolute path (checked here, before a Prefect
    server is started)."""
    if (args.file is None) == (args.folder is None):
        raise ValueError("give a FILE to score, or --folder DIR (not both)")
    where = Path(args.file or args.folder).expanduser()
    if not (where.is_file() if args.file else where.is_dir()):
        raise FileNotFoundError(f"{where}: no such {'file' if args.file else 'folder'}")
    return OPTIONS.build(args, **{"file" if args.file else "folder": os.path.abspath(where)})


def handle(args: argparse.Namespace) -> int:
    score_params = params(args)
    from flows.score import score, summary_text  # imports Prefect and MLflow: only when a run is wanted

    result = run_here(args, score, params=score_params)
    print(json.dumps(result, indent=2, default=str) if args.json else summary_text(result))
    return 0
