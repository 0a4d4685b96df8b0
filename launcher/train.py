"""``python -m launcher.train TASK ...`` / ``torchrun --nproc-per-node N -m launcher.train TASK ...``:
``python -m bert_core.training`` with the same arguments and results, in a process started again with tcmalloc
or jemalloc preloaded when the system has one (``launcher/malloc.py``: a training step 1.10x faster on SST-2)."""

from __future__ import annotations

import sys

from launcher.malloc import start_again_with_faster_malloc


def main() -> None:
    try:
        start_again_with_faster_malloc()
    except ValueError as err:  # BERTFLOW_MALLOC names no library
        sys.exit(f"python -m launcher.train: error: {err}")
    # Imported after the restart: torch loads once, under that malloc.
    from bert_core.training.command import main as train

    train()


if __name__ == "__main__":
    main()
