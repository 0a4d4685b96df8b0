"""The ``bertflow`` command ([project.scripts]): the process starts again with tcmalloc or jemalloc preloaded
when the system has one (``launcher/malloc.py``), then runs the CLI, ``flows.cli.main``."""

from __future__ import annotations

import sys

from launcher.malloc import start_again_with_faster_malloc


def main() -> int:
    try:
        start_again_with_faster_malloc()
    except ValueError as err:  # BERTFLOW_MALLOC names no library
        print(f"bertflow: error: {err}", file=sys.stderr)
        return 2
    # Imported after the restart: torch, Prefect and MLflow load once, under that malloc.
    from flows.cli import main as cli

    return cli(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
