"""Sweeps: the search space's checks, the study's bookkeeping in a real Optuna storage file, the pruning
callback, and the sweep flow end to end on a tiny model (a grid with pruning whose best trial gets an int8
serving version, its resumption, a sweep whose first trial fails, a TPE sweep with two trials at once), plus the
CLI's `--space` syntax."""

from __future__ import annotations

import json
import math
import shutil
import time
from datetime import datetime
from pathlib import Path

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient
from prefect import flow
from prefect.artifacts import Artifact

from bert_core.spec import load_spec
from bert_core.training import TrainConfig
from flows import sweep_study
from flows.cli import main
from flows.params import FinetuneParams, SweepParams
from flows.summary import FinetuneSummary
from flows.sweep import sweep
from flows.sweep_study import Range
from tasks import sweep_trial
from tasks.serving_precision import register_serving_precisions_of_run
from tasks.sweep_trial import SweepTrial, TrialReporter
from tracking.run import read_run

pytest.importorskip("transformers")
# The toy task is learnt within 6 epochs at GOOD_LR (dev accuracy reaches 0.9 to 1.0) and not at all at BAD_LR
# (the model stays at its initial guess: about chance).
GOOD_LR, BAD_LR = 5e-3, 1e-7
TRAINING = TrainConfig(batch_size=8, epochs=6, warmup_ratio=0.0, precision="fp32", progress_bar=False, seed=3,
                       checkpoint_every=8)


# ---- the space, the study, the reporter: no flow -----------------------------------------------------------
@pytest.mark.parametrize(("space", "sampler", "message"), [
    ({}, "grid", "the search space is empty"),
    ({"learnin_rate": [1e-5]}, "grid", "'learnin_rate' cannot be searched"),
    ({"num_threads": [1, 2]}, "grid", "'num_threads' cannot be searched"),
    ({"learning_rate": Range(low=1e-5, high=1e-4)}, "grid", "a range, which a grid cannot enumerate"),
    ({"learning_rate": []}, "tpe", "'learning_rate' has no values"),
    ({"batch_size": [16, 16]}, "grid", "'batch_size' repeats a value"),
    ({"learning_rate": [2e-5, -1.0]}, "grid", "value -1.0 is not a valid learning_rate"),
    ({"warmup_ratio": Range(low=0.0, high=1.5)}, "tpe", "value 1.5 is not a valid warmup_ratio"),
])
def test_a_bad_space_is_refused_naming_the_field(space, sampler, message):
    with pytest.raises(ValueError, match=message):
        sweep_study.check_space(space, sampler, TrainConfig())


def test_ranges_check_their_bounds():
    with pytest.raises(ValueError, match="low < high"):
        Range(low=3, high=1)
    with pytest.raises(ValueError, match="log range needs low > 0"):
        Range(low=0.0, high=1.0, log=True)
    assert Range(low=1, high=4, step=1).is_int and not Range(low=0, high=0.5).is_int


def _study(tmp_path, name="s", pruner=None):
    return sweep_study.open_study(name, f"sqlite:///{tmp_path / 'optuna.db'}", sweep_study.make_sampler("grid", 0),
                             pruner or optuna.pruners.NopPruner())


def test_a_grid_is_enqueued_once_and_counted_against_the_budget(tmp_path):
    space = {"learning_rate": [1e-5, 2e-5, 3e-5], "batch_size": [16, 32]}
    study = _study(tmp_path)
    sweep_study.enqueue_grid(study, space, seed=0)
    sweep_study.enqueue_grid(study, space, seed=0)  # a resumed sweep: nothing added
    points = [t.system_attrs["fixed_params"] for t in study.get_trials()]
    assert len(points) == 6 and {tuple(sorted(p.items())) for p in points} == {
        (("batch_size", b), ("learning_rate", lr)) for lr in space["learning_rate"] for b in space["batch_size"]}
    assert sweep_study.trials_to_ask(study, 6, grid=True) == 6
    assert sweep_study.trials_to_ask(study, 4, grid=True) == 4  # a budget below the grid's size

    first, second = sweep_study.ask(study), sweep_study.ask(study)
    assert sweep_study.suggest(first, space) == points[0] and sweep_study.suggest(second, space) == points[1]  # in order
    assert sweep_study.trials_to_ask(study, 6, grid=True) == 4  # running trials count
    study.tell(first, 0.5)
    study._storage.set_trial_user_attr(second._trial_id, sweep_study.ERROR_ATTR, "diverged")
    study.tell(second, state=sweep_study.State.FAIL)
    assert sweep_study.trials_to_ask(study, 6, grid=True) == 4  # complete, and failed by its own error, count
    assert len(sweep_study.finished(study)) == 1


