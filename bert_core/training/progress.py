"""The training progress bar: tqdm's redrawn bar on a terminal (or in a notebook); in a log file (a Prefect
worker's, a cron job's, ``bertflow run ... > run.log``) one plain line at most every ``LOG_SECONDS``.

tqdm redraws its bar with carriage returns, several times a second. A terminal shows one line; a log file keeps
every redraw on one ever-longer line.
"""

from __future__ import annotations

import sys

from tqdm import tqdm as plain_tqdm
from tqdm.auto import tqdm

LOG_SECONDS = 30.0


class _Lines:
    """A stream for tqdm that writes each redraw as a line of its own."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").rstrip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(total: int, initial: int, desc: str, enabled: bool) -> tqdm:
    """The loop's bar: ``update(n)``, ``set_postfix(..., refresh=False)``, ``close()``."""
    notebook = type(sys.stderr).__module__.startswith("ipykernel")  # not a terminal either, but it shows widgets
    in_log = enabled and not notebook and not sys.stderr.isatty()
    if in_log:
        return plain_tqdm(total=total, initial=initial, desc=desc, unit="step", file=_Lines(sys.stderr),
                          mininterval=LOG_SECONDS, maxinterval=LOG_SECONDS, ncols=120)
    return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not enabled, dynamic_ncols=True)
