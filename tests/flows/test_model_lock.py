"""One fine-tune of a registered model at a time (tasks/model_lock.py), against the Prefect test server:

1. while one holder has the slot of bert-<task>, a second waits, says so first, and goes on once it is free;
2. the limit is created once, at limit 1, and a second create (another process first) is fine; one set inactive
   lets fine-tunes overlap;
3. a sweep's trial takes no slot;
4. two finetune flows of one task started together: one trains and registers v1, the other waits for it, then
   trains nothing, "no change since" v1;
5. with Prefect's temporary server (`bertflow run`), a holder killed with SIGKILL does not keep the slot: the
   fine-tune waiting for it frees it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from prefect import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

from bert_core.spec import load_spec
from bert_core.training import TrainConfig
from flows.finetune import _model_slot, finetune
from flows.params import FinetuneParams
from tasks.model_lock import LIMIT_PREFIX, create_limit, ensure_limit, limit_name, one_finetune_at_a_time
from tasks.sweep_trial import SweepTrial
from tests.conftest import REPO_ROOT

SLOT_FREED_WITHIN_S = 60  # a waiter asks again after the server's Retry-After: at most 30 s (+30% jitter)


def active_slots(model: str) -> int:
    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(limit_name(model)).active_slots


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout_s:.0f} s"
        time.sleep(0.1)


def test_a_second_holder_waits_says_so_and_goes_on_once_the_slot_is_free(flow_root):
    model, said, entered = "bert-lock_waits", [], threading.Event()

    def second() -> None:
        with one_finetune_at_a_time(model, said.append):
            entered.set()

    with one_finetune_at_a_time(model, pytest.fail):  # free at once: nothing to say
        assert active_slots(model) == 1
        waiter = threading.Thread(target=second, daemon=True)
        waiter.start()
        wait_for(lambda: said, 30, "waiting line")
        assert said == [f"waiting for another fine-tune of {model} "
                        f"(Prefect concurrency limit 'bertflow-model:{model}')"]
        assert not entered.wait(3), "the second holder went in while the first held the slot"
    assert entered.wait(SLOT_FREED_WITHIN_S), "the second holder never got the slot"
    waiter.join(10)
    assert active_slots(model) == 0


def test_the_limit_is_created_once_at_limit_1_and_a_second_create_is_tolerated(flow_root):
    name = limit_name("bert-lock_created")
    assert name == "bertflow-model:bert-lock_created" and name.startswith(LIMIT_PREFIX)
    with get_client(sync_client=True) as client:
        first = ensure_limit(client, name)
        again = ensure_limit(client, name)
        raced = create_limit(client, name)  # as when another process created it between our read and create
        named = [limit for limit in client.read_global_concurrency_limits(limit=200) if limit.name == name]
    assert first.limit == 1 and first.active and first.active_slots == 0
    assert again.id == raced.id == first.id and len(named) == 1


def test_a_limit_set_inactive_lets_fine_tunes_of_the_model_overlap(flow_root):
    model = "bert-lock_off"
    with get_client(sync_client=True) as client:
        ensure_limit(client, limit_name(model))
        client.update_global_concurrency_limit(limit_name(model), GlobalConcurrencyLimitUpdate(active=False))
    with one_finetune_at_a_time(model, pytest.fail), one_finetune_at_a_time(model, pytest.fail):
        assert active_slots(model) == 0


def test_a_sweep_trial_takes_no_slot(flow_root, toy):
    spec = load_spec(toy["spec"])
    trial = SweepTrial(study="lock", trial_id=1, trial_number=0)
    entered = threading.Event()

    def trial_run() -> None:
        with _model_slot(spec, trial):
            entered.set()

    with one_finetune_at_a_time(f"bert-{spec.name}", pytest.fail):
        runner = threading.Thread(target=trial_run, daemon=True)
        runner.start()
        assert entered.wait(10), "a sweep trial waited for the model's slot"
        assert active_slots(f"bert-{spec.name}") == 1  # the holder's only
    runner.join(10)


class StepLines(logging.Handler):
    """The `_say` lines of flow runs (Prefect's run loggers do not reach pytest's caplog)."""

    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "bertflow_step", False):
            self.lines.append(record.getMessage())


def test_two_fine_tunes_started_together_train_once(flow_root, toy):
    """Both are held at the slot (by the test) after reading their data, so both compare after it is free: without
    the slot both would compare before either registered and both would train."""
    model = "bert-toy_sentiment"
    params = FinetuneParams(task=str(toy["spec"]), data_dir=str(toy["data"]), pretrained=str(toy["tiny"]),
                            run_root=str(flow_root / "runs"),
                            training=TrainConfig(batch_size=16, epochs=1, learning_rate=3e-3, precision="fp32",
                                                 progress_bar=False, seed=3))
    steps, states = StepLines(), {}
    logging.getLogger("prefect.flow_runs").addHandler(steps)

    def run(name: str) -> None:
        states[name] = finetune(params, return_state=True)

    try:
        with one_finetune_at_a_time(model, pytest.fail):
            runs = [threading.Thread(target=run, args=(name,), daemon=True) for name in ("a", "b")]
            for thread in runs:
                thread.start()
            waiting = f"waiting for another fine-tune of {model} (Prefect concurrency limit 'bertflow-model:{model}')"
            wait_for(lambda: steps.lines.count(waiting) == 2, 120, "two waiting lines")
        for thread in runs:
            thread.join(300)
    finally:
        logging.getLogger("prefect.flow_runs").removeHandler(steps)
    assert all(state.is_completed() for state in states.values()), states
    summaries = sorted((state.result() for state in states.values()), key=lambda s: s["unchanged_since"] or "")
    trained, skipped = summaries
    assert trained["unchanged_since"] is None and trained["model_uri"] == f"models:/{model}/1"
    assert skipped["unchanged_since"] == f"models:/{model}/1"
    assert [state.message for state in states.values()].count(f"no change since models:/{model}/1") == 1
    assert [int(v.version) for v in MlflowClient().search_model_versions(f"name = '{model}'")] == [1]
    assert active_slots(model) == 0


HOLD = """
import sys, time
from tasks.model_lock import one_finetune_at_a_time
with one_finetune_at_a_time("bert-lock_killed", lambda line: print(line, flush=True)):
    print("holding", flush=True)
    time.sleep(float(sys.argv[1]))
