"""Tracking URI resolution, fail-fast reachability checks, secret masking, safe param logging, a tracked run's
failure record, training curves in batches."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import mlflow
import pytest
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from tests.conftest import REPO_ROOT as PROJECT_ROOT
from tracking import store as tracking
from tracking import training_log
from tracking.run import MAX_ERROR_CHARS, read_run, start_run
from tracking.store import (
    TrackingUnavailableError,
    check_tracking,
    code_version,
    configure_tracking,
    default_tracking_uri,
    log_params_safely,
    mask_secrets,
)
from tracking.training_log import TrainingMetrics


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    """No tracking URI from the environment; BERTFLOW_HOME in a temp folder; global URIs reset afterwards."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BERTFLOW_HOME", str(tmp_path / "home"))
    yield tmp_path
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_uri_precedence_argument_then_env_then_bertflow_home(clean_env, monkeypatch):
    assert default_tracking_uri() == f"sqlite:///{clean_env / 'home' / 'mlflow.db'}"
    assert (clean_env / "home").is_dir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert default_tracking_uri() == "http://tracking:5000"
    assert default_tracking_uri("sqlite:///explicit.db") == "sqlite:///explicit.db"


def test_configure_sets_tracking_and_registry(clean_env):
    uri = configure_tracking(f"sqlite:///{clean_env / 'x.db'}")
    assert mlflow.get_tracking_uri() == uri and mlflow.get_registry_uri() == uri


def test_sqlite_store_folder_is_created(clean_env):
    uri = f"sqlite:///{clean_env / 'new' / 'dir' / 'mlflow.db'}"
    assert check_tracking(uri) == uri and (clean_env / "new" / "dir").is_dir()


def test_sqlite_store_under_a_file_fails_naming_the_uri(clean_env):
    (clean_env / "blocker").write_text("not a folder")
    with pytest.raises(TrackingUnavailableError, match="blocker"):
        check_tracking(f"sqlite:///{clean_env / 'blocker' / 'mlflow.db'}")


def test_unreachable_server_fails_fast_naming_the_uri_without_its_password():
    uri = f"http://alice:s3cretpw@127.0.0.1:{_free_port()}"
    start = time.monotonic()
    with pytest.raises(TrackingUnavailableError) as err:
        check_tracking(uri, timeout_s=3)
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert f"http://alice:***@127.0.0.1:{uri.rsplit(':', 1)[1]}" in message and "s3cretpw" not in message


def test_database_server_is_checked_with_a_tcp_connect():
    with pytest.raises(TrackingUnavailableError, match=r"postgresql://bob:\*\*\*@127\.0\.0\.1"):
        check_tracking(f"postgresql://bob:pw@127.0.0.1:{_free_port()}/mlflow", timeout_s=2)


