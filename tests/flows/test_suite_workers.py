"""The suite's scale-out path for real: a process work pool, the finetune flow deployed to it as
`on-demand`, a `prefect worker` subprocess, and the suite fanning out as deployment runs that the
worker takes. The leaderboard is rebuilt from the MLflow runs the worker's flow runs wrote."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId
from prefect.settings import PREFECT_API_URL

from bert_core.training import TrainConfig
from flows.finetune import finetune
from flows.params import FinetuneParams, SuiteParams
from flows.suite import suite
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration
POOL = "bertflow-test-pool"
TASKS = ["sst2", "stsb"]
TINY_BUDGET = TrainConfig(max_train_samples=48, max_eval_samples=32, epochs=1, max_seq_length=64, batch_size=16,
                          learning_rate=1e-4, progress_bar=False)


@pytest.fixture(scope="module")
def worker(real_data_flow_root):
    """The pool, the `bertflow-finetune/on-demand` deployment in it, and one worker polling it."""
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
    deployment_id = finetune.from_source(str(REPO_ROOT), "flows/finetune.py:finetune").deploy(
        name="on-demand", work_pool_name=POOL, build=False, push=False, print_next_steps=False)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = open(real_data_flow_root / "worker.log", "w")  # noqa: SIM115 - the worker writes to it
    process = subprocess.Popen([str(bin_dir / "prefect"), "worker", "start", "--pool", POOL, "--type", "process",
                                "--prefetch-seconds", "5"],
                               env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield {"deployment_id": deployment_id, "log": real_data_flow_root / "worker.log", "process": process}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:  # seen once: Prefect's worker stuck in its graceful shutdown, runs all done
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
        log.close()


@pytest.fixture(scope="module")
def fanned_out(worker, real_data_flow_root):
    params = FinetuneParams(training=TINY_BUDGET, run_root=str(real_data_flow_root / "runs"))
    start = time.monotonic()
    state = suite(SuiteParams(tasks=TASKS, base=params, max_concurrency=2, deployment="bertflow-finetune/on-demand"),
                  return_state=True)
    return {"state": state, "seconds": time.monotonic() - start}


def test_the_worker_ran_each_fine_tune_as_a_deployment_run(worker, fanned_out):
    state = fanned_out["state"]
    assert state.is_completed(), (state.result(raise_on_failure=False), worker["log"].read_text()[-3000:])
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[worker["deployment_id"]])))
    assert sorted(r.parameters["params"]["task"] for r in runs) == TASKS
    assert all(r.state.is_completed() and r.work_pool_name == POOL for r in runs)
    assert all(r.parent_task_run_id is not None for r in runs), "each is linked to the suite's task run"
    assert "Worker" in worker["log"].read_text() and worker["process"].poll() is None


def test_the_leaderboard_comes_from_the_workers_mlflow_runs(fanned_out):
    rows = fanned_out["state"].result()
    assert [r["task"] for r in rows] == TASKS
    client = MlflowClient()
    for row in rows:
        run = client.get_run(row["mlflow_run_id"])
        assert run.data.tags["prefect.deployment"] == "on-demand" and run.info.status == "FINISHED"
        assert row["score"] == pytest.approx(run.data.metrics[f"eval_{row['primary_metric']}"], abs=1e-4)
        assert row["model"] == f"bert-{row['task']} v1" and row["champion"] == "yes" and not row["error"]
    # Secondary metrics as the in-process path gives them: the other dev scores, not training figures.
    assert rows[0]["secondary_metrics"] == "" and rows[1]["secondary_metrics"].startswith("eval_spearman=")
