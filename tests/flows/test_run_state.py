"""Off the happy path: a failed run, a changed MLflow store or changed data never brick the next run, and
errors that will not go away fail fast and once.

Every case is a real `bertflow` process (Prefect's ephemeral mode), all cases share one BERTFLOW_HOME (so
they share the runs root and the feature cache, as one user's machine does), and each case gets a fresh
MLflow store, as a CI job or a switch to a team server would give it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from flows.cli import local_flow
from flows.run_folder import read_record
from tests.conftest import REPO_ROOT
from tests.tiny_models import write_tiny_checkpoint
from tests.toy_task import toy_rows

pytest.importorskip("transformers")
# 64 toy rows / batch 8 = 8 steps per epoch; tiny steps take milliseconds, so the flow's start dominates.
FAST = ["--epochs", "1", "--batch-size", "8", "--learning-rate", "3e-3", "--precision", "fp32", "--no-progress-bar"]


@pytest.fixture(scope="module")
def machine(tmp_path_factory) -> dict:
    """One user's machine: BERTFLOW_HOME, Prefect's home, a tiny checkpoint."""
    root = tmp_path_factory.mktemp("machine")
    return {"root": root, "home": root / "home", "prefect": root / "prefect",
            "tiny": write_tiny_checkpoint(root / "tiny")}


def sst2_files(root: Path, bad_line: int | None = None) -> Path:
    """An SST-2 layout (`SST-2/train.tsv`, `SST-2/dev.tsv`, header `sentence<TAB>label`) of toy rows; with
    `bad_line`, that line of train.tsv (1 = the header) gets the label 7."""
    folder = root / "SST-2"
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.tsv", toy_rows(64, 1)), ("dev.tsv", toy_rows(32, 2))):
        lines = ["sentence\tlabel"] + [f"{r['text_a']}\t{1 if r['label'] == 'pos' else 0}" for r in rows]
        if bad_line is not None and name == "train.tsv":
            lines[bad_line - 1] = lines[bad_line - 1].rsplit("\t", 1)[0] + "\t7"
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def bertflow(machine: dict, store: Path, *args: str, data_root: Path | None = None, wait: bool = True,
             threads: str | None = "1") -> subprocess.CompletedProcess | subprocess.Popen:
    """`bertflow <args>` as a real process on `machine`, its MLflow store at `store`; `threads`: its
    OMP_NUM_THREADS (None: unset, so bertflow picks)."""
    env = {**os.environ, "BERTFLOW_HOME": str(machine["home"]), "PREFECT_HOME": str(machine["prefect"]),
           "MLFLOW_TRACKING_URI": f"sqlite:///{store}", "PREFECT_API_URL": "", "OMP_NUM_THREADS": threads or ""}
    env.pop("BERTFLOW_CACHE_DIR", None)
    if threads is None:
        env.pop("OMP_NUM_THREADS")
    if data_root is not None:
        env["BERTFLOW_DATA_DIR"] = str(data_root)
    command = [sys.executable, "-m", "flows.cli", *args]
    if not wait:
        return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


def store_client(store: Path) -> MlflowClient:
    """A client of that store for tracking and registry (a registry URI set by another test must not leak in)."""
    uri = f"sqlite:///{store}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def summary(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout[done.stdout.index("{"):])


def error_line(done: subprocess.CompletedProcess, command: str = "run") -> str:
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    return next(line for line in done.stderr.splitlines() if line.startswith(f"bertflow {command}: error:"))


def sst2_folders(machine: dict) -> set[Path]:
    return set((machine["home"] / "runs" / "sst2").glob("*")) if (machine["home"] / "runs" / "sst2").is_dir() else set()


def test_a_failed_run_records_it_and_the_fixed_rerun_goes_on_in_a_fresh_store(machine):
    """The issue's first two steps: a bad label fails the run, which records `failed` and the error; the
    user fixes the file, starts a clean MLflow store and runs the same command: it takes over the failed
    folder, says in one line that the old MLflow run is gone, trains and registers."""
    data = sst2_files(machine["root"] / "data-1", bad_line=6)
    command = ["run", "sst2", "--data-dir", str(data), "--pretrained", str(machine["tiny"]), "--json", *FAST]
    before = sst2_folders(machine)
    failed = bertflow(machine, machine["root"] / "store-1a.db", *command)
    assert "SST-2/train.tsv:6: field 'label': got '7'" in error_line(failed)
    (folder,) = sst2_folders(machine) - before
    record = read_record(folder)
    assert record["status"] == "failed" and "SST-2/train.tsv:6" in record["error"] and record["mlflow_run_id"]

    listed = bertflow(machine, machine["root"] / "store-1a.db", "runs", "--task", "sst2")
    assert listed.returncode == 0, listed.stderr
    line = next(line for line in listed.stdout.splitlines() if folder.name in line)
    assert "failed" in line and record["mlflow_run_id"] in line

    sst2_files(data)  # fixed
    done = bertflow(machine, machine["root"] / "store-1b.db", *command)
    result = summary(done)
    assert result["run_dir"] == str(folder), "the failed folder of the same parameters was taken over"
    warnings = [line for line in done.stderr.splitlines() if record["mlflow_run_id"] in line]
    assert len(warnings) == 1 and "is not in the tracking store" in warnings[0], done.stderr[-3000:]
    assert read_record(folder)["status"] == "finished" and read_record(folder)["error"] is None
    client = store_client(machine["root"] / "store-1b.db")
    (version,) = client.search_model_versions("name = 'bert-sst2'")
    assert version.run_id == result["mlflow_run_id"]


def test_equal_parameters_over_two_data_roots_never_share_a_folder(machine):
    """BERTFLOW_DATA_DIR is not a flow parameter, but the resolved data root is part of what a run folder
    resumes: a run over another root starts its own folder, and each root keeps giving its own result."""
    bad, good = sst2_files(machine["root"] / "root-a", bad_line=3), sst2_files(machine["root"] / "root-b")
    command = ["run", "sst2", "--pretrained", str(machine["tiny"]), "--json", *FAST]
    before = sst2_folders(machine)
    assert "SST-2/train.tsv:3" in error_line(bertflow(machine, machine["root"] / "store-2a.db", *command, data_root=bad))
    (failed,) = sst2_folders(machine) - before
    result = summary(bertflow(machine, machine["root"] / "store-2b.db", *command, data_root=good))
    assert result["run_dir"] != str(failed) and read_record(failed)["status"] == "failed"
    # The bad root again: its own failed folder, the same data error (not a leftover of the other run).
    again = bertflow(machine, machine["root"] / "store-2c.db", *command, data_root=bad)
    assert "SST-2/train.tsv:3: field 'label'" in error_line(again)
    assert sst2_folders(machine) - before == {failed, Path(result["run_dir"])}


def kill_alone(proc: subprocess.Popen) -> tuple[list[psutil.Process], int]:
    """SIGKILL the run's process alone, as the OOM killer would; returns what it had started, which the kill
    leaves running without a parent, and the pid of Prefect's temporary API server among them."""
    children = psutil.Process(proc.pid).children(recursive=True)
    (server,) = [c.pid for c in children if local_flow.SERVER_APP in c.cmdline()]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return children, server


