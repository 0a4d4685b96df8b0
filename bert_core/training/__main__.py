"""``python -m bert_core.training TASK ...`` / ``torchrun --nproc-per-node N -m bert_core.training TASK ...``.

It runs with the malloc it was started with: ``python -m launcher.train`` (the same arguments, under torchrun too)
starts it again with tcmalloc or jemalloc preloaded when the system has one (``launcher/malloc.py``), or set
``LD_PRELOAD`` yourself.
"""

from bert_core.training.command import main

main()
