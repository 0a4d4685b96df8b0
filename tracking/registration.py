"""What a fine-tune writes about its model around the registry's decision (tracking.registry decides):

- `record_logged_model`: once the model is logged in its run, the body of its model card
  (`model_card_body.md`) and the run tags `logged_model_uri` and `dev_rows`. Every fine-tune does this, a
  sweep's trials too.
- `record_decision`: once a version is registered, the decision as run tags (`model_name`, `model_version`,
  `model_alias`, `model_decision`), the version's model card (`model_card.md` in the run, the version's
  description) and the registered model's description.
- `retracted_on_failure`: a block after which the version must stand; if it fails, the version is retracted.
- `logged_model_of_run`: a finished run that logged its model but registered none (a sweep's best trial),
  read back: what registering it needs.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import mlflow
from mlflow.tracking import MlflowClient

from tracking.registry import RegistryDecision, retract_version
from tracking.training_log import TRAINING_METRICS

CARD_BODY = "model_card_body.md"
MODEL_CARD = "model_card.md"


@dataclasses.dataclass
class LoggedModel:
    """A fine-tune's model as logged in its run."""

    model_uri: str  # MLflow 3's `models:/<model_id>`
    card_body: str  # its model card without the registry's part (tracking.model_card)


def record_logged_model(run_id: str, model_uri: str, card_body: str, dev_rows: str) -> LoggedModel:
    """The card body and the tags of a model just logged in run `run_id`. `dev_rows` names the dev rows its
    score comes from (tracking.registry compares it)."""
    mlflow.log_text(card_body, CARD_BODY, run_id=run_id)
    client = MlflowClient()
    client.set_tag(run_id, "logged_model_uri", model_uri)
    client.set_tag(run_id, "dev_rows", dev_rows)
    return LoggedModel(model_uri=model_uri, card_body=card_body)


def record_decision(run_id: str, decision: RegistryDecision, card: str, model_description: str) -> None:
    """The registry's decision on the version run `run_id` logged: tags of the run, `card` as the run's
    `model_card.md` and as the version's description, `model_description` as the registered model's."""
    client = MlflowClient()
    for key, value in {"model_name": decision.name, "model_version": decision.version,
                       "model_alias": decision.alias, "model_decision": decision.reason}.items():
        client.set_tag(run_id, key, value)
    mlflow.log_text(card, MODEL_CARD, run_id=run_id)
    client.update_model_version(decision.name, decision.version, description=card)
    client.update_registered_model(decision.name, description=model_description)


@contextlib.contextmanager
def retracted_on_failure(name: str, version: str) -> Iterator[None]:
    """Version `version` of `name` is retracted when the block fails: its run fails, so does its version."""
    try:
        yield
    except BaseException:
        retract_version(MlflowClient(), name, version, best_effort=True)
        raise


@dataclasses.dataclass
class LoggedRun:
    """A finished run's logged model and what registering it needs, read back from the run."""

    logged: LoggedModel
    eval_scores: dict[str, float]  # the eval split's metrics, without the `eval_` prefix
    dev_rows: str
    training: dict[str, float]  # train_seconds and examples_per_second


def logged_model_of_run(run_id: str) -> LoggedRun:
    """Run `run_id`'s logged model (its tags, metrics and card body); ValueError if it logged none."""
    run = MlflowClient().get_run(run_id)
    tags, metrics = run.data.tags, run.data.metrics
    if "logged_model_uri" not in tags:
        raise ValueError(f"MLflow run {run_id} logged no model (no logged_model_uri tag): it cannot be registered")
    logged = LoggedModel(model_uri=tags["logged_model_uri"],
                         card_body=mlflow.artifacts.load_text(f"runs:/{run_id}/{CARD_BODY}"))
    # The evaluate task's `eval_<metric>` scores: not the training summary's `eval_rows`, not the intervals.
    eval_scores = {k.removeprefix("eval_"): v for k, v in metrics.items()
                   if k.startswith("eval_") and "/" not in k and k not in TRAINING_METRICS}
    training = {k: metrics[k] for k in ("train_seconds", "examples_per_second") if k in metrics}
    return LoggedRun(logged=logged, eval_scores=eval_scores, dev_rows=tags["dev_rows"], training=training)
