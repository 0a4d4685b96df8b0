"""The thread controller (bert_core/training/threads.py): its decisions on scripted load samples, and the
sampler's subtraction of this process's own CPU use, without which our training threads look like a competitor."""

from __future__ import annotations

import time
from collections import namedtuple

import psutil
import pytest
import torch

from bert_core.training import threads
from bert_core.training.threads import (
    CONFIRM,
    EARLY_EVERY,
    EARLY_SECONDS,
    EVERY,
    ThreadController,
    free_cores,
)


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def drive(loads: list[float], start: int, cores: int = 2, seconds_per_step: float = EARLY_EVERY) -> list[int]:
    """A controller starting at ``start`` threads, one step per ``seconds_per_step`` (one sample per step by
    default); each sample returns the next of ``loads``. The thread count after each step."""
    torch.set_num_threads(start)
    now = [0.0]
    script = iter(loads)
    controller = ThreadController(0, cores, lambda: next(script), clock=lambda: now[0])
    counts = []
    for step in range(1, len(loads) + 1):
        now[0] += seconds_per_step
        controller.after_step(step)
        counts.append(torch.get_num_threads())
    assert counts[-1] == controller.threads == controller.history[-1]["threads"]
    return counts


def test_free_cores_counts_a_core_taken_from_half_of_one_on():
    assert free_cores(0.0, 2) == 2
    assert free_cores(0.45, 2) == 2
    assert free_cores(0.67, 2) == 1  # a busy loop beside our 2 threads gets 2/3 of a core: still one core taken
    assert free_cores(1.0, 2) == 1
    assert free_cores(1.9, 2) == 1, "never fewer than one"
    assert free_cores(2.6, 4) == 1 and free_cores(1.2, 4) == 3


def test_a_quiet_start_after_a_busy_moment_goes_up_to_all_cores():
    # default_threads saw a busy moment and started at 1; the machine is quiet from then on.
    assert drive([0.02, 0.01, 0.03, 0.0], start=1) == [1, 2, 2, 2]
    # The moment lasted into the first sample: up once two quiet samples in a row say so.
    assert drive([0.9, 0.02, 0.01, 0.0], start=1) == [1, 1, 2, 2]
    assert drive([0.0] * 4, start=1, cores=4) == [1, 4, 4, 4]


def test_a_sustained_competing_job_goes_down_to_one_thread_and_stays():
    # Beside our 2 threads a busy loop gets 2/3 of a core; once we run 1 thread it gets its whole core.
    assert drive([0.67, 0.66, 1.0, 0.99, 1.0, 1.0], start=2) == [2, 1, 1, 1, 1, 1]
    # And up again when it ends.
    assert drive([0.67, 0.66, 1.0, 0.0, 0.0, 0.0], start=2) == [2, 1, 1, 1, 2, 2]


def test_one_spike_does_not_change_the_count():
    assert drive([0.0, 0.95, 0.0, 0.9, 0.0, 0.0], start=2) == [2] * 6
    assert drive([0.0, 1.0, 0.0, 0.0], start=1) == [1, 1, 1, 2]
    # Two samples asking for opposite changes (4 cores, at 2: one says 4, the next 1) are not a change that stayed.
    assert drive([0.0, 2.9, 0.0, 2.9], start=2, cores=4) == [2, 2, 2, 2]


def test_a_change_goes_to_the_more_cautious_of_the_agreeing_samples():
    assert CONFIRM == 2
    assert drive([0.0, 1.0], start=1, cores=4) == [1, 3]  # 4 then 3 free: up to 3
    assert drive([2.0, 3.0], start=4, cores=4) == [4, 2]  # 2 then 1 free: down to 2


def test_changes_are_recorded_with_their_step_and_load():
    torch.set_num_threads(2)
    script = iter([0.7, 0.8, 0.0, 0.0])
    controller = ThreadController(5, 2, lambda: next(script), clock=iter(range(100)).__next__)
    for step in range(6, 10):
        controller.after_step(step)
    assert controller.history == [{"step": 5, "threads": 2}, {"step": 7, "threads": 1, "others_load": 0.8},
                                  {"step": 9, "threads": 2, "others_load": 0.0}]
    assert controller.changes == 2


