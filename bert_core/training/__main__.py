"""``python -m bert_core.training TASK ...`` / ``torchrun --nproc-per-node N -m bert_core.training TASK ...``."""

import sys

from bert_core.allocator import start_again_with_faster_malloc

try:
    start_again_with_faster_malloc()  # tcmalloc or jemalloc when the system has one; the packages import lazily,
    # so torch is not yet imported here
except ValueError as err:  # BERTFLOW_MALLOC names no library
    sys.exit(f"python -m bert_core.training: error: {err}")

from bert_core.training.run import main  # noqa: E402

main()
