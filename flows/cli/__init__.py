"""The `bertflow` command.

    bertflow tasks                                   # the built-in task specs
    bertflow check my_task.yaml --data-dir D         # dry run: every check, data report, time estimate
    bertflow run sst2 --max-train-samples 2000       # the finetune flow, here, with no Prefect server
    bertflow runs --status failed interrupted        # run folders; add --prune to delete them
    bertflow suite sst2 stsb squad --max-train-samples 500 --max-concurrency 2   # many tasks, a leaderboard
    bertflow sweep mrpc --space learning_rate=2e-5,3e-5,5e-5 --space batch_size=16,32   # a search
    bertflow audit sst2 --max-train-samples 4000 --k 5 --epochs 1   # training rows whose label looks wrong
    bertflow predict models:/bert-sst2@champion --text "a gripping film"
    echo '{"text": "a gripping film"}' | bertflow predict models:/bert-sst2@champion
    bertflow compare sst2                            # registered versions side by side
    bertflow score models:/bert-sst2@champion reviews.csv --column text=review   # batch predictions of a file
    bertflow score models:/bert-sst2@champion --folder inbox --pattern '*.csv'    # a folder's new files

Failures print the error's message (no traceback; `--verbose` keeps Prefect's) and exit non-zero.
"""

# One module per command (or pair), each with `add` (its parser) and `handle` (parse, call, print). A flow's
# options are generated from its parameter model (options.py); handlers hold no logic of their own.

from __future__ import annotations

import argparse
import contextlib
import signal
import sys

from flows.cli import (
    audit,
    check,
    compare,
    local_flow,
    predict,
    run,
    runs,
    score,
    servers,
    suite,
    sweep,
    tasks,
)
from tracking.console import no_download_bars

COMMANDS = (tasks, check, run, runs, suite, sweep, audit, predict, score, servers, compare)  # in `--help`'s order


class Terminated(KeyboardInterrupt):
    """SIGTERM (from `timeout`, systemd, `docker stop`, a cancelled CI job) raised where Ctrl-C's
    KeyboardInterrupt would be, so it unwinds the same way: the flow run records its failure, and Prefect's
    temporary server (a uvicorn process, stopped at interpreter exit) goes with this process."""


def main(argv: list[str] | None = None) -> int:
    local_flow.prefect_settings()  # before anything imports Prefect
    no_download_bars()
    local_flow.stop_orphaned_servers()
    args = parser().parse_args(argv)
    try:
        with _sigterm_as_interrupt():
            return args.handle(args) or 0
    except Terminated:
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except Exception as err:  # the message is the product; the traceback would bury it
        if getattr(args, "verbose", False):
            raise
        print(f"bertflow {args.name}: error: {err}", file=sys.stderr)
        return 1


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="bertflow", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add(commands)
    return top


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises `Terminated` in the main thread while a command runs. (Its default, dying at once,
    skips the interpreter's exit, which is what stops Prefect's temporary server.) During a flow run Prefect
    handles SIGTERM first (it records the crash) and then signals again to this handler."""
    def interrupt(signum, frame):
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: a caller's own business
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
