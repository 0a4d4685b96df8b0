"""prefect.yaml is code too: every deployment must load its flow, validate its parameters against the
flow's signature, and carry a schedule Prefect can parse, or `prefect deploy --all` breaks in production."""

from __future__ import annotations

import pytest
import yaml
from prefect.client.schemas.schedules import CronSchedule
from prefect.flows import load_flow_from_entrypoint

from bert_core.loading import has_local_data
from bert_core.spec import builtin_specs, load_spec
from bert_core.training import TrainConfig
from tests.conftest import REPO_ROOT

CONFIG = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text(encoding="utf-8"))
DEPLOYMENTS = {d["name"]: d for d in CONFIG["deployments"]}


ON_DEMAND = {"on-demand", "sweep", "audit"}  # run when asked (the UI's form, the suite), never on a schedule
FINETUNES = {name for name, d in DEPLOYMENTS.items() if d["entrypoint"] == "flows/finetune.py:finetune"}
ON_NEW_DATA = "reviews-on-new-data"  # a frequent fine-tune of a dataset of one's own: it trains when its files change


def test_every_builtin_task_has_a_deployment():
    tasks = {DEPLOYMENTS[n]["parameters"]["params"]["task"] for n in FINETUNES - {ON_NEW_DATA}
             if DEPLOYMENTS[n]["parameters"]}
    assert tasks == set(builtin_specs())
    assert "suite" in DEPLOYMENTS
    assert DEPLOYMENTS["suite"]["parameters"]["params"]["deployment"] == "bertflow-finetune/on-demand"
    assert DEPLOYMENTS["on-demand"]["entrypoint"] == "flows/finetune.py:finetune"


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_deployment_parameters_validate_against_its_flow(name, monkeypatch):
    deployment = DEPLOYMENTS[name]
    monkeypatch.chdir(REPO_ROOT)  # entrypoints are relative to the project, as after the pull step
    flow = load_flow_from_entrypoint(deployment["entrypoint"], use_placeholder_flow=False)
    validated = flow.validate_parameters(deployment["parameters"])  # raises ParameterTypeError when wrong
    if name == "sweep":  # its trials fan out to on-demand, and the search it shows is the one that runs
        params = validated["params"]
        assert params.deployment == "bertflow-finetune/on-demand"
        assert params.budget() == 6 and params.base.task == "mrpc"
    elif name in FINETUNES and name != "on-demand":
        params = validated["params"]
        assert params.task == deployment["parameters"]["params"]["task"]
        # What the UI's form shows for each training field (the deployment's value, else the field's
        # default) is what runs (the spec's defaults filled in), and the budget stays the full data.
        spec = load_spec(params.task)
        runs = params.training.with_defaults(spec.defaults)
        given = deployment["parameters"]["params"].get("training", {})
        shown = {name: given.get(name, field.default) for name, field in TrainConfig.model_fields.items()}
        assert shown == runs.model_dump(), {k: (shown[k], v) for k, v in runs.model_dump().items() if shown[k] != v}
        assert runs.max_train_samples is None
    elif name == "audit":  # the form's nested fine-tune reaches the folds; its budget caps the rows audited
        params = validated["params"]
        assert params.base.task == "sst2" and params.k == 5 and params.base.training.max_train_samples == 4000
    elif deployment["entrypoint"] == "flows/score.py:score":  # the nested shape reaches the flow's ScoreParams
        assert validated["params"].model == deployment["parameters"]["params"]["model"]


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_deployment_schedules_and_pool(name):
    deployment = DEPLOYMENTS[name]
    assert deployment["work_pool"]["name"] == "bertflow-process"
    if name in ON_DEMAND:
        assert not deployment.get("schedules")
        if name == "on-demand":  # what the suite and sweeps fan out to: any task, from their parameters
            assert deployment["parameters"] == {}
        return
    if name == "file":  # one file, scored when asked
        assert not deployment.get("schedules") and set(deployment["parameters"]["params"]) == {"model"}
        return
    assert deployment["schedules"], "every deployment retrains on a schedule"
    for schedule in deployment["schedules"]:
        CronSchedule(cron=schedule["cron"], timezone=schedule.get("timezone"))  # raises on a bad cron


def test_the_scoring_deployments():
    """`bertflow-score/folder` scores a folder with the current champion of a task on a schedule, one run at a
    time; `bertflow-score/file` is the one-file form. Both run the score flow."""
    folder, file = DEPLOYMENTS["folder"], DEPLOYMENTS["file"]
    assert folder["entrypoint"] == file["entrypoint"] == "flows/score.py:score"
    params = folder["parameters"]["params"]
    assert {"model", "folder", "pattern"} <= set(params)
    name, _, alias = params["model"].removeprefix("models:/").partition("@")
    assert alias == "champion" and name.removeprefix("bert-") in builtin_specs()
    assert folder["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
    assert params["settle_seconds"] > 0, "a file still being copied waits for the next run"


def test_the_deployment_on_new_data(monkeypatch):
    """`reviews-on-new-data` checks often whether its data changed: a frequent schedule, a spec whose files are
    all under its data_dir (from the checkout, where the pull step puts the run), and no `force`, so that an
    unchanged check trains nothing (tests/flows/test_retrain.py runs such a sequence); a check never starts
    while its retrain is still going."""
    deployment = DEPLOYMENTS[ON_NEW_DATA]
    assert deployment["entrypoint"] == "flows/finetune.py:finetune"
    params = deployment["parameters"]["params"]
    assert not params.get("force") and params["task"] not in builtin_specs()
    monkeypatch.chdir(REPO_ROOT)
    assert has_local_data(params["task"], params["data_dir"]), "its files are under its data_dir"
    (schedule,) = deployment["schedules"]
    assert CronSchedule(cron=schedule["cron"]).cron.split()[1] == "*", "at least hourly"
    assert deployment["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}


def test_pull_step_sets_the_working_directory():
    steps = [next(iter(step)) for step in CONFIG["pull"]]
    assert steps == ["prefect.deployments.steps.set_working_directory"]


def test_prefect_accepts_the_file():
    from prefect.cli.deploy._models import PrefectYamlModel  # what `prefect deploy` parses the file with

    model = PrefectYamlModel.model_validate(CONFIG)
    assert len(model.deployments) == len(DEPLOYMENTS)
