"""``python -m bert_core.training TASK ...`` / ``torchrun --nproc-per-node N -m bert_core.training TASK ...``."""

from bert_core.training.run import main

main()
