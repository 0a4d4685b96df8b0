"""A faster malloc for CPU training: tcmalloc or jemalloc, when the system has one.

Why: PyTorch's CPU tensors come from malloc. With glibc's, the batches of a fine-tune, each of its own length,
fragment the heap: a 10,000-row SST-2 fit grew from 1.5 to 1.8 GB of RSS over 300 steps, and each step pays for
fresh pages. PyTorch's CPU performance guide recommends tcmalloc or jemalloc; measured here (docs/benchmarks.md),
they cut that run's peak RSS by 17-21% and a training step ran 1.06-1.10x faster. A malloc can only be chosen
when a process starts (``LD_PRELOAD``), so the launchers (the ``bertflow`` command, ``launcher/bertflow.py``, and
``python -m launcher.train``) start their process again with it, once, before anything imports torch; child
processes (torchrun's workers, Prefect's) inherit it.

``BERTFLOW_MALLOC``: ``auto`` (default: the first library of ``LIBRARIES`` found), ``system`` (glibc's, never
re-exec), or a library's path. Debian/Ubuntu: ``apt install libtcmalloc-minimal4`` (or ``libjemalloc2``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

LIBRARIES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libjemalloc.so.2")
SEARCH_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")
_STARTED_AGAIN = "_BERTFLOW_MALLOC_STARTED"  # set in the new process: never start again twice


def find_library(dirs=SEARCH_DIRS) -> str | None:
    """Path of the first of ``LIBRARIES`` in ``dirs`` or in this environment's ``lib`` (conda), else None."""
    for name in LIBRARIES:
        for folder in (*dirs, str(Path(sys.prefix) / "lib")):
            path = Path(folder) / name
            if path.is_file():
                return str(path)
    return None


def preload_env(environ: dict, dirs=SEARCH_DIRS) -> dict | None:
    """The environment to start this process again with, or None to go on as it is."""
    choice = environ.get("BERTFLOW_MALLOC", "auto")
    preloaded = environ.get("LD_PRELOAD", "")
    if (not sys.platform.startswith("linux") or choice == "system" or environ.get(_STARTED_AGAIN)
            or "tcmalloc" in preloaded or "jemalloc" in preloaded):
        return None
    library = find_library(dirs) if choice == "auto" else choice
    if library is None:
        return None
    if not Path(library).is_file():
        raise ValueError(f"BERTFLOW_MALLOC={choice!r}: no such library file; give a path to libtcmalloc or "
                         "libjemalloc, 'auto' or 'system'")
    return {**environ, "LD_PRELOAD": ":".join(p for p in (library, preloaded) if p), _STARTED_AGAIN: library,
            # tcmalloc reports every allocation above 1 GB on stderr (SQuAD's eval batches make some): not news.
            "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": environ.get("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD",
                                                                 str(1 << 40))}


def start_again_with_faster_malloc() -> None:
    """Replace this process by the same command with tcmalloc or jemalloc preloaded, when one is found; else
    return and go on with the system's malloc."""
    env = preload_env(dict(os.environ))
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, sys.orig_argv, env)