def test_released_trials_are_enqueued_again_and_do_not_use_the_budget(tmp_path):
    study = _study(tmp_path)
    sweep_study.enqueue_grid(study, {"learning_rate": [1e-5, 2e-5]}, seed=0)
    trial = sweep_study.ask(study)
    sweep_study.suggest(trial, {"learning_rate": [1e-5, 2e-5]})
    sweep_study.release(study, [trial._trial_id])
    states = [t.state for t in study.get_trials()]
    assert states.count(sweep_study.State.FAIL) == 1 and states.count(sweep_study.State.WAITING) == 2
    retry = study.get_trials(states=(sweep_study.State.WAITING,))[-1]
    assert retry.system_attrs["fixed_params"] == trial.params
    assert sweep_study.trials_to_ask(study, 2, grid=True) == 2


def test_a_trial_below_the_median_is_pruned_and_nan_is_not_compared(tmp_path):
    pruner = sweep_trial.make_pruner("median", startup_trials=1)
    study = _study(tmp_path, pruner=pruner)
    done = sweep_study.ask(study)
    for evaluation in (1, 2, 3):
        done.report(0.9, evaluation)
    study.tell(done, 0.9)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"

    def reporter() -> TrialReporter:
        trial = sweep_study.ask(study)
        return TrialReporter(SweepTrial(storage=url, study="s", trial_id=trial._trial_id, trial_number=trial.number,
                                        pruner="median", pruning_startup_trials=1), "accuracy")

    good = reporter()
    assert good.on_evaluate(10, {"accuracy": math.nan}) is False  # not reported: nothing to compare
    assert good.on_evaluate(20, {"accuracy": 0.95}) is False and good.pruned_at is None
    assert good.trial.study._storage.get_trial(good.trial._trial_id).intermediate_values == {2: 0.95}
    bad = reporter()
    assert bad.on_evaluate(10, {"accuracy": 0.1}) is True and bad.pruned_at == 1


def test_the_cli_reads_lists_and_ranges_and_names_a_bad_space(capsys):
    from flows.cli.options import space_option

    assert space_option("learning_rate=2e-5,3e-5") == ("learning_rate", [2e-5, 3e-5])
    assert space_option("group_by_length=true,false") == ("group_by_length", [True, False])
    assert space_option("learning_rate=1e-5:1e-4:log")[1] == Range(low=1e-5, high=1e-4, log=True)
    assert space_option("epochs=1:4:1")[1] == Range(low=1, high=4, step=1)
    with pytest.raises(SystemExit):
        main(["sweep", "sst2", "--space", "learning_rate"])
    assert "expected FIELD=V1,V2" in capsys.readouterr().err
    assert main(["sweep", "sst2", "--space", "learning_rate=1e-5:1e-4"]) == 1  # a range needs tpe
    assert "a range, which a grid cannot enumerate" in capsys.readouterr().err


def test_class_weights_and_the_decision_threshold_are_searchable():
    from flows.cli.options import space_option

    space = {"class_weights": ["balanced", None, '{"1": 5}'], "decision_threshold": [0.5, "tune"]}
    assert {"class_weights", "decision_threshold"} <= set(sweep_study.SEARCHABLE)
    sweep_study.check_space(space, "grid", TrainConfig())
    assert SweepParams(base=FinetuneParams(task="mrpc"), space=space).space == space, "null stays null"
    for bad, message in (({"decision_threshold": [0.5, 1.5]}, "value 1.5 is not a valid decision_threshold"),
                         ({"class_weights": ["balanced", "heavy"]}, "value 'heavy' is not a valid class_weights")):
        with pytest.raises(ValueError, match=message):
            sweep_study.check_space(bad, "grid", TrainConfig())
    assert space_option("class_weights=balanced,null") == ("class_weights", ["balanced", None])
    assert space_option("decision_threshold=0.5,tune") == ("decision_threshold", [0.5, "tune"])
    study = optuna.create_study()
    sweep_study.enqueue_grid(study, space, seed=0)
    configs = [TrainConfig(**sweep_study.suggest(study.ask(), space)) for _ in range(6)]
    assert {(json.dumps(c.class_weights), c.decision_threshold) for c in configs} == {
        (json.dumps(w), t) for w in ("balanced", None, {"1": 5.0}) for t in (0.5, "tune")}, "each point a trial's config"