def test_the_store_switched_between_an_interrupted_run_and_its_rerun(machine):
    """A run killed mid-training, then the same command against another MLflow store: it takes the killed
    folder over, warns once that the killed run is in the other store, resumes from the checkpoint and
    registers in the new store."""
    data = sst2_files(machine["root"] / "data-3")
    command = ["run", "sst2", "--data-dir", str(data), "--pretrained", str(machine["tiny"]), "--json", *FAST,
               "--epochs", "12", "--checkpoint-every", "4", "--log-every", "1"]
    before = sst2_folders(machine)
    proc = bertflow(machine, machine["root"] / "store-3a.db", *command, wait=False)
    deadline = time.monotonic() + 300
    while not [p for p in sst2_folders(machine) - before if list(p.glob("training/checkpoints/step-*[0-9]"))]:
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    orphans, server = kill_alone(proc)
    try:
        (killed,) = sst2_folders(machine) - before
        record = read_record(killed)
        assert record["status"] == "running", "a killed process cannot record its end"
        listed = bertflow(machine, machine["root"] / "store-3b.db", "runs", "--status", "interrupted")
        assert killed.name in listed.stdout, listed.stdout
        # The next command stops the temporary server the killed run left behind.
        assert f"stopped Prefect's temporary server (pid {server})" in listed.stderr, listed.stderr
        assert not psutil.wait_procs(orphans, timeout=10)[1]
    finally:  # when it failed: nothing of the killed run may outlive the test
        for orphan in orphans:
            with contextlib.suppress(psutil.NoSuchProcess):
                orphan.kill()

    done = bertflow(machine, machine["root"] / "store-3b.db", *command)
    result = summary(done)
    assert result["run_dir"] == str(killed)
    warning = next(line for line in done.stderr.splitlines() if record["mlflow_run_id"] in line)
    assert f"recorded in sqlite:///{machine['root'] / 'store-3a.db'}" in warning
    assert "training resumes from its checkpoint step-" in done.stderr
    client = store_client(machine["root"] / "store-3b.db")
    run = client.get_run(result["mlflow_run_id"])
    assert run.data.tags["resumed_from_run"] == record["mlflow_run_id"]
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert steps[0] > 1 and steps[-1] == 96, steps[:3]
    assert client.search_model_versions("name = 'bert-sst2'")[0].run_id == run.info.run_id