"""


@pytest.mark.slow
def test_with_the_temporary_server_a_killed_holder_does_not_keep_the_slot(tmp_path):
    """Prefect's temporary server runs no lease repossessor: without the file lock the killed holder's slot
    would stay taken in PREFECT_HOME's database for ever."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": "",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"}

    started: list[subprocess.Popen] = []

    def holder(name: str, seconds: int) -> tuple[subprocess.Popen, Path]:
        out = tmp_path / f"{name}.out"
        with out.open("w") as sink:  # its own process group: SIGKILL reaches its temporary server too, as Ctrl-C does
            started.append(subprocess.Popen([sys.executable, "-c", HOLD, str(seconds)], cwd=REPO_ROOT, env=env,
                                            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True))
        return started[-1], out

    try:
        first, first_out = holder("first", 600)
        wait_for(lambda: "holding" in first_out.read_text(), 300, "first holder")
        second, second_out = holder("second", 0)
        wait_for(lambda: "waiting for another fine-tune of bert-lock_killed" in second_out.read_text(), 300,
                 "waiting line of the second")
        assert "holding" not in second_out.read_text()
        os.killpg(first.pid, signal.SIGKILL)
        assert second.wait(300) == 0, second_out.read_text()
    finally:
        for process in started:
            with contextlib.suppress(ProcessLookupError):  # the group of one that ended, and its server, are gone
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    lines = second_out.read_text().splitlines()
    freed = [i for i, line in enumerate(lines) if line.startswith("freed the slot of Prefect concurrency limit "
                                                                  "'bertflow-model:bert-lock_killed'")]
    assert freed and lines.index("holding") > freed[0], lines
