"""Exclusive file locks for state that several processes on one machine share: the run folder a flow run
works in, a sqlite MLflow store while it is created, the registry's champion while it is promoted.

    held = try_acquire(folder / ".lock")          # None when another process holds it
    with acquire(store_lock, timeout_s=300):      # waits; TimeoutError after 300 s (None: for ever)
        ...

The lock is an ``fcntl.flock`` on the open file, so the OS releases it when the holder dies: a killed
process never leaves a stale lock behind. Each ``open`` is an owner of its own, so two threads of one
process exclude each other too. It serialises one machine (and NFSv4 clients, where Linux maps flock to
the server's byte-range locks); processes on machines that do not share the file are not serialised.
"""

from __future__ import annotations

import fcntl
import time
from pathlib import Path
from typing import IO

POLL_S = 0.05  # how often a waiter with a timeout tries again


class FileLock:
    """A held lock on ``path``; ``release()``, or the end of its ``with`` block, gives it back."""

    def __init__(self, path: Path, handle: IO):
        self.path, self._handle = path, handle

    def release(self) -> None:
        if not self._handle.closed:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def try_acquire(path: str | Path) -> FileLock | None:
    """The lock on ``path`` (the file is created if absent, its folder must exist) if it is free now, else None."""
    path = Path(path)
    handle = open(path, "a")  # noqa: SIM115 - closed by FileLock.release
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return FileLock(path, handle)


def acquire(path: str | Path, timeout_s: float | None = None) -> FileLock:
    """The lock on ``path``, waited for: for ever (``timeout_s=None``), else at most ``timeout_s`` seconds, then
    ``TimeoutError`` naming the file."""
    path = Path(path)
    if timeout_s is None:
        handle = open(path, "a")  # noqa: SIM115 - closed by FileLock.release
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except BaseException:  # e.g. Ctrl-C while waiting
            handle.close()
            raise
        return FileLock(path, handle)
    deadline = time.monotonic() + timeout_s
    while (held := try_acquire(path)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"lock {path} held by another process for over {timeout_s:.0f} s")
        time.sleep(POLL_S)
    return held
