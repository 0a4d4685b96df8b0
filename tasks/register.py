"""The model's last two steps, as two tasks:

- `log_trained_model`: the best checkpoint logged as an MLflow pyfunc in its run, with the body of its model
  card and the run tags `logged_model_uri` and `dev_rows` (tracking.registration), and `parent_head` for a model
  started from another (tracking.parent_model). Every fine-tune does this, a sweep's trials too.
- `register`: that logged model registered as a new version of `bert-<task>` and given `champion` or
  `challenger` (tracking.registry); the decision goes to the run's tags and to the version's model card
  (tracking.registration) and to two Prefect artifacts, a metrics table and a markdown summary of the
  decision. The version keeps what its run was trained on and what changed since the champion
  (tracking/retrain.py), and its card says why it was trained; the run's lineage tags (`parent_model`, ...) go to
  the version too. A fine-tune registers its own model; a sweep registers only its best trial's, from that
  trial's run (`register_logged_run`).
"""

from __future__ import annotations

import dataclasses

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from bert_core.checkpoint import OFFLINE_DEFAULT, checkpoint_language, read_finetuned_meta
from bert_core.families import get_family
from bert_core.spec import TaskSpec
from bert_core.training import TrainConfig
from tasks.data import DataInfo, load_split
from tasks.evaluate import Evaluation
from tasks.train import Trained, artifact_key
from tracking.model_card import card_body, model_card, task_description, why_this_version
from tracking.packaging import EXAMPLE_ROWS, log_model, rows_to_frame
from tracking.parent_model import PretrainedSource, copy_lineage_to_version
from tracking.registration import (
    LoggedModel,
    logged_model_of_run,
    record_decision,
    record_logged_model,
    retracted_on_failure,
)
from tracking.registry import RegistryDecision, decision_markdown, model_name, register_version
from tracking.retrain import CHANGED_SINCE_TAG, CHANGES_TAG, version_tags
from tracking.run import TrackedRun


@dataclasses.dataclass
class Registered:
    """What `register` did: the registry's decision on the new version, its URI and its model card."""

    decision: RegistryDecision
    model_uri: str  # models:/<name>/<version>
    model_card: str

    def as_dict(self) -> dict:
        """The decision's fields plus `model_name`, `model_uri` and `model_card` (what a sweep returns)."""
        return {**dataclasses.asdict(self.decision), "model_name": self.decision.name, "model_uri": self.model_uri,
                "model_card": self.model_card}


@task(cache_policy=NO_CACHE)
def log_trained_model(spec: TaskSpec, cfg: TrainConfig, data: DataInfo, trained: Trained, evaluation: Evaluation,
                      run: TrackedRun, dev_rows: str, pretrained: PretrainedSource | str | None = None) -> LoggedModel:
    """Log the best checkpoint in `run` (the active MLflow run); returns its URI and the model card's body.
    `dev_rows` names the dev rows the score comes from (tracking.registry compares it). `pretrained`: what the
    fine-tune started from (a checkpoint folder or hub id, or a resolved registered model)."""
    if not isinstance(pretrained, PretrainedSource):
        pretrained = PretrainedSource(pretrained, pretrained, pretrained or OFFLINE_DEFAULT)
    example_rows = load_split(data, "eval", EXAMPLE_ROWS)
    info = log_model(trained.model_dir, spec.family, example_rows)
    body = card_body(spec, cfg, data, dataclasses.asdict(trained), dataclasses.asdict(evaluation),
                     rows_to_frame(spec.family, example_rows), pretrained.given or OFFLINE_DEFAULT,
                     checkpoint_language(pretrained.path), run.run_id,
                     parent=pretrained.parent.uri if pretrained.parent else None)
    if started_from := read_finetuned_meta(trained.model_dir).get("parent"):
        run.set_tag("parent_head", started_from["head"])
    return record_logged_model(run.run_id, info.model_uri, body, dev_rows)


@task(cache_policy=NO_CACHE)
def register(spec: TaskSpec, run: TrackedRun, logged: LoggedModel, eval_scores: dict[str, float], dev_rows: str,
             policy: str, confidence: float = 0.95, label_names: list[str] | None = None,
             training: dict[str, float] | None = None) -> Registered:
    """Register the model `log_trained_model` logged in `run`; returns the registry's decision.

    `eval_scores`: the eval split's metrics; `training`: train_seconds and examples_per_second for the
    metrics artifact.
    """
    name = model_name(spec.name)
    trained_on = version_tags(run.run_id)  # what the run was trained on, and what changed since the champion
    decision = register_version(logged.model_uri, name, run.run_id, eval_scores, spec.primary_metric,
                                dev_rows, policy=policy, confidence=confidence, family=spec.family,
                                label_names=label_names, settings=get_family(spec.family).rows.task_settings(spec),
                                tags=trained_on)
    with retracted_on_failure(name, decision.version):  # the run fails: so does its version
        copy_lineage_to_version(run.run_id, name, decision.version)
        card = model_card(logged.card_body, name, decision.version, decision.alias, decision.reason,
                          spec.description or spec.name,
                          why_this_version(trained_on.get(CHANGED_SINCE_TAG), trained_on.get(CHANGES_TAG)))
        record_decision(run.run_id, decision, card, task_description(spec, policy))
        table = [{"split": "eval", "metric": metric, "value": round(value, 4)} for metric, value in eval_scores.items()]
        table += [{"split": "train", "metric": k, "value": round(v, 2)} for k, v in (training or {}).items()]
        create_table_artifact(table, key=artifact_key(spec.name, "metrics"),
                              description=f"{name} v{decision.version}: dev metrics of the best checkpoint")
        create_markdown_artifact(decision_markdown(decision), key=artifact_key(spec.name, "registry-decision"),
                                 description=f"{name} v{decision.version}: {decision.alias}")
    return Registered(decision=decision, model_uri=f"models:/{name}/{decision.version}", model_card=card)


def register_logged_run(spec: TaskSpec, run_id: str, policy: str, confidence: float = 0.95) -> Registered:
    """`register` for a finished run that logged its model but registered none (a sweep's best trial): what
    it needs comes back from the run's tags, metrics and card body."""
    found = logged_model_of_run(run_id)
    return register(spec, TrackedRun(run_id), found.logged, found.eval_scores, found.dev_rows, policy, confidence,
                    training=found.training)
