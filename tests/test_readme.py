"""The README's commands, as a newcomer pastes them: every `bertflow` command line of the README is parsed by
the real CLI, and the ones that finish in seconds run verbatim in real processes on a fresh BERTFLOW_HOME,
from the repository root, the way the README says to run them. Long fine-tunes (`run rte`, `suite`, `make
run`) and the Prefect server block are only parsed here; other tests run those paths for real.

Deviations, for CI: the UI and scoring server get a free port instead of 5000 / 5001, and before `predict`,
`compare` and `serve` one small SST-2 fine-tune registers `bert-sst2` (the README assumes `make run` ran).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from bench.serving_load import free_port
from bert_core.spec import load_spec
from bert_core.training.command import parser as training_parser
from flows.cli import check, parser, run, suite
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration
README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
# Subcommands whose README lines run verbatim here; the rest are parsed and their specs checked.
QUICK = {"tasks", "check", "predict", "compare", "runs"}


def command_lines() -> list[str]:
    """Every command line of the README's bash blocks, continuation lines joined, comments dropped."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                lines.append(shlex.join(words))
    return lines


def bertflow_lines(sub: str | None = None) -> list[list[str]]:
    found = [shlex.split(line)[1:] for line in command_lines() if line.startswith(".venv/bin/bertflow ")]
    return [words for words in found if sub is None or words[0] == sub]


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory, data_dir):
    """A fresh machine's state and the README's exported variables."""
    home = tmp_path_factory.mktemp("newcomer")
    env = {**os.environ, "BERTFLOW_HOME": str(home / "bertflow"), "PREFECT_HOME": str(home / "prefect"),
           "PREFECT_API_URL": "", "OMP_NUM_THREADS": "1"}
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "BERTFLOW_CACHE_DIR", "BERTFLOW_DATA_DIR"):
        env.pop(name, None)
    for line in command_lines():
        if line.startswith("export "):
            name, _, value = shlex.split(line)[1].partition("=")
            env[name] = value.replace("$PWD", str(REPO_ROOT))
    assert Path(env["BERTFLOW_DATA_DIR"]).resolve() == data_dir.resolve(), "the README's data root is the shared one"
    return {"home": home, "env": env}


def sh(newcomer: dict, line: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO_ROOT / ".venv" / "bin" / "bertflow"), *line], cwd=REPO_ROOT, env=newcomer["env"],
                          capture_output=True, text=True, timeout=timeout)


def test_every_bertflow_line_parses_and_names_a_real_task():
    lines = bertflow_lines()
    assert {words[0] for words in lines} >= {"tasks", "check", "run", "predict", "compare", "runs", "suite", "ui",
                                             "serve"}, lines
    for words in lines:
        args = parser().parse_args(words)  # exits (fails the test) on an unknown option
        for task in [getattr(args, "task", None), *(getattr(args, "tasks", None) or [])]:
            if task:
                load_spec(task)
        if words[0] in ("run", "suite", "check"):
            {"run": run, "suite": suite, "check": check}[words[0]].params(args)  # the options validate
    for line in command_lines():
        if line.startswith(".venv/bin/python -m bert_core.training") or line.startswith(".venv/bin/torchrun"):
            words = shlex.split(line)
            training_parser().parse_args(words[words.index("bert_core.training") + 1:])
        elif line.startswith((".venv/bin/", "make ")):
            program = line.split()[0]
            assert program == "make" or (REPO_ROOT / program).exists(), line


def test_the_quick_commands_run_as_written(newcomer):
    for words in bertflow_lines("tasks") + bertflow_lines("check") + bertflow_lines("runs"):
        done = sh(newcomer, words)
        assert done.returncode == 0, (words, done.stderr[-2000:])
        assert "Traceback" not in done.stderr
        if words[0] == "check":
            assert "all checks passed" in done.stdout, done.stdout


def test_your_own_dataset_runs_as_written_with_a_summary_and_no_library_noise(newcomer):
    (words,) = [w for w in bertflow_lines("run") if "examples/reviews.yaml" in w]
    done = sh(newcomer, words)
    assert done.returncode == 0, done.stderr[-3000:]
    for step in ("1/5 data:", "2/5 features:", "3/5 fine-tune:", "4/5 evaluate:", "5/5 register:"):
        assert step in done.stderr, step
    for noise in ("Beginning flow run", "Created task run", "Finished in state", "Created version",
                  "Registered model", "Downloading artifacts", "mlflow.system_metrics"):
        assert noise not in done.stderr + done.stdout, noise
    summary = done.stdout.splitlines()
    assert summary[0].startswith("reviews: f1_macro ") and "95% interval" in summary[0]
    assert summary[1].split()[:2] == ["model", "models:/bert-reviews/1:"] and "champion" in summary[1]
    assert summary[3].split()[:2] == ["run", "folder"] and summary[3].endswith(" MB)")
    assert not (REPO_ROOT / "mlruns").exists() and not (REPO_ROOT / "mlflow.db").exists()


def test_predict_compare_ui_and_serve_work_on_bertflows_own_store(newcomer):
    fit = sh(newcomer, ["run", "sst2", "--max-train-samples", "64", "--max-eval-samples", "64", "--epochs", "1"])
    assert fit.returncode == 0, fit.stderr[-3000:]

    (predict,) = bertflow_lines("predict")
    done = sh(newcomer, predict)
    assert done.returncode == 0, done.stderr[-2000:]
    answers = done.stdout.splitlines()
    assert len(answers) == predict.count("--text") == 2, "one row per --text"
    assert all('"label":"negative"' in a or '"label":"positive"' in a for a in answers), answers

    (compare,) = bertflow_lines("compare")
    done = sh(newcomer, compare)
    assert done.returncode == 0 and "bert-sst2" in done.stdout, done.stderr[-2000:]

    (ui,) = bertflow_lines("ui")
    port = free_port()
    with served(newcomer, [*ui, "--port", str(port)]):
        body = wait_for(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=50")
    assert "bertflow-sst2" in body and "bertflow-reviews" in body, body[:500]
    assert "/mlruns" not in body, "the store's artifacts sit beside it, not in the folder a command ran in"

    (serve,) = bertflow_lines("serve")
    port = free_port()
    (curl,) = [line for line in command_lines() if line.startswith("curl ")]
    curl = curl.replace("5001", str(port))
    with served(newcomer, [*serve[:-2], "--port", str(port)]):
        wait_for(f"http://127.0.0.1:{port}/ping")
        done = subprocess.run(shlex.split(curl), capture_output=True, text=True, timeout=60)
    assert '"predictions"' in done.stdout and '"label_value"' in done.stdout, done.stdout
    assert not (REPO_ROOT / "mlruns").exists() and not (REPO_ROOT / "mlflow.db").exists()


class served:
    """A `bertflow <words>` server process for the length of a `with` block."""

    def __init__(self, newcomer: dict, words: list[str]):
        self.newcomer, self.words = newcomer, words

    def __enter__(self):
        self.log = open(self.newcomer["home"] / f"{self.words[0]}.log", "w")  # noqa: SIM115
        self.process = subprocess.Popen([str(REPO_ROOT / ".venv" / "bin" / "bertflow"), *self.words], cwd=REPO_ROOT,
                                        env=self.newcomer["env"], stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        return self

    def __exit__(self, *exc):
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(30)
        self.log.close()


def wait_for(url: str, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return answer.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


if __name__ == "__main__":  # print what the README asks a newcomer to run
    print("\n".join(command_lines()))
    sys.exit(0)
