"""bert_core/file_lock.py: one holder at a time, waiting with and without a timeout, and a dead holder's lock
free at once."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from bert_core.file_lock import acquire, try_acquire


def test_one_holder_at_a_time_even_within_a_process(tmp_path):
    path = tmp_path / "x.lock"
    held = try_acquire(path)
    assert held is not None and path.exists()
    assert try_acquire(path) is None, "a second open of the file is another owner: refused"
    with pytest.raises(TimeoutError, match=r"x\.lock held by another process for over 0 s"):
        acquire(path, timeout_s=0.2)
    held.release()
    held.release()  # twice is harmless
    with try_acquire(path) as again:
        assert again is not None
    assert try_acquire(path) is not None


def test_acquire_waits_for_the_holder(tmp_path):
    path = tmp_path / "x.lock"
    held = acquire(path)
    threading.Timer(0.3, held.release).start()
    start = time.monotonic()
    with acquire(path):  # no timeout: blocks until the holder lets go
        waited = time.monotonic() - start
    assert 0.2 < waited < 5
    held = acquire(path)
    threading.Timer(0.3, held.release).start()
    with acquire(path, timeout_s=5):
        pass


def test_a_killed_holder_leaves_the_lock_free(tmp_path):
    path = tmp_path / "x.lock"
    code = f"from bert_core.file_lock import acquire; held = acquire({str(path)!r}); print('held', flush=True); input()"
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert try_acquire(path) is None
    finally:
        holder.kill()
        holder.wait()
    assert try_acquire(path) is not None, "the OS released the dead process's lock"
