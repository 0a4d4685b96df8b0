"""The `register` task: the model logged as an MLflow pyfunc, registered as a new version of `bert-<task>`,
and given `champion` or `challenger` (tracking.registry); the outcome also goes to two Prefect artifacts,
a metrics table and a markdown summary of the decision.
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
from tasks.train import artifact_key
from tracking.model_card import model_card, task_description
from tracking.packaging import EXAMPLE_ROWS, log_model, rows_to_frame
from tracking.registry import decision_markdown, model_name, register_version, retract_version


@task(cache_policy=NO_CACHE)
def register(spec: TaskSpec, cfg: TrainConfig, data: DataInfo, trained: dict, evaluation: dict, run_id: str,
             policy: str, dev_fingerprint: str, confidence: float = 0.95, pretrained: str | None = None) -> dict:
    """Log and register the model of run `run_id` (the active MLflow run) with its model card; returns the
    registry decision as a dict plus `model_name`, `model_uri` (`models:/<name>/<version>`) and `model_card`.

    `dev_fingerprint` names the dev rows the score comes from, so the registry can tell when a champion
    was scored on other data.
    """
    example_rows = load_split(data, "eval", EXAMPLE_ROWS)
    info = log_model(trained["model_dir"], spec.family, example_rows)
    name = model_name(spec.name)
    decision = register_version(info.model_uri, name, run_id, evaluation["splits"]["eval"], spec.primary_metric,
                                dev_fingerprint, policy=policy, confidence=confidence, family=spec.family,
                                label_names=data.label_names, settings=get_family(spec.family).task_settings(spec))
    client = MlflowClient()
    try:
        for key, value in {"model_name": name, "model_version": decision.version, "model_alias": decision.alias,
                           "model_decision": decision.reason}.items():
            client.set_tag(run_id, key, value)
        table = [{"split": split, "metric": metric, "value": round(value, 4)}
                 for split, scores in evaluation["splits"].items() for metric, value in scores.items()]
        table += [{"split": "train", "metric": k, "value": round(trained[k], 2)}
                  for k in ("train_seconds", "examples_per_second")]
        create_table_artifact(table, key=artifact_key(spec.name, "metrics"),
                              description=f"{name} v{decision.version}: dev metrics of the best checkpoint")
        create_markdown_artifact(decision_markdown(decision), key=artifact_key(spec.name, "registry-decision"),
                                 description=f"{name} v{decision.version}: {decision.alias}")
        result = {**dataclasses.asdict(decision), "model_name": name, "model_uri": f"models:/{name}/{decision.version}"}
        card = model_card(spec, cfg, data, trained, evaluation, result, rows_to_frame(spec.family, example_rows),
                          pretrained or OFFLINE_DEFAULT, checkpoint_language(pretrained), run_id)
        mlflow.log_text(card, "model_card.md", run_id=run_id)
        client.update_model_version(name, decision.version, description=card)
        client.update_registered_model(name, description=task_description(spec, policy))
    except BaseException:
        retract_version(client, name, decision.version, best_effort=True)  # the run fails: so does its version
        raise
    return {**result, "model_card": card}
