"""The `bertflow` command: its options are the flows' parameter models (one default, help text and set of
choices each), listing tasks, failing with the error's message (not a traceback), and a SIGTERM that leaves no
process behind."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import typing

import psutil
import pytest

from bert_core.spec import builtin_specs, load_spec
from bert_core.training import TrainConfig
from flows.cli import local_flow, main, parser
from flows.cli import run as run_command
from flows.cli import score as score_command
from flows.cli import sweep as sweep_command
from flows.params import AuditParams, CompareParams, FinetuneParams, ScoreParams, SuiteParams, SweepParams
from flows.run_folder import list_runs
from tests.conftest import REPO_ROOT
from tests.tiny_models import write_tiny_checkpoint


# ---- one declaration per option -----------------------------------------------------------------------------
def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def flags_of(model, fields=None, renamed=None, both_bool_forms=False) -> set[str]:
    """The option strings a model's fields get: --<name>; a bool defaulting to True: --no-<name>; TrainConfig's
    bools (whose unset value is the spec's) both forms; `renamed` fields their own flag."""
    found = set()
    for name, field in model.model_fields.items():
        if fields is not None and name not in fields:
            continue
        if renamed and name in renamed:
            found.add(renamed[name])
        elif field.annotation is bool and both_bool_forms:
            found |= {flag(name), "--no-" + flag(name)[2:]}
        else:
            found.add("--no-" + flag(name)[2:] if field.default is True else flag(name))
    return found


TRAINING = flags_of(TrainConfig, both_bool_forms=True)
# FinetuneParams.task is the positional argument, `training` is TRAINING, and `sweep_trial` is set by the sweep
# flow on its own trials: never given by hand.
FINETUNE = flags_of(FinetuneParams, set(FinetuneParams.model_fields) - {"task", "training", "sweep_trial"}) | TRAINING
# Flags that are not a field's own name: TrainConfig has a `seed` too; the rest read better in a command.
RENAMED = {"seed": "--sampler-seed", "register_best": "--no-register", "columns": "--column",
           "input_format": "--format", "n_resamples": "--resamples", "log_to_mlflow": "--no-log"}
# command -> (positional arguments, options generated from the parameter models, the command line's own)
COMMANDS = {
    "compare": ({"task"}, flags_of(CompareParams, set(CompareParams.model_fields) - {"task"}, RENAMED), set()),
    "check": ({"task"}, flags_of(FinetuneParams, {"pretrained", "data_dir", "drop_bad_rows"}) | TRAINING,
              {"--verbose"}),
    "run": ({"task"}, FINETUNE, {"--verbose", "--json", "--retries"}),
    "suite": ({"tasks"}, FINETUNE | flags_of(SuiteParams, {"max_concurrency", "deployment"}), {"--verbose"}),
    "sweep": ({"task"}, FINETUNE | flags_of(SweepParams, set(SweepParams.model_fields) - {"base"}, RENAMED),
              {"--verbose"}),
    # Folds register nothing: the registry fields and keep_checkpoints_after_success are not audit options.
    "audit": ({"task"}, FINETUNE - flags_of(FinetuneParams, {"registry_policy", "registry_confidence",
                                                              "keep_checkpoints_after_success",
                                                              "serving_precisions", "precision_margin"})
              | flags_of(AuditParams, set(AuditParams.model_fields) - {"base"}), {"--verbose"}),
    "score": ({"model", "file"}, flags_of(ScoreParams, set(ScoreParams.model_fields) - {"model", "file"}, RENAMED),
              {"--json", "--verbose"}),
}


def subparser(command: str) -> argparse.ArgumentParser:
    commands = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[command]


def generated_actions(command: str) -> dict[str, argparse.Action]:
    _, generated, _ = COMMANDS[command]
    return {a.option_strings[0]: a for a in subparser(command)._actions if set(a.option_strings) & generated}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_commands_options_are_its_parameter_models_fields(command):
    positional, generated, own = COMMANDS[command]
    actions = [a for a in subparser(command)._actions if not isinstance(a, argparse._HelpAction)]
    assert {a.dest for a in actions if not a.option_strings} == positional
    options = {s for a in actions for s in a.option_strings}
    assert options == generated | own, (options - generated - own, generated | own - options)


MODELS = {"check": (FinetuneParams, TrainConfig), "run": (FinetuneParams, TrainConfig),
          "suite": (SuiteParams, FinetuneParams, TrainConfig), "sweep": (SweepParams, FinetuneParams, TrainConfig),
          "audit": (AuditParams, FinetuneParams, TrainConfig), "score": (ScoreParams,), "compare": (CompareParams,)}


def model_field(command: str, option: str):
    """The parameter model field behind one of a command's generated options."""
    for model in MODELS[command]:
        for name, field in model.model_fields.items():
            renamed = RENAMED.get(name) if model in (SweepParams, ScoreParams, CompareParams) else None
            if option in ({renamed} if renamed else {flag(name), "--no-" + flag(name)[2:]}):
                return field
    raise AssertionError(f"{command} {option}: no field")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_option_has_its_fields_help_choices_and_default(command):
    for option, action in generated_actions(command).items():
        field = model_field(command, option)
        assert field.description in action.help.replace("%%", "%"), option
        assert action.default is None, f"{option}: not given must mean the model's default"
        annotation = field.annotation
        members = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
        if typing.get_origin(annotation) is typing.Literal:
            members = [annotation]
        # A Literal (or Literal | None) gives the choices; a Literal beside other types (float | Literal["tune"],
        # Literal["balanced"] | dict) is text the model reads, with no choices.
        literal = [a for a in members if typing.get_origin(a) is typing.Literal] if len(members) == 1 else []
        assert (tuple(action.choices) if action.choices else None) == (typing.get_args(literal[0]) if literal else None)
        if field.default is not None and not isinstance(field.default, bool) and not action.required:
            assert f"Default: {field.default}" in action.help, option


def test_options_not_given_take_the_models_defaults(tmp_path):
    args = parser().parse_args(["run", "sst2"])
    params = run_command.params(args)
    assert params == FinetuneParams(task="sst2") and params.training.model_fields_set == set()

    args = parser().parse_args(["sweep", "mrpc", "--space", "learning_rate=2e-5,3e-5"])
    assert sweep_command.params(args) == SweepParams(base=FinetuneParams(task="mrpc"),
                                                     space={"learning_rate": [2e-5, 3e-5]})

    (tmp_path / "x.csv").write_text("text\na\n", encoding="utf-8")
    args = parser().parse_args(["score", "models:/bert-x@champion", str(tmp_path / "x.csv")])
    assert score_command.params(args) == ScoreParams(model="models:/bert-x@champion", file=str(tmp_path / "x.csv"))


def test_options_given_reach_their_fields(tmp_path):
    args = parser().parse_args(["sweep", "mrpc", "--space", "epochs=1:3", "--space", "batch_size=8,16", "--sampler",
                                "tpe", "--sampler-seed", "7", "--seed", "3", "--no-register", "--registry-policy",
                                "significant", "--no-group-by-length", "--n-trials", "4"])
    params = sweep_command.params(args)
    assert (params.seed, params.base.training.seed, params.register_best, params.sampler) == (7, 3, False, "tpe")
    assert params.base.registry_policy == "significant" and params.base.training.group_by_length is False
    assert params.space["batch_size"] == [8, 16] and params.space["epochs"].high == 3 and params.n_trials == 4

    (tmp_path / "x.csv").write_text("text\na\n", encoding="utf-8")
    args = parser().parse_args(["score", "m", str(tmp_path / "x.csv"), "--column", "text=review", "--column",
                                "id=rid", "--format", "csv", "--settle-seconds", "5", "--fail-on-bad-rows"])
    params = score_command.params(args)
    assert params.columns == {"text": "review", "id": "rid"} and params.input_format == "csv"
    assert params.settle_seconds == 5 and params.fail_on_bad_rows is True
    args = parser().parse_args(["score", "m", str(tmp_path / "x.csv"), "--column", "text=a", "--column", "text=b"])
    with pytest.raises(ValueError, match="--column names 'text' twice"):
        score_command.params(args)


def test_serving_precision_options_reach_the_finetune_score_serve_and_predict(tmp_path):
    params = run_command.params(parser().parse_args(["run", "sst2", "--serving-precisions", "int8", "auto",
                                                     "--precision-margin", "0.01"]))
    assert (params.serving_precisions, params.precision_margin) == (["int8", "auto"], 0.01)
    assert run_command.params(parser().parse_args(["run", "sst2"])).serving_precisions == [], "none unless asked"
    with pytest.raises(SystemExit):
        parser().parse_args(["run", "sst2", "--serving-precisions", "fp16"])
    (tmp_path / "x.csv").write_text("text\na\n", encoding="utf-8")
    score = score_command.params(parser().parse_args(["score", "m", str(tmp_path / "x.csv"), "--precision", "int8"]))
    assert score.precision == "int8"
    assert parser().parse_args(["serve", "models:/bert-sst2/2", "--precision", "auto"]).precision == "auto"
    assert parser().parse_args(["predict", "models:/bert-sst2/2", "--text", "a", "--precision", "int8"]).precision == "int8"
    assert parser().parse_args(["predict", "models:/bert-sst2/2", "--text", "a"]).precision is None


def test_class_weights_and_the_decision_threshold_are_text_the_training_config_reads(capsys):
    args = parser().parse_args(["run", "mrpc", "--class-weights", "balanced", "--decision-threshold", "tune"])
    training = run_command.params(args).training
    assert (training.class_weights, training.decision_threshold) == ("balanced", "tune")
    args = parser().parse_args(["sweep", "mrpc", "--class-weights", '{"1": 5}', "--decision-threshold", "0.3",
                                "--space", "seed=1,2"])
    training = sweep_command.params(args).base.training
    assert (training.class_weights, training.decision_threshold) == ({"1": 5.0}, 0.3)
    assert run_command.params(parser().parse_args(["run", "mrpc"])).training.class_weights is None, "unset: the spec's"
    for option, value in (("--class-weights", "heavy"), ("--class-weights", '{"1": -5}'),
                          ("--decision-threshold", "1.5"), ("--decision-threshold", "high")):
        with pytest.raises(ValueError, match=option[2:].replace("-", "_")):
            run_command.params(parser().parse_args(["run", "mrpc", option, value]))
    assert main(["check", "mrpc", "--decision-threshold", "0"]) == 1
    assert "decision_threshold" in capsys.readouterr().err


def test_the_prefect_form_takes_class_weights_and_the_decision_threshold():
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import validate

    from flows.finetune import finetune

    schema = parameter_schema(finetune).model_dump()
    for training in ({"class_weights": "balanced", "decision_threshold": "tune"},
                     {"class_weights": {"1": 5}, "decision_threshold": 0.3}, {"class_weights": None}):
        assert validate({"params": {"task": "mrpc", "training": training}}, schema) == [], training
    assert validate({"params": {"task": "mrpc", "training": {"decision_threshold": "high"}}}, schema)


def test_the_suites_tasks_are_a_list_positional_and_none_given_means_the_default_set():
    from flows.cli import suite as suite_command

    given = suite_command.params(parser().parse_args(["suite", "sst2", "rte", "--max-concurrency", "2"]))
    assert (given.tasks, given.max_concurrency) == (["sst2", "rte"], 2)
    assert suite_command.params(parser().parse_args(["suite"])).tasks is None  # SuiteParams' default


# ---- what the commands print --------------------------------------------------------------------------------


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


# ---- SIGTERM ------------------------------------------------------------------------------------------------
TOY_SPEC = """
name: sigterm_toy
family: single_classification
local:
  format: tsv
  files: {train: toy/train.tsv, eval: toy/dev.tsv}
columns: {text_a: sentence, label: label}
labels: [neg, pos]
metrics: [accuracy]
primary_metric: accuracy
max_seq_length: 16
"""


def toy_task(root) -> str:
    """A two-class spec over 64 training rows of the tiny model's words; returns the spec's path."""
    (root / "toy").mkdir(parents=True)
    for name, n in (("train.tsv", 64), ("dev.tsv", 16)):
        rows = [f"the film was {'good fun' if i % 2 else 'bad boring'} {i % 5}\t{'pos' if i % 2 else 'neg'}"
                for i in range(n)]
        (root / "toy" / name).write_text("sentence\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")
    (root / "toy.yaml").write_text(TOY_SPEC, encoding="utf-8")
    return str(root / "toy.yaml")


def test_sigterm_mid_training_records_the_run_and_leaves_no_process(tmp_path):
    """What `timeout`, systemd, `docker stop` or a cancelled CI job send: the run still records its end, and
    no process of it stays behind (Prefect's temporary server, a uvicorn holding its port and database, did)."""
    pytest.importorskip("transformers")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "BERTFLOW_HOME": str(tmp_path / "home"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "PREFECT_API_URL": "", "OMP_NUM_THREADS": "1",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"}  # a busy CI machine
    env.pop("MLFLOW_REGISTRY_URI", None)
    command = [sys.executable, "-m", "flows.cli", "run", toy_task(tmp_path / "data"), "--data-dir",
               str(tmp_path / "data"), "--pretrained", str(write_tiny_checkpoint(tmp_path / "tiny")), "--epochs",
               "1000", "--batch-size", "8", "--checkpoint-every", "4", "--precision", "fp32", "--no-progress-bar"]
    with open(tmp_path / "run.log", "w") as log:
        proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own session: whatever it starts stays in it
    try:
        runs = tmp_path / "home" / "runs" / "sigterm_toy"
        deadline = time.monotonic() + 360
        while not list(runs.glob("*/training/checkpoints/step-*[0-9]")):  # training is under way
            assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.2)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert any("uvicorn" in " ".join(c.cmdline()) for c in children), "Prefect's temporary server runs"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        _, alive = psutil.wait_procs(children, timeout=15)
        assert not alive, [c.cmdline() for c in alive]
        assert not [p.pid for p in psutil.process_iter() if _session(p) == proc.pid]
    finally:  # when it failed: nothing of it may outlive the test
        for leftover in [p for p in psutil.process_iter() if _session(p) == proc.pid]:
            leftover.kill()
    (run,) = list_runs(tmp_path / "home" / "runs", "sigterm_toy")
    assert run.status in ("failed", "interrupted"), run


def _session(process: psutil.Process) -> int | None:
    try:
        return os.getsid(process.pid)
    except OSError:  # gone meanwhile
        return None


def test_audit_options_reach_the_audit_params_and_its_folds_fine_tune():
    from flows.cli import audit as audit_command

    given = audit_command.params(parser().parse_args(
        ["audit", "sst2", "--k", "3", "--top", "7", "--fold-seed", "4", "--max-train-samples", "50", "--epochs", "1"]))
    assert (given.k, given.top, given.fold_seed, given.max_concurrency) == (3, 7, 4, 1)
    assert given.base.task == "sst2" and given.base.training.max_train_samples == 50
    assert given.base.training.model_fields_set == {"max_train_samples", "epochs"}  # the rest: the spec's defaults


def test_the_next_command_stops_a_temporary_server_whose_bertflow_was_killed(capsys):
    """A SIGKILLed `bertflow run` cannot stop Prefect's temporary server; the next `bertflow` command does,
    and leaves alone a server whose bertflow still runs and one that is not a temporary server."""
    owner = subprocess.Popen(["sleep", "60"])
    killed_owner = local_flow._identity(psutil.Process(owner.pid))
    owner.kill()
    owner.wait()

    def server(owner_identity: str, ephemeral: str = "1") -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", local_flow.SERVER_APP],
                                env={**os.environ, local_flow.OWNER: owner_identity,
                                     "PREFECT__SERVER_EPHEMERAL": ephemeral})

    orphan, in_use = server(killed_owner), server(local_flow._identity(psutil.Process()))
    started_by_hand = server(killed_owner, ephemeral="0")  # e.g. `prefect server start`: not bertflow's to stop
    try:
        assert main(["tasks"]) == 0
        assert orphan.wait(timeout=10) is not None
        assert in_use.poll() is None and started_by_hand.poll() is None
        assert f"stopped Prefect's temporary server (pid {orphan.pid})" in capsys.readouterr().err
    finally:
        for proc in (orphan, in_use, started_by_hand):
            proc.kill()
            proc.wait()
