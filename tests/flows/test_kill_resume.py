"""A fine-tune killed with SIGKILL mid-epoch resumes from its newest complete checkpoint and ends with
the same weights and metrics as an uninterrupted run; a checkpoint torn by the kill is never loaded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from bert_core.training.state import list_checkpoints
from tests.tiny_models import write_tiny_checkpoint
from tests.toy_task import write_toy_task

pytest.importorskip("transformers")
REPO = Path(__file__).resolve().parents[2]
CONFIG = {"batch_size": 8, "epochs": 6, "learning_rate": 3e-3, "precision": "fp32", "progress_bar": False,
          "seed": 11, "checkpoint_every": 3, "keep_checkpoints": 3}


def _command(spec: Path, out: Path, ckpt: Path, data: Path) -> list[str]:
    return [sys.executable, "-m", "bert_core.training", str(spec), "--output-dir", str(out), "--pretrained", str(ckpt),
            "--data-dir", str(data), "--config", json.dumps(CONFIG)]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_restart_matches_uninterrupted(tmp_path):
    ckpt = write_tiny_checkpoint(tmp_path / "ckpt", seed=0)
    spec = write_toy_task(tmp_path / "data")
    env = {**os.environ, "BERTFLOW_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}

    whole = subprocess.run(_command(spec, tmp_path / "whole", ckpt, tmp_path / "data"), cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]

    # Kill as soon as the second checkpoint exists: mid-epoch (8 steps per epoch, checkpoints every 3).
    cut_dir = tmp_path / "cut"
    proc = subprocess.Popen(_command(spec, cut_dir, ckpt, tmp_path / "data"), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(list_checkpoints(cut_dir / "checkpoints")) < 2 and time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = list_checkpoints(cut_dir / "checkpoints")
    assert done and proc.returncode == -signal.SIGKILL
    killed_at = json.loads((done[-1] / "state.json").read_text())["step"]
    assert killed_at < 48, "killed before the end"

    # What a kill during a write leaves behind: a .tmp folder with a partial model file.
    torn = cut_dir / "checkpoints" / f"step-{killed_at + 1:06d}.tmp"
    torn.mkdir(exist_ok=True)
    (torn / "model.safetensors").write_bytes(b"\x00" * 10)

    again = subprocess.run(_command(spec, cut_dir, ckpt, tmp_path / "data"), cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    final_whole = json.loads(whole.stdout.strip().splitlines()[-1])
    final_again = json.loads(again.stdout.strip().splitlines()[-1])
    assert final_whole.pop("resumed_from_step") is None
    assert final_again.pop("resumed_from_step") == killed_at, "the restart resumed from the newest complete checkpoint"
    assert final_again == final_whole
    a = load_file(str(list_checkpoints(tmp_path / "whole" / "checkpoints")[-1] / "model.safetensors"))
    b = load_file(str(list_checkpoints(cut_dir / "checkpoints")[-1] / "model.safetensors"))
    assert all((a[k] == b[k]).all() for k in a)


@pytest.mark.slow
def test_the_flow_killed_then_run_again_with_the_same_parameters_resumes(flow_root):
    """`bertflow run` killed mid-training, then the same parameters again (a new flow run, not a retry):
    the new run takes over the killed run's folder, resumes from its newest checkpoint, ends the killed
    MLflow run FAILED, and ends with the metrics of an uninterrupted run."""
    from mlflow.tracking import MlflowClient
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
    from prefect.settings import PREFECT_API_URL

    from bert_core.training import TrainConfig
    from flows.finetune import finetune
    from flows.params import FinetuneParams
    from tasks.model_lock import limit_name

    spec, tiny = write_toy_task(flow_root / "data"), write_tiny_checkpoint(flow_root / "tiny")
    # Threads pinned: left to follow the load (threads.py), the killed, resumed and whole runs can get other
    # thread counts, hence sums in another order and metrics that differ in their last bits.
    training = TrainConfig(batch_size=8, epochs=12, learning_rate=3e-3, precision="fp32", progress_bar=False,
                           seed=5, log_every=1, checkpoint_every=4, keep_checkpoints=2, num_threads=1)

    def params(run_root: str) -> FinetuneParams:
        return FinetuneParams(task=str(spec), data_dir=str(flow_root / "data"), pretrained=str(tiny),
                              run_root=str(flow_root / run_root), training=training)

    code = ("import sys; from flows.finetune import finetune; from flows.params import FinetuneParams; "
            "finetune(FinetuneParams.model_validate_json(sys.argv[1]))")
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}  # the test server, not an ephemeral one
    proc = subprocess.Popen([sys.executable, "-c", code, params("runs").model_dump_json()], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list((flow_root / "runs").glob("*/*/training/checkpoints/step-*[0-9]")):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # The killed run held its model's slot (tasks/model_lock.py). A Prefect server frees it once its lease ends;
    # the test server runs no repossessor, so the test frees it, as the repossessor would.
    with get_client(sync_client=True) as prefect:
        slot = limit_name("bert-toy_sentiment")
        assert prefect.read_global_concurrency_limit_by_name(slot).active_slots == 1
        prefect.update_global_concurrency_limit(slot, GlobalConcurrencyLimitUpdate(active_slots=0))
    (killed_dir,) = (flow_root / "runs").glob("*/*")
    killed_at = list_checkpoints(killed_dir / "training" / "checkpoints")[-1]
    killed_step = json.loads((killed_at / "state.json").read_text())["step"]
    killed_run = json.loads((killed_dir / "run.json").read_text())["mlflow_run_id"]
    client = MlflowClient()
    assert client.get_run(killed_run).info.status == "RUNNING", "a killed process cannot end its MLflow run"

    resumed = finetune(params("runs"))
    assert resumed["run_dir"] == str(killed_dir) and len(list((flow_root / "runs").glob("*/*"))) == 1
    run = client.get_run(resumed["mlflow_run_id"])
    assert run.data.tags["resumed_from_run"] == killed_run
    steps = [m.step for m in client.get_metric_history(resumed["mlflow_run_id"], "train/loss")]
    assert steps[0] == killed_step + 1 and steps[-1] == 96, (killed_step, steps[:3])
    killed = client.get_run(killed_run)
    assert killed.info.status == "FAILED" and "interrupted" in killed.data.tags["error"]
    assert json.loads((killed_dir / "run.json").read_text())["status"] == "finished"

    # The same parameters once more (with `force`: nothing changed since the resumed run's version): the folder
    # is finished, so this run trains afresh in a new folder, uninterrupted, and ends with the same metrics.
    whole = finetune(params("runs").model_copy(update={"force": True}))
    assert whole["run_dir"] != resumed["run_dir"]
    assert "resumed_from_run" not in client.get_run(whole["mlflow_run_id"]).data.tags
    assert resumed["metrics"] == whole["metrics"], "the resumed run ends as an uninterrupted one"
