"""The fine-tune step's console line says how the thread count followed the load."""

from __future__ import annotations

from flows.finetune import _threads_story


def test_the_fine_tune_line_tells_the_thread_changes():
    """`bertflow run` prints the counts the load made (flows/finetune.py), not only the last one."""
    assert _threads_story([{"step": 0, "threads": 1}, {"step": 37, "threads": 2, "others_load": 0.0}]) == \
        "1 thread, 2 from step 37"
    assert _threads_story([{"step": 0, "threads": 2}, {"step": 5, "threads": 1}, {"step": 90, "threads": 2}]) == \
        "2 threads, 1 from step 5, 2 from step 90"