SIX_CLASSES = """
name: six_topics
family: single_classification
local:
  format: tsv
  files: {train: topics/train.tsv, eval: topics/dev.tsv}
columns: {text_a: sentence, label: topic}
labels: null
metrics: [accuracy, f1]
primary_metric: accuracy
max_seq_length: 32
"""


def test_a_metric_that_cannot_apply_fails_before_training_and_is_not_retried(machine):
    """`f1` (the positive class's F1) asked of a 6-class dataset: the run fails while loading the data, in
    seconds, naming f1_macro; even with a flow retry allowed, it is not retried."""
    root = machine["root"] / "data-4"
    (root / "topics").mkdir(parents=True)
    words = ["the movie", "a film", "the plot", "it was", "very fun", "not good"]
    for name, n in (("train.tsv", 36), ("dev.tsv", 12)):
        lines = ["sentence\ttopic"] + [f"{words[i % 6]} {i}\t{'abcdef'[i % 6]}" for i in range(n)]
        (root / "topics" / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    spec = root / "six_topics.yaml"
    spec.write_text(SIX_CLASSES, encoding="utf-8")

    checked = bertflow(machine, machine["root"] / "store-4.db", "check", str(spec), "--data-dir", str(root),
                       "--pretrained", str(machine["tiny"]))
    assert "f1_macro" in error_line(checked, "check") and "6 labels" in checked.stderr

    start = time.monotonic()
    done = bertflow(machine, machine["root"] / "store-4.db", "run", str(spec), "--data-dir", str(root),
                    "--pretrained", str(machine["tiny"]), "--retries", "1", *FAST)
    seconds = time.monotonic() - start
    message = error_line(done)
    assert "f1_macro" in message and "spec field `metrics`" in message
    assert "not retrying: DataError" in done.stderr
    assert "AwaitingRetry" not in done.stderr and "Retrying" not in done.stderr, done.stderr[-3000:]
    assert seconds < 60, f"a retry would wait 60 s; took {seconds:.0f} s"
    (folder,) = (machine["home"] / "runs" / "six_topics").glob("*")
    assert not (folder / "training").exists(), "nothing was trained"

    explicit = spec.with_name("explicit.yaml")
    explicit.write_text(SIX_CLASSES.replace("labels: null", "labels: [a, b, c, d, e, f]"), encoding="utf-8")
    refused = bertflow(machine, machine["root"] / "store-4.db", "check", str(explicit), "--data-dir", str(root))
    assert "explicit.yaml: invalid task spec" in error_line(refused, "check")
    assert "`labels` has 6; use f1_macro" in refused.stderr


def test_check_reports_the_data_and_estimates_the_training_time(machine):
    data = sst2_files(machine["root"] / "data-5")
    done = bertflow(machine, machine["root"] / "store-5.db", "check", "sst2", "--data-dir", str(data),
                    "--pretrained", str(machine["tiny"]), "--batch-size", "8", "--epochs", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    train = next(line for line in out.splitlines() if line.startswith("train "))
    assert "SST-2/train.tsv" in train and " 64 " in train and "0 (0.0%)" in train, train
    assert "training: 64 rows, 16 steps of 8 (2 epoch(s))" in out and "s/step measured" in out
    assert "all checks passed" in out
    assert not (machine["root"] / "store-5.db").exists(), "a dry run writes no MLflow record"


def test_unset_threads_leave_a_busy_core_alone(machine, tmp_path):
    """With another process busy on a core, a fine-tune whose config does not set num_threads (and no
    OMP_NUM_THREADS) runs with one thread fewer than the cores: two threads sharing a busy core crawl."""
    hog = subprocess.Popen([sys.executable, "-c", "import os; os.sched_setaffinity(0, {0}); exec('while True: pass')"])
    try:
        time.sleep(1)
        data = sst2_files(machine["root"] / "data-7")
        done = bertflow(machine, tmp_path / "store.db", "check", "sst2", "--data-dir", str(data), "--pretrained",
                        str(machine["tiny"]), threads=None)
    finally:
        hog.kill()
    assert done.returncode == 0, done.stderr[-2000:]
    expected = max(1, len(os.sched_getaffinity(0)) - 1)
    assert f", {expected} thread{'s' if expected > 1 else ''})" in done.stdout, done.stdout


def test_runs_lists_statuses_and_prunes_only_what_it_is_told_to(machine, tmp_path):
    """Folders in each state (a running one holds its lock, as a live flow run does): listed with the right
    status; --prune needs a filter, deletes what is listed, and never a running folder."""
    root = tmp_path / "runs"
    for name, status in (("a-finished", "finished"), ("b-failed", "failed"), ("c-interrupted", "running"),
                         ("d-running", "running")):
        (root / "toy" / name).mkdir(parents=True)
        (root / "toy" / name / "run.json").write_text(json.dumps(
            {"task": "toy", "status": status, "mlflow_run_id": f"run-{name}", "created": "2026-01-01T00:00:00+00:00",
             "error": "DataError: x" if status == "failed" else None}), encoding="utf-8")
    (root / "toy" / "a-finished" / "weights.bin").write_bytes(b"\0" * 2_000_000)
    with open(root / "toy" / "d-running" / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        listed = bertflow(machine, tmp_path / "store.db", "runs", "--run-root", str(root))
        assert listed.returncode == 0, listed.stderr
        status = {line.split()[0]: line.split()[1] for line in listed.stdout.splitlines()[1:5]}
        assert status == {"toy/a-finished": "finished", "toy/b-failed": "failed", "toy/c-interrupted": "interrupted",
                          "toy/d-running": "running"}, listed.stdout
        assert "2.0 MB" in next(line for line in listed.stdout.splitlines() if "a-finished" in line)

        assert "--status" in error_line(bertflow(machine, tmp_path / "store.db", "runs", "--run-root", str(root),
                                                 "--prune"), "runs")
        pruned = bertflow(machine, tmp_path / "store.db", "runs", "--run-root", str(root), "--status", "failed",
                          "interrupted", "running", "--prune")
        assert "deleted 2 folder(s)" in pruned.stdout and "kept 1 that a flow run works in now" in pruned.stdout
    assert sorted(p.name for p in (root / "toy").iterdir()) == ["a-finished", "d-running"]
