"""How many intra-op threads a fine-tune uses when its config leaves `num_threads` unset, and how that count
follows the machine while it trains.

PyTorch's default is one thread per core. On a machine where another process keeps a core busy, every
step then waits for the thread that shares that core: on 2 cores with one busy, 2 threads ran 29
examples/s and 1 thread 90 (docs/benchmarks.md). So a fine-tune starts with the cores free at that moment
(`default_threads`), and a `ThreadController` re-decides while it trains: a moment of load at the start
(the previous job's teardown, a server starting) would otherwise halve the whole run, and a job that starts
later would stall every step. OMP_NUM_THREADS, when set, wins (the suite's worker processes set it to their
share of the cores), and so does `TrainConfig.num_threads`; both keep the count fixed for the whole run, as
does training with several processes (torchrun gives each its share).

    start     default_threads(): the cores free during a 0.2 s sample
    train     ThreadController.after_step(step) after every optimizer step: every EARLY_EVERY s during the
              first EARLY_SECONDS, then every EVERY s, a sample of the CPU other processes used since the
              last one (OtherProcessesLoad); the count changes when CONFIRM samples in a row agree that it
              should, so one spike does not flip it
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable

import psutil
import torch

log = logging.getLogger(__name__)

BUSY_PERCENT = 50  # a core's worth of other processes' use above this share takes that core
SAMPLE_SECONDS = 0.2  # default_threads's sample
# The controller samples often while training warms up, because the load at the start is the one most
# likely to be a passing moment, then rarely: a sample is two /proc reads, a change restarts the thread pool.
EARLY_SECONDS = 10.0
EARLY_EVERY = 1.0
EVERY = 10.0
CONFIRM = 2  # consecutive samples that must call for a change (on the same side) before it is made


def usable_cores() -> list[int]:
    """The cores this process may run on (its affinity), sorted."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def default_threads() -> int:
    """Threads for a fine-tune whose config does not say: OMP_NUM_THREADS's (PyTorch reads it), else the free cores."""
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    cores = usable_cores()
    use = psutil.cpu_percent(interval=SAMPLE_SECONDS, percpu=True)
    free = sum(1 for core in cores if core < len(use) and use[core] < BUSY_PERCENT)
    return max(1, free)


def threads_fixed(num_threads: int | None, world_size: int) -> bool:
    """Whether the run's thread count is someone else's choice: the config's, OMP_NUM_THREADS's, or torchrun's."""
    return bool(num_threads) or bool(os.environ.get("OMP_NUM_THREADS")) or world_size > 1


def free_cores(others_load: float, cores: int) -> int:
    """Threads to run with when other processes use ``others_load`` cores' worth of CPU out of ``cores``: one per
    core they leave free, a core counting as taken from BUSY_PERCENT of one on; never fewer than one."""
    taken = math.floor(others_load + 1 - BUSY_PERCENT / 100)
    return max(1, min(cores, cores - taken))


class OtherProcessesLoad:
    """A sampler: the cores' worth of CPU that other processes used, on the cores this process may run on,
    since the previous call (or since it was made): 0.0 on an idle machine, about 1.0 beside one busy loop.

    It is the machine's busy time on those cores minus this process's own CPU time (all its threads), both
    over the same wall-clock window. Without the subtraction our own training threads would make every core
    look taken. The sum over cores is judged, not each core: the scheduler moves threads between cores, so a
    competing busy loop that got 2/3 of each of 2 cores beside our 2 threads is one core taken, though no
    single core shows more than a third of other use.
    """

    def __init__(self, cores: list[int] | None = None, clock: Callable[[], float] = time.monotonic):
        self.cores = usable_cores() if cores is None else cores
        self.process, self.clock = psutil.Process(), clock
        self.previous = self._read()

    def __call__(self) -> float:
        (start, cores_before, own_before), (end, cores_after, own_after) = self.previous, self._read()
        self.previous = (end, cores_after, own_after)
        if end <= start:
            return 0.0
        busy = sum(_busy_share(a, b) for a, b in zip(cores_before, cores_after))
        return max(0.0, busy - (own_after - own_before) / (end - start))

    def _read(self) -> tuple[float, list, float]:
        """(monotonic time, the usable cores' cumulative times, this process's CPU seconds)."""
        per_core = psutil.cpu_times(percpu=True)
        own = self.process.cpu_times()
        return self.clock(), [per_core[c] for c in self.cores if c < len(per_core)], own.user + own.system