# ---- the flow, on a tiny model ------------------------------------------------------------------------------
def _params(toy, space, base: dict | None = None, **kwargs) -> SweepParams:
    base = FinetuneParams(task=str(toy["spec"]), data_dir=str(toy["data"]), pretrained=str(toy["tiny"]),
                          training=TRAINING, **(base or {}))
    return SweepParams(base=base, space=space, **kwargs)


def _seed_with_good_lr_first(space: dict) -> int:
    """A sampler seed whose grid order starts with GOOD_LR, so the median pruner has a good trial to compare with."""
    for seed in range(20):
        study = optuna.create_study()
        sweep_study.enqueue_grid(study, space, seed)
        if study.get_trials()[0].system_attrs["fixed_params"]["learning_rate"] == GOOD_LR:
            return seed
    raise AssertionError("no seed puts GOOD_LR first")


@pytest.fixture(scope="module")
def grid_sweep(toy):
    space = {"learning_rate": [GOOD_LR, BAD_LR], "weight_decay": [0.01]}
    # A margin no interval can miss (accuracy - accuracy >= -1): int8 passes, whatever the tiny model predicts.
    serving = {"serving_precisions": ["int8"], "precision_margin": 1.0}
    params = _params(toy, space, base=serving, pruning_startup_trials=1, seed=_seed_with_good_lr_first(space))
    return {"params": params, "result": sweep(params)}


def test_a_grid_sweep_runs_every_point_and_prunes_the_hopeless_one(grid_sweep):
    trials = {t["params"]["learning_rate"]: t for t in grid_sweep["result"]["trials"]}
    assert set(trials) == {GOOD_LR, BAD_LR}
    good, bad = trials[GOOD_LR], trials[BAD_LR]
    assert good["state"] == "COMPLETE" and good["evaluations"] == 6 and good["value"] >= 0.9
    # The bad trial's best dev accuracy so far fell below the good one's at the same evaluation (the median of
    # one trial) once the good one had learnt: pruned there, before or at its last evaluation.
    assert bad["state"] == "PRUNED" and 1 <= bad["evaluations"] <= 6 and bad["value"] < good["value"]
    assert grid_sweep["result"]["best"]["number"] == good["number"]


