"""Which model a scoring job uses, fixed once: ``models:/<name>@<alias>`` is resolved to the version the alias
points at when the job starts, and the job loads ``models:/<name>/<version>``, so an alias that moves while
it runs (a new champion) cannot mix two models' predictions.

    pin_model("models:/bert-sst2@champion") -> PinnedModel(uri="models:/bert-sst2/3", name="bert-sst2",
                                                           version="3", alias="champion", label="bert-sst2-v3", ...)

Accepted: ``models:/<name>@<alias>``, ``models:/<name>/<version>`` and ``runs:/<run id>/<path>`` (a run's
logged model, not registered: its label is ``run-<run id>``). The registry is the one MLflow is configured
with (``tracking.store.configure_tracking``).
"""

from __future__ import annotations

import dataclasses
import re

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tracking.store import experiment_name, mask_secrets

_REGISTERED = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))/?")
_RUN = re.compile(r"runs:/(?P<run_id>[^/]+)/(?P<path>.+)")
RUN_MODELS = "runs"  # the scoring experiment of models given by run (bertflow-score-runs)


@dataclasses.dataclass
class PinnedModel:
    requested: str  # the URI as given
    uri: str  # what is loaded: models:/<name>/<version> or runs:/<run id>/<path>
    name: str | None  # registered model name; None for a run's model
    version: str | None
    alias: str | None  # the alias that was resolved, if one was given
    run_id: str | None  # the run that logged the model
    label: str  # names the model in output files: <name>-v<version> or run-<run id>
    experiment: str  # the MLflow experiment of its scoring runs

    def describe(self) -> str:
        """``bert-sst2 v3 (models:/bert-sst2@champion)`` for log lines."""
        shown = f"{self.name} v{self.version}" if self.name else self.uri
        return shown + (f" ({self.requested})" if self.requested != self.uri else "")


def pin_model(model_uri: str, client: MlflowClient | None = None) -> PinnedModel:
    """Resolve ``model_uri`` in the configured registry to one fixed model; ValueError naming what is there
    when it is not found."""
    client = client or MlflowClient()
    registered, run = _REGISTERED.fullmatch(model_uri), _RUN.fullmatch(model_uri)
    if registered:
        name, alias, version = registered.group("name", "alias", "version")
        try:
            mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
        except MlflowException as err:
            raise ValueError(_not_found(client, model_uri, err)) from None
        version = str(mv.version)
        return PinnedModel(model_uri, f"models:/{name}/{version}", name, version, alias, mv.run_id,
                           f"{name}-v{version}", experiment_name(scoring_task(name)))
    if run:
        try:
            client.get_run(run.group("run_id"))
        except MlflowException as err:
            raise ValueError(f"{model_uri}: run {run.group('run_id')} is not in the tracking store "
                             f"{mask_secrets(client.tracking_uri)} ({err.message})") from None
        return PinnedModel(model_uri, model_uri, None, None, None, run.group("run_id"), f"run-{run.group('run_id')}",
                           experiment_name(scoring_task(None)))
    raise ValueError(f"{model_uri!r}: expected models:/<name>@<alias> (e.g. models:/bert-sst2@champion), "
                     "models:/<name>/<version> or runs:/<run id>/model")


def scoring_task(name: str | None) -> str:
    """What names a model's scoring experiment (``tracking.store.experiment_for``): score-<registered name>."""
    return f"score-{name or RUN_MODELS}"


def _not_found(client: MlflowClient, model_uri: str, err: MlflowException) -> str:
    try:
        names = sorted(m.name for m in client.search_registered_models())
    except MlflowException:
        names = []
    return (f"{model_uri} is not in the model registry of {mask_secrets(mlflow.get_registry_uri())} ({err.message}); "
            f"registered models there: {names or 'none'}")
