"""`bertflow predict`: a logged or registered model's predictions for rows given as options or JSON lines."""

from __future__ import annotations

import argparse
import json
import sys

from flows.cli.flags import add_precision, add_tracking_uri

COLUMNS = ("text", "text_b", "question", "context", "tokens")  # the options that give a request column


def add(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "predict", help="predict with a logged or registered model",
        description="Rows come from the options (repeat an option for more rows: the n-th --text goes with the "
        "n-th --text-b), or as JSON lines on stdin (columns: text / text_a, text_b / tokens / question, "
        "context). One JSON line out per row, in order.")
    p.add_argument("model_uri", help="e.g. models:/bert-sst2@champion, models:/bert-sst2/3, runs:/<id>/model")
    p.add_argument("--text", action="append",
                   help="the text (classification, tagging: split on spaces), or a pair's first text")
    p.add_argument("--text-b", action="append", help="the second text of a pair task")
    p.add_argument("--question", action="append")
    p.add_argument("--context", action="append")
    p.add_argument("--tokens", nargs="+", action="append", help="words to tag (one row per --tokens)")
    add_precision(p)
    add_tracking_uri(p)
    p.set_defaults(handle=handle, name="predict")


def requests(args: argparse.Namespace, stdin) -> list[dict]:
    """The rows of the options given (the n-th of each option make the n-th row), else of `stdin`'s JSON lines."""
    given = {name: getattr(args, name) for name in COLUMNS if getattr(args, name) is not None}
    if given:
        counts = {f"--{k.replace('_', '-')}": len(v) for k, v in given.items()}
        if len(set(counts.values())) > 1:
            raise ValueError(f"each row needs one of each option given, but the counts differ: {counts}")
        return [dict(zip(given, values, strict=True)) for values in zip(*given.values(), strict=True)]
    rows = [json.loads(line) for line in stdin if line.strip()]
    if not rows:
        raise ValueError("no input: give --text (or --question/--context, --tokens) or JSON lines on stdin")
    return rows


def handle(args: argparse.Namespace) -> None:
    from tracking.serving import predict_rows

    predictions = predict_rows(args.model_uri, requests(args, sys.stdin), args.tracking_uri, args.precision)
    print(predictions.to_json(orient="records", lines=True, force_ascii=False).strip())
