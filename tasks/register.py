"""The `register` task: the model logged as an MLflow pyfunc, registered as a new version of `bert-<task>`,
and given `champion` or `challenger` (tasks.registry); the outcome also goes to two Prefect artifacts,
a metrics table and a markdown summary of the decision.
"""

from __future__ import annotations

import dataclasses

from mlflow.tracking import MlflowClient
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from bert_core.spec import TaskSpec
from tasks.data import DataInfo, load_split
from tasks.pyfunc_model import EXAMPLE_ROWS, log_model
from tasks.registry import decision_markdown, model_name, register_version, retract_version
from tasks.train import artifact_key


@task(cache_policy=NO_CACHE)
def register(spec: TaskSpec, data: DataInfo, trained: dict, evaluation: dict, run_id: str, policy: str,
             dev_fingerprint: str, confidence: float = 0.95) -> dict:
    """Log and register the model of run `run_id` (the active MLflow run); returns the registry decision
    as a dict plus `model_name` and `model_uri` (`models:/<name>/<version>`).

    `dev_fingerprint` names the dev rows the score comes from, so the registry can tell when a champion
    was scored on other data.
    """
    info = log_model(trained["model_dir"], spec.family, load_split(data, "eval", EXAMPLE_ROWS))
    name = model_name(spec.name)
    decision = register_version(info.model_uri, name, run_id, evaluation["splits"]["eval"], spec.primary_metric,
                                dev_fingerprint, policy=policy, confidence=confidence, family=spec.family,
                                label_names=data.label_names, settings=spec.metric_settings())
    client = MlflowClient()
    try:
        for key, value in {"model_name": name, "model_version": decision.version,
                           "model_alias": decision.alias}.items():
            client.set_tag(run_id, key, value)
        table = [{"split": split, "metric": metric, "value": round(value, 4)}
                 for split, scores in evaluation["splits"].items() for metric, value in scores.items()]
        table += [{"split": "train", "metric": k, "value": round(trained[k], 2)}
                  for k in ("train_seconds", "examples_per_second")]
        create_table_artifact(table, key=artifact_key(spec.name, "metrics"),
                              description=f"{name} v{decision.version}: dev metrics of the best checkpoint")
        create_markdown_artifact(decision_markdown(decision), key=artifact_key(spec.name, "registry-decision"),
                                 description=f"{name} v{decision.version}: {decision.alias}")
    except BaseException:
        retract_version(client, name, decision.version, best_effort=True)  # the run fails: so does its version
        raise
    return {**dataclasses.asdict(decision), "model_name": name, "model_uri": f"models:/{name}/{decision.version}"}
