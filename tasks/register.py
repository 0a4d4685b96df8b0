"""The model's last two steps, as two tasks:

- `log_trained_model`: the best checkpoint logged as an MLflow pyfunc in its run, with the body of its model
  card (`model_card_body.md`) and the run tags `logged_model_uri` and `dev_rows`. Every fine-tune does this,
  a sweep's trials too.
- `register`: that logged model registered as a new version of `bert-<task>` and given `champion` or
  `challenger` (tracking.registry); the decision goes to the run's tags, to the version's model card and to
  two Prefect artifacts, a metrics table and a markdown summary of the decision. A fine-tune registers its
  own model; a sweep registers only its best trial's, from that trial's run (`register_logged_run`).
"""

from __future__ import annotations

import dataclasses

import mlflow
from mlflow.tracking import MlflowClient
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from bert_core.checkpoint import OFFLINE_DEFAULT, checkpoint_language
from bert_core.families import get_family
from bert_core.spec import TaskSpec
from bert_core.training import TrainConfig
from tasks.data import DataInfo, load_split
from tasks.train import TRAINING_METRICS, artifact_key
from tracking.model_card import card_body, model_card, task_description
from tracking.packaging import EXAMPLE_ROWS, log_model, rows_to_frame
from tracking.registry import decision_markdown, model_name, register_version, retract_version

CARD_BODY = "model_card_body.md"


@task(cache_policy=NO_CACHE)
def log_trained_model(spec: TaskSpec, cfg: TrainConfig, data: DataInfo, trained: dict, evaluation: dict,
                      run_id: str, dev_rows: str, pretrained: str | None = None) -> dict:
    """Log the best checkpoint in run `run_id` (the active MLflow run); returns `logged_model_uri` and the
    model card's body. `dev_rows` names the dev rows the score comes from (tracking.registry compares it)."""
    example_rows = load_split(data, "eval", EXAMPLE_ROWS)
    info = log_model(trained["model_dir"], spec.family, example_rows)
    body = card_body(spec, cfg, data, trained, evaluation, rows_to_frame(spec.family, example_rows),
                     pretrained or OFFLINE_DEFAULT, checkpoint_language(pretrained), run_id)
    mlflow.log_text(body, CARD_BODY, run_id=run_id)
    client = MlflowClient()
    client.set_tag(run_id, "logged_model_uri", info.model_uri)
    client.set_tag(run_id, "dev_rows", dev_rows)
    return {"logged_model_uri": info.model_uri, "card_body": body}


@task(cache_policy=NO_CACHE)
def register(spec: TaskSpec, run_id: str, logged: dict, eval_scores: dict[str, float], dev_rows: str,
             policy: str, confidence: float = 0.95, label_names: list[str] | None = None,
             training: dict[str, float] | None = None) -> dict:
    """Register the model `log_trained_model` logged in run `run_id`; returns the registry decision as a
    dict plus `model_name`, `model_uri` (`models:/<name>/<version>`) and `model_card`.

    `eval_scores`: the eval split's metrics; `training`: train_seconds and examples_per_second for the
    metrics artifact.
    """
    name = model_name(spec.name)
    decision = register_version(logged["logged_model_uri"], name, run_id, eval_scores, spec.primary_metric,
                                dev_rows, policy=policy, confidence=confidence, family=spec.family,
                                label_names=label_names, settings=get_family(spec.family).task_settings(spec))
    client = MlflowClient()
    try:
        for key, value in {"model_name": name, "model_version": decision.version, "model_alias": decision.alias,
                           "model_decision": decision.reason}.items():
            client.set_tag(run_id, key, value)
        table = [{"split": "eval", "metric": metric, "value": round(value, 4)} for metric, value in eval_scores.items()]
        table += [{"split": "train", "metric": k, "value": round(v, 2)} for k, v in (training or {}).items()]
        create_table_artifact(table, key=artifact_key(spec.name, "metrics"),
                              description=f"{name} v{decision.version}: dev metrics of the best checkpoint")
        create_markdown_artifact(decision_markdown(decision), key=artifact_key(spec.name, "registry-decision"),
                                 description=f"{name} v{decision.version}: {decision.alias}")
        card = model_card(logged["card_body"], name, decision.version, decision.alias, decision.reason,
                          spec.description or spec.name)
        mlflow.log_text(card, "model_card.md", run_id=run_id)
        client.update_model_version(name, decision.version, description=card)
        client.update_registered_model(name, description=task_description(spec, policy))
    except BaseException:
        retract_version(client, name, decision.version, best_effort=True)  # the run fails: so does its version
        raise
    return {**dataclasses.asdict(decision), "model_name": name, "model_uri": f"models:/{name}/{decision.version}",
            "model_card": card}


def register_logged_run(spec: TaskSpec, run_id: str, policy: str, confidence: float = 0.95) -> dict:
    """`register` for a finished run that logged its model but registered none (a sweep's best trial): what
    it needs comes back from the run's tags, metrics and card body."""
    run = MlflowClient().get_run(run_id)
    tags, metrics = run.data.tags, run.data.metrics
    if "logged_model_uri" not in tags:
        raise ValueError(f"MLflow run {run_id} logged no model (no logged_model_uri tag): it cannot be registered")
    logged = {"logged_model_uri": tags["logged_model_uri"],
              "card_body": mlflow.artifacts.load_text(f"runs:/{run_id}/{CARD_BODY}")}
    # The evaluate task's `eval_<metric>` scores: not the training summary's `eval_rows`, not the intervals.
    eval_scores = {k.removeprefix("eval_"): v for k, v in metrics.items()
                   if k.startswith("eval_") and "/" not in k and k not in TRAINING_METRICS}
    training = {k: metrics[k] for k in ("train_seconds", "examples_per_second") if k in metrics}
    return register(spec, run_id, logged, eval_scores, tags["dev_rows"], policy, confidence, training=training)