def test_samples_are_taken_often_at_first_then_at_intervals():
    now, calls = [0.0], []
    controller = ThreadController(0, 2, lambda: calls.append(now[0]) or 0.0, clock=lambda: now[0])
    for step in range(1, 401):
        now[0] = step * 0.1  # 40 s of steps of 0.1 s
        controller.after_step(step)
    early = [t for t in calls if t <= EARLY_SECONDS]
    assert len(early) == pytest.approx(EARLY_SECONDS / EARLY_EVERY, abs=1)
    gaps = [b - a for a, b in zip(calls, calls[1:]) if a > EARLY_SECONDS]
    assert gaps and all(gap == pytest.approx(EVERY) for gap in gaps)


def test_a_fixed_count_never_changes(monkeypatch):
    torch.set_num_threads(1)
    fixed = ThreadController(0, 2, None, clock=iter(range(100)).__next__)
    for step in range(1, 20):
        assert fixed.after_step(step) is None
    assert torch.get_num_threads() == 1 and fixed.history == [{"step": 0, "threads": 1}]
    # The config, OMP_NUM_THREADS and torchrun each fix it; nothing else does.
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert ThreadController.for_run(2, 1, 0).sample is None
    assert ThreadController.for_run(None, 2, 0).sample is None
    assert ThreadController.for_run(None, 1, 0).sample is not None
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert ThreadController.for_run(None, 1, 0).sample is None


CpuTimes = namedtuple("CpuTimes", "user nice system idle iowait irq softirq steal guest guest_nice")
ProcessTimes = namedtuple("ProcessTimes", "user system")


def test_the_sampler_subtracts_this_process_own_cpu_time(monkeypatch):
    """Two cores fully busy for 1 s: with this process's threads having used 2 CPU-seconds of it, nobody else
    is there; with 1.33 (our 2 threads beside a busy loop) a competitor has 2/3 of a core."""
    machine = [[CpuTimes(0, 0, 0, 100, 0, 0, 0, 0, 0, 0)] * 2]
    own = [ProcessTimes(0.0, 0.0)]
    clock = [0.0]
    monkeypatch.setattr(threads.psutil, "cpu_times", lambda percpu: machine[0])
    monkeypatch.setattr(threads.psutil, "Process", lambda: type("P", (), {"cpu_times": lambda self: own[0]})())
    sample = threads.OtherProcessesLoad(cores=[0, 1], clock=lambda: clock[0])

    def window(busy_per_core: list[float], own_seconds: float) -> float:
        clock[0] += 1.0
        machine[0] = [t._replace(user=t.user + b, idle=t.idle + 1.0 - b) for t, b in zip(machine[0], busy_per_core)]
        own[0] = own[0]._replace(user=own[0].user + own_seconds)
        return sample()

    assert window([1.0, 1.0], 2.0) == pytest.approx(0.0)
    assert window([1.0, 1.0], 1.33) == pytest.approx(0.67)
    assert window([1.0, 0.05], 1.0) == pytest.approx(0.05)  # us on one core, an idle neighbour
    assert window([0.5, 0.5], 0.0) == pytest.approx(1.0)  # someone else, spread over both cores


def test_the_sampler_does_not_count_our_own_busy_threads():
    """On the real machine, busy or not: while this process multiplies matrices on every core it may use, the
    load put on others is at most the cores our threads left them. Counted without the subtraction, our own
    threads would show as a competitor taking every core we ran on."""
    cores = threads.usable_cores()
    torch.set_num_threads(len(cores))
    me = psutil.Process()
    sample = threads.OtherProcessesLoad(cores)
    start, own_before = time.monotonic(), sum(me.cpu_times()[:2])
    a = torch.randn(256, 256)
    while time.monotonic() < start + 1.0:
        a = torch.tanh(a @ a)
    others = sample()
    own = (sum(me.cpu_times()[:2]) - own_before) / (time.monotonic() - start)  # cores' worth we used
    if own < 0.3:
        pytest.skip(f"this machine gave the process {own:.2f} cores: too little to tell our threads from others")
    assert others <= len(cores) - own + 0.15, (others, own)