class _Handler(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 - the http.server API
        self.send_response(self.status if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.mark.parametrize(("status", "error"), [(200, None), (401, "credentials")])
def test_live_server_health(status, error):
    handler = type("Handler", (_Handler,), {"status": status})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    uri = f"http://127.0.0.1:{server.server_port}"
    try:
        if error is None:
            assert check_tracking(uri) == uri
        else:
            with pytest.raises(TrackingUnavailableError, match=error):
                check_tracking(uri)
    finally:
        server.shutdown()
        server.server_close()


def test_mask_secrets_hides_uri_passwords_and_secret_env_values(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_AbCdEf123456")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI")
    monkeypatch.setenv("DISABLE_KEY_CHECK", "true")  # a flag, not a secret: "true" must survive
    text = ("db postgresql://user:hunter2@host/db, token hf_AbCdEf123456, aws wJalrXUtnFEMI, "
            "url https://h/api?x=1&token=abc, flag true")
    masked = mask_secrets(text)
    assert "postgresql://user:***@host/db" in masked and "hunter2" not in masked
    assert "hf_AbCdEf123456" not in masked and "wJalrXUtnFEMI" not in masked
    assert "token=***" in masked and masked.endswith("flag true")
    assert mask_secrets("http://host:5000/path") == "http://host:5000/path"  # a port is not a password


def test_log_params_safely_flattens_masks_and_truncates(clean_env, monkeypatch):
    monkeypatch.setenv("MY_API_KEY", "sk-verysecretvalue")
    uri = configure_tracking(f"sqlite:///{clean_env / 'mlflow.db'}")
    params = {
        "train": {"learning_rate": 5e-5, "optim": {"betas": (0.9, 0.999)}},
        "data_uri": "s3://bucket/x?token=abc",
        "note": "key sk-verysecretvalue",
        "long": "x" * (MAX_PARAM_VAL_LENGTH + 100),
        "many": {f"p{i}": i for i in range(150)},  # over MLflow's 100 per batch
        "unset": None,
    }
    with mlflow.start_run(experiment_id=tracking.experiment_for("params", uri)) as run:
        logged = log_params_safely(params)
    stored = mlflow.get_run(run.info.run_id).data.params
    assert stored == logged
    assert stored["train.learning_rate"] == "5e-05" and stored["train.optim.betas"] == "(0.9, 0.999)"
    assert stored["data_uri"] == "s3://bucket/x?token=***" and "verysecret" not in stored["note"]
    assert len(stored["long"]) == MAX_PARAM_VAL_LENGTH and stored["long"].endswith("[truncated]")
    assert stored["many.p149"] == "149" and stored["unset"] == "None"


def test_code_version_is_a_commit_or_the_package_version(monkeypatch, tmp_path):
    version = code_version()
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", version) or re.fullmatch(r"\d+\.\d+.*", version)
    monkeypatch.setattr(tracking, "PROJECT_ROOT", tmp_path)  # not a git checkout: an installed wheel
    assert re.fullmatch(r"\d+\.\d+.*|unknown", code_version())


def test_processes_opening_a_new_sqlite_store_at_once_all_succeed(tmp_path):
    """A suite's parallel fine-tunes on a fresh machine: without the creation lock, 2-4 of 4 processes
    opening the same new store fail in MLflow's schema migration (measured: 10 of 12 in 3 trials)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = ("import mlflow; from tracking.store import check_tracking, configure_tracking, experiment_for; "
            f"uri = configure_tracking(check_tracking({uri!r})); "
            "mlflow.start_run(experiment_id=experiment_for('e', uri)); mlflow.end_run()")
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outcomes = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-500:] for _, err in outcomes]
    mlflow.set_tracking_uri(uri)
    try:
        assert len(mlflow.search_runs(experiment_names=["bertflow-e"])) == 4
    finally:
        mlflow.set_tracking_uri(None)


def test_a_failure_in_a_tracked_run_is_recorded_and_ends_it_failed(clean_env, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_AbCdEf123456")
    uri = configure_tracking(f"sqlite:///{clean_env / 'mlflow.db'}")
    with pytest.raises(RuntimeError), start_run(tracking.experiment_for("runs", uri), "r", {"task": "t"}, "parent") as run:
        run.log_params({"training": {"epochs": 3}})
        raise RuntimeError("hub said no to hf_AbCdEf123456 " + "x" * 6000)
    record = read_run(run.run_id)
    assert record.status == "FAILED" and record.params == {"training.epochs": "3"}
    assert record.tags["task"] == "t" and record.tags["mlflow.parentRunId"] == "parent"
    error = record.tags["error"]
    assert error.startswith("RuntimeError: hub said no to ***") and len(error) == MAX_ERROR_CHARS
    text = mlflow.artifacts.load_text(f"runs:/{run.run_id}/error.txt")
    assert "Traceback" in text and "hub said no" in text and "hf_AbCdEf123456" not in text


def test_training_metrics_reach_the_store_in_batches_with_their_own_steps(clean_env, monkeypatch):
    """Nothing is sent per step; an evaluation sends what gathered, in batches of at most MAX_METRICS_PER_BATCH."""
    monkeypatch.setattr(training_log, "MAX_METRICS_PER_BATCH", 3)
    uri = configure_tracking(f"sqlite:///{clean_env / 'mlflow.db'}")
    with start_run(tracking.experiment_for("curves", uri), "r", {}) as run:
        metrics = TrainingMetrics(run.run_id)
        batches = []
        real_log_batch = metrics.client.log_batch
        monkeypatch.setattr(metrics.client, "log_batch", lambda run_id, metrics: batches.append(len(metrics))
                            or real_log_batch(run_id, metrics=metrics))
        for step in range(1, 6):
            metrics.on_step(step, {"loss": 1.0 / step, "learning_rate": 1e-3})
        assert batches == []  # within FLUSH_SECONDS: held back
        metrics.on_evaluate(5, {"accuracy": 0.75})
        assert batches == [3, 3, 3, 2]
        metrics.on_step(6, {"loss": 0.1, "learning_rate": 1e-3})
        metrics.flush()  # what train_model does when fit returns or fails
    client = mlflow.tracking.MlflowClient()
    assert [m.step for m in client.get_metric_history(run.run_id, "train/loss")] == [1, 2, 3, 4, 5, 6]
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "dev_curve/accuracy")] == [(5, 0.75)]