def _busy_share(before, after) -> float:
    """The share of the time between two ``psutil.cpu_times`` readings of one core that it was busy (as psutil's
    cpu_percent counts it: everything but idle and I/O wait; steal counts as busy, since another guest had it)."""
    def busy_and_total(t) -> tuple[float, float]:
        total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)  # guest time is inside user
        return total - t.idle - getattr(t, "iowait", 0.0), total
    busy_a, total_a = busy_and_total(before)
    busy_b, total_b = busy_and_total(after)
    return 0.0 if total_b <= total_a else min(1.0, max(0.0, (busy_b - busy_a) / (total_b - total_a)))


class ThreadController:
    """A fine-tune's intra-op thread count while it trains; ``history`` records it: ``[{"step", "threads"}, ...]``,
    the count at the start and after each change (a change also has ``others_load``, the sample that made it).

    ``sample`` None: the count is fixed (the config, OMP_NUM_THREADS or torchrun chose it) and never changes.
    Otherwise a function returning the cores' worth of CPU other processes used since its previous call
    (``OtherProcessesLoad``; tests pass a scripted one). ``clock``: seconds, monotonic.
    """

    def __init__(self, step: int, cores: int, sample: Callable[[], float] | None,
                 clock: Callable[[], float] = time.monotonic):
        self.cores, self.sample, self.clock = cores, sample, clock
        self.threads = torch.get_num_threads()
        self.started = self.last_sample = clock()
        self.pending: list[int] = []  # the latest samples' thread counts, each different from the current one
        self.history = [{"step": step, "threads": self.threads}]

    @classmethod
    def for_run(cls, num_threads: int | None, world_size: int, step: int) -> ThreadController:
        """The controller ``fit`` uses: fixed when the count was chosen (``threads_fixed``), else following the
        load on this process's usable cores."""
        if threads_fixed(num_threads, world_size):
            return cls(step, torch.get_num_threads(), None)
        cores = usable_cores()
        return cls(step, len(cores), OtherProcessesLoad(cores))

    @property
    def changes(self) -> int:
        return len(self.history) - 1

    def after_step(self, step: int) -> int | None:
        """Called after every optimizer step: samples when one is due (cheap otherwise: a clock read) and
        returns the new thread count when it changed."""
        if self.sample is None:
            return None
        now = self.clock()
        every = EARLY_EVERY if now - self.started < EARLY_SECONDS else EVERY
        if now - self.last_sample < every:
            return None
        self.last_sample = now
        return self.observe(step, self.sample())

    def observe(self, step: int, others_load: float) -> int | None:
        """Take one sample (other processes' load, in cores); change the count when the last CONFIRM samples all
        ask for more threads, or all for fewer, than now: to the most cautious of their counts."""
        wanted = free_cores(others_load, self.cores)
        if wanted == self.threads:
            self.pending = []
            return None
        self.pending = [*self.pending, wanted][-CONFIRM:]
        if len(self.pending) < CONFIRM:
            return None
        if all(n > self.threads for n in self.pending):
            new = min(self.pending)
        elif all(n < self.threads for n in self.pending):
            new = max(self.pending)
        else:  # one asks for more, the other for fewer: not a change that stayed
            return None
        log.info("intra-op threads %d -> %d at step %d (other processes use %.2f of %d cores)",
                 self.threads, new, step, others_load, self.cores)
        torch.set_num_threads(new)
        self.threads, self.pending = new, []
        self.history.append({"step": step, "threads": new, "others_load": round(others_load, 2)})
        return new
