"""Running a flow here, in this process, as `bertflow run`, `suite`, `sweep` and `score` do: with no Prefect
server configured, Prefect starts a temporary one for the length of the command. The console shows
bertflow's own lines, warnings and errors; a failure comes back as its exception, which `main` prints as
one line."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys

import psutil

# Set by every `bertflow` command to "<pid>@<start time>" of its process; Prefect's temporary server inherits it,
# so a server whose owner is gone can be told from one that is in use.
OWNER = "BERTFLOW_PREFECT_OWNER"
SERVER_APP = "prefect.server.api.server:create_app"  # in the command line of Prefect's temporary server


def prefect_settings() -> None:
    """Settings for Prefect's temporary server, put in the environment by `main` before Prefect is imported (it
    reads its settings once, then)."""
    # With no Prefect server configured, Prefect starts a temporary one; its first start creates a database,
    # which takes longer than Prefect's default wait (20 s) on a small, busy machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    # That temporary server's telemetry heartbeat races the flow for its sqlite database and prints a
    # "database is locked" traceback; it also calls out to Prefect, which an offline machine cannot.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ[OWNER] = _identity(psutil.Process())


def stop_orphaned_servers() -> list[int]:
    """Stop Prefect's temporary servers that a killed `bertflow` left running; returns their pids.

    Prefect stops its temporary server when the interpreter exits, which a SIGKILL (the OOM killer, `kill -9`)
    skips: the server then runs without a parent until the machine restarts (about 200 MB). A server is stopped
    here only when the bertflow process that started it (its `BERTFLOW_PREFECT_OWNER`) no longer exists."""
    stopped = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if SERVER_APP not in (proc.info["cmdline"] or []):
                continue
            environ = proc.environ()
            owner = environ.get(OWNER)
            if owner is None or environ.get("PREFECT__SERVER_EPHEMERAL") != "1" or _alive(owner):
                continue
            proc.terminate()
            with contextlib.suppress(psutil.TimeoutExpired):
                proc.wait(5)
            if proc.is_running():
                proc.kill()
            stopped.append(proc.pid)
            print(f"bertflow: stopped Prefect's temporary server (pid {proc.pid}), left running by bertflow process "
                  f"{owner.split('@')[0]}, which was killed", file=sys.stderr)
    return stopped


def _identity(proc: psutil.Process) -> str:
    return f"{proc.pid}@{proc.create_time():.2f}"  # a pid alone may have been reused since


def _alive(owner: str) -> bool:
    pid = int(owner.split("@")[0])
    try:
        return _identity(psutil.Process(pid)) == owner
    except psutil.NoSuchProcess:
        return False


def run_here(args: argparse.Namespace, flow, **parameters):
    """Run `flow(**parameters)` here (with `args.retries` retries when the command has that option); its
    result, or its error raised."""
    if not args.verbose:
        _hide_tracebacks()
        _quiet_libraries()
    if getattr(args, "retries", None) is not None:
        flow = flow.with_options(retries=args.retries)
    state = flow(**parameters, return_state=True)
    if not state.is_completed():
        error = state.result(raise_on_failure=False)
        raise error if isinstance(error, Exception) else RuntimeError(state.message or state.name)
    return state.result()


def _quiet_libraries() -> None:
    """The console shows bertflow's line per step (marked `bertflow_step`), warnings and errors; Prefect's INFO
    lines and MLflow's event messages ("Created version ...", hints, download bars) stay out. Prefect's API
    (the UI, `prefect flow-run logs`) still gets every line; `--verbose` shows them all here too."""
    from tracking.console import quiet_mlflow

    quiet_mlflow()
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # Prefect's background services (events, telemetry) report their own hiccups, e.g. when the temporary
    # server stops; they do not change a flow run's result.
    logging.getLogger("prefect._internal").setLevel(logging.CRITICAL)
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda record: record.levelno >= logging.WARNING or getattr(record, "bertflow_step", False))


def _hide_tracebacks() -> None:
    """Prefect logs a failed task's or flow's traceback to the console; the CLI prints the message
    instead. Only the console's formatting changes: the Prefect API (the UI) still gets the traceback."""
    for handler in logging.getLogger().handlers:
        if handler.formatter is not None:
            handler.formatter.format = _without_traceback(handler.formatter.format)


def _without_traceback(format_record):
    def format_record_without_traceback(record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return format_record(record)
        finally:  # other handlers (the API's) still see the traceback
            record.exc_info, record.exc_text, record.stack_info = saved
    return format_record_without_traceback
