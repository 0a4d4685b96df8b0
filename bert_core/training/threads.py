"""How many intra-op threads a fine-tune uses when its config leaves `num_threads` unset.

PyTorch's default is one thread per core. On a machine where another process keeps a core busy, every
step then waits for the thread that shares that core: on 2 cores with one busy, 2 threads ran 29
examples/s and 1 thread 90 (docs/benchmarks.md). So the default is the number of cores this process may
use that are free when training starts. OMP_NUM_THREADS, when set, wins (the suite's worker processes set
it to their share of the cores), and so does `TrainConfig.num_threads`.
"""

from __future__ import annotations

import os

import psutil
import torch

BUSY_PERCENT = 50  # a core above this share of use during the sample is taken
SAMPLE_SECONDS = 0.2


def default_threads() -> int:
    """Threads for a fine-tune whose config does not say: OMP_NUM_THREADS's (PyTorch reads it), else the free cores."""
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    use = psutil.cpu_percent(interval=SAMPLE_SECONDS, percpu=True)
    free = sum(1 for core in cores if core < len(use) and use[core] < BUSY_PERCENT)
    return max(1, free)