def test_trials_are_child_runs_and_only_the_best_is_registered(grid_sweep):
    result, client = grid_sweep["result"], MlflowClient()
    parent = client.get_run(result["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    children = {t["number"]: client.get_run(t["mlflow_run_id"]) for t in result["trials"]}
    for number, child in children.items():
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["sweep_trial"] == str(number) and child.info.status == "FINISHED"
    best = children[result["best"]["number"]]
    pruned = next(c for n, c in children.items() if n != result["best"]["number"])
    assert "logged_model_uri" in best.data.tags and "logged_model_uri" not in pruned.data.tags
    assert pruned.data.tags["sweep_pruned_at"] == str(next(t["evaluations"] for t in result["trials"]
                                                            if t["state"] == "PRUNED"))

    # The best trial's dev score, as its own run logged it, is the sweep's best and the registered version's.
    score = best.data.metrics["eval_accuracy"]
    assert result["best"]["value"] == pytest.approx(score)
    assert parent.data.metrics["best_accuracy"] == pytest.approx(score)
    assert parent.data.metrics["trials_complete"] == 1 and parent.data.metrics["trials_pruned"] == 1
    versions = {str(v.version): v for v in client.search_model_versions("name='bert-toy_sentiment'")}
    assert set(versions) == {"1", "2"} and {v.run_id for v in versions.values()} == {best.info.run_id}  # 2: int8
    fp32 = versions["1"]
    assert result["registered"]["model_uri"] == "models:/bert-toy_sentiment/1"
    assert fp32.description.startswith("# bert-toy_sentiment v1")
    assert float(fp32.tags["metric.accuracy"]) == pytest.approx(score)
    assert "<MODEL_URI>" not in fp32.description and "models:/bert-toy_sentiment/1" in fp32.description


def test_the_best_trial_gets_the_serving_precisions_its_fine_tune_would_have(grid_sweep):
    """The base fine-tune's `serving_precisions`: int8 gated on the best trial's own dev predictions (its config,
    its logged weights) and registered beside its version, in its run, as that fine-tune run alone would have."""
    result, client = grid_sweep["result"], MlflowClient()
    best = client.get_run(result["best"]["mlflow_run_id"])
    int8 = client.get_model_version("bert-toy_sentiment", "2")
    assert int8.tags["precision"] == "int8" and int8.tags["derived_from_version"] == "1"
    assert int8.run_id == best.info.run_id, "logged in the best trial's run, beside its fp32 model"
    # The gate's fp32 score is the trial's evaluation: the same dev rows, features and weights.
    assert float(int8.tags["gate.fp32_score"]) == pytest.approx(best.data.metrics["eval_accuracy"])
    assert client.get_model_version("bert-toy_sentiment", "1").tags["serving.int8"] == "2"
    tag = best.data.tags["serving.int8"]
    assert tag.startswith("registered models:/bert-toy_sentiment/2 (int8 vs fp32, paired bootstrap on 32 dev rows")
    assert result["serving"] == [f"serving precision int8: {tag}"]
    spec = load_spec(grid_sweep["params"].base.task)
    assert FinetuneSummary.from_run(spec, read_run(best.info.run_id)).serving == result["serving"], "as a fine-tune's"
    assert f"- serving precision int8: {tag}" in Path(result["table"]).read_text(encoding="utf-8")
    # The trial's run ends as it ended: FINISHED, when its trial did, not when the sweep logged int8 in it.
    (trial,) = (t for t in result["trials"] if t["number"] == result["best"]["number"])
    assert best.info.status == "FINISHED"
    assert best.info.end_time <= datetime.fromisoformat(trial["ended"]).timestamp() * 1000


def test_serving_precisions_are_not_gated_on_data_the_best_trial_was_not_trained_on(grid_sweep, toy, flow_root):
    """Its dev rows read again must be those it was scored on: changed data stops the gate, as a failure of each
    precision (said and tagged), and registers nothing."""
    run_id, client = grid_sweep["result"]["best"]["mlflow_run_id"], MlflowClient()
    changed = flow_root / "changed"
    shutil.copytree(toy["data"] / "toy", changed / "toy")
    with (changed / "toy" / "dev.tsv").open("a", encoding="utf-8") as dev:
        dev.write("a truly great film\tpos\n")
    spec = load_spec(grid_sweep["params"].base.task)
    kept = client.get_run(run_id).data.tags["serving.int8"]

    @flow
    def gate() -> list[str]:
        return register_serving_precisions_of_run(spec, TRAINING.with_defaults(spec.defaults), run_id,
                                                  "bert-toy_sentiment", "1", ["int8"], 1.0, str(changed), False)

    try:
        (line,) = gate()
        assert line.startswith(f"serving precision int8: not registered, it failed: ValueError: the data changed "
                               f"since run {run_id} was trained (fingerprint ")
        assert f"serving precision int8: {client.get_run(run_id).data.tags['serving.int8']}" == line
        assert len(client.search_model_versions("name='bert-toy_sentiment'")) == 2, "nothing registered"
    finally:
        client.set_tag(run_id, "serving.int8", kept)


def test_the_search_is_published_as_files_artifacts_and_a_plot(grid_sweep):
    result = grid_sweep["result"]
    artifacts = {a.path for a in MlflowClient().list_artifacts(result["mlflow_run_id"])}
    assert {"sweep.png", "sweep.md", "trials.json"} <= artifacts
    table = Artifact.get("toy-sentiment-sweep-trials")
    assert table is not None and "learning_rate" in str(table.data)
    with open(result["plot"], "rb") as png:
        assert png.read(8) == b"\x89PNG\r\n\x1a\n"


def test_the_same_sweep_again_resumes_its_study_and_runs_nothing_new(grid_sweep):
    again = sweep(grid_sweep["params"])
    first = grid_sweep["result"]
    assert again["study"] == first["study"] and again["mlflow_run_id"] == first["mlflow_run_id"]
    assert [(t["number"], t["state"]) for t in again["trials"]] == [(t["number"], t["state"]) for t in first["trials"]]
    assert again["registered"]["already"] is True
    assert again["serving"] == first["serving"], "read back from the best trial's run, not gated again"
    assert len(MlflowClient().search_model_versions("name='bert-toy_sentiment'")) == 2


def test_a_sweep_interrupted_mid_trial_reruns_that_trial(toy, monkeypatch):
    """A sweep that died left a trial RUNNING: the next run waits out its heartbeat, fails it, and re-runs it
    with the same parameters."""
    monkeypatch.setattr(sweep_trial, "GRACE_SECONDS", 1)
    monkeypatch.setattr(sweep_trial, "HEARTBEAT_SECONDS", 1)
    params = _params(toy, {"learning_rate": [GOOD_LR]}, study_name="interrupted")
    study = sweep_study.open_study("interrupted", None, sweep_study.make_sampler("grid", 0), sweep_trial.make_pruner("none", 0))
    sweep_study.enqueue_grid(study, params.space, 0)
    dead = sweep_study.ask(study)  # records its first heartbeat
    sweep_study.suggest(dead, params.space)
    time.sleep(2)

    result = sweep(params)
    states = {t["number"]: t["state"] for t in result["trials"]}
    assert states == {dead.number: "FAIL", dead.number + 1: "COMPLETE"}
    retried = optuna.load_study(study_name="interrupted", storage=sweep_trial.storage(None)).trials[-1]
    assert retried.system_attrs["failed_trial"] == dead.number and retried.params == {"learning_rate": GOOD_LR}
    assert result["best"]["number"] == dead.number + 1


def test_a_sweep_whose_first_trial_fails_stops_with_its_error(toy, flow_root):
    missing = flow_root / "missing.yaml"
    missing.write_text(toy["spec"].read_text(encoding="utf-8").replace("toy/", "nowhere/"), encoding="utf-8")
    params = _params(toy, {"learning_rate": [GOOD_LR, BAD_LR]}, study_name="missing")
    params = params.model_copy(update={"base": params.base.model_copy(update={"task": str(missing)})})
    state = sweep(params, return_state=True)
    assert state.is_failed()
    error = str(state.result(raise_on_failure=False))
    assert "the first trials failed, so the sweep stopped" in error and "nowhere" in error
    study = optuna.load_study(study_name="missing", storage=sweep_trial.storage(None))
    assert [t.state for t in study.trials].count(sweep_study.State.FAIL) == 1  # the second was never started
    assert mlflow.search_runs(search_all_experiments=True, filter_string="tags.sweep_study = 'missing' and "
                              "attributes.status = 'FAILED'").shape[0] == 2  # the trial's run and the sweep's


def test_a_tpe_sweep_runs_trials_at_once_within_its_ranges(toy):
    space = {"learning_rate": Range(low=1e-3, high=5e-3, log=True), "batch_size": [8, 16]}
    result = sweep(_params(toy, space, sampler="tpe", n_trials=2, max_concurrency=2, pruner="none"))
    assert [t["state"] for t in result["trials"]] == ["COMPLETE", "COMPLETE"]
    for t in result["trials"]:
        assert 1e-3 <= t["params"]["learning_rate"] <= 5e-3 and t["params"]["batch_size"] in (8, 16)
        run = MlflowClient().get_run(t["mlflow_run_id"])
        assert float(run.data.params["training.learning_rate"]) == pytest.approx(t["params"]["learning_rate"])
    spans = [(t["started"], t["ended"]) for t in result["trials"]]
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1], f"the two trials did not overlap: {spans}"
