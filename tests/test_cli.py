"""The `bertflow` command: listing tasks, and failing with the error's message (not a traceback)."""

from __future__ import annotations

import os
import subprocess
import sys

from bert_core.spec import builtin_specs, load_spec
from flows.cli import main
from tests.conftest import REPO_ROOT


def test_tasks_lists_every_builtin_with_family_and_metric(capsys):
    assert main(["tasks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in builtin_specs():
        spec = load_spec(name)
        line = next(line for line in lines if line.split()[0] == name)
        assert spec.family in line and spec.primary_metric in line


def test_run_with_a_bad_spec_file_exits_with_its_message(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: broken\nfamily: poetry\nmetrics: [accuracy]\nprimary_metric: accuracy\n", encoding="utf-8")
    assert main(["run", str(bad)]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "family" in err and "poetry" in err
    assert "Traceback" not in err


def test_run_with_a_missing_spec_file_or_bad_option_exits_non_zero(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nowhere.yaml")]) == 1
    assert "spec file not found" in capsys.readouterr().err
    assert main(["run", "sst2", "--epochs", "-1"]) == 1
    assert "epochs" in capsys.readouterr().err


def bertflow_without_data(tmp_path, command: str) -> tuple[subprocess.CompletedProcess, str]:
    """`bertflow <command> conll2003_ner` with an empty data folder (CoNLL has no hub fallback, so its flow
    fails), as a real process in Prefect's ephemeral mode with its own Prefect home and MLflow store;
    returns the process and its one `bertflow <command>: error:` line, after checking it exited with 1."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "BERTFLOW_HOME": str(tmp_path / "home"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "PREFECT_API_URL": ""}
    (tmp_path / "no-data").mkdir()
    done = subprocess.run([sys.executable, "-m", "flows.cli", command, "conll2003_ner", "--data-dir",
                           str(tmp_path / "no-data")], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    return done, next(line for line in done.stderr.splitlines() if line.startswith(f"bertflow {command}: error:"))


def test_failing_flow_exits_non_zero_with_the_message_and_no_traceback(tmp_path):
    """The flow itself fails in a real `bertflow run` process."""
    done, message = bertflow_without_data(tmp_path, "run")
    assert "local file not found" in message and str(tmp_path / "no-data") in message
    assert "Traceback" not in done.stderr


def test_suite_checks_its_specs_first_and_reports_failed_tasks(tmp_path, capsys):
    """A bad spec fails before anything starts; a task that fails inside a real `bertflow suite` process
    (ephemeral Prefect, a worker process) gives exit 1, naming the task and the leaderboard written."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: broken\nfamily: poetry\nmetrics: [accuracy]\nprimary_metric: accuracy\n", encoding="utf-8")
    assert main(["suite", "sst2", str(bad)]) == 1
    assert "poetry" in capsys.readouterr().err

    _, message = bertflow_without_data(tmp_path, "suite")
    assert "1 of 1 task(s) failed: ['conll2003_ner']" in message
    leaderboard = message.rsplit("see ", 1)[1]
    assert leaderboard.startswith(str(tmp_path / "home" / "runs" / "_suites")) and "local file not found" in open(
        leaderboard, encoding="utf-8").read()
