"""Which model a scoring job uses, fixed once: ``models:/<name>@<alias>`` is resolved to the version the alias
points at when the job starts, and the job loads ``models:/<name>/<version>``, so an alias that moves while
it runs (a new champion) cannot mix two models' predictions.

    pin_model("models:/bert-sst2@champion") -> PinnedModel(uri="models:/bert-sst2/3", name="bert-sst2",
                                                           version="3", alias="champion", label="bert-sst2-v3", ...)

Accepted: ``models:/<name>@<alias>``, ``models:/<name>/<version>``, ``runs:/<run id>/<path>`` (a run's
logged model, not registered: its label is ``run-<run id>``) and MLflow 3's ``models:/<model id>`` (a logged
model by its id, ``models:/m-...``: label ``model-<model id>``). Each is pinned with the id of the logged model
it is (``model_id``; None for a version registered from a run's files before MLflow 3). The registry is the one
MLflow is configured with (``tracking.store.configure_tracking``).
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
_LOGGED = re.compile(r"models:/(?P<model_id>m-[^/@]+)/?")  # MLflow 3's logged model ids start with "m-"
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
    model_id: str | None = None  # the logged model (MLflow 3's models:/<model id>) it is, when known

    def describe(self) -> str:
        """``bert-sst2 v3 (models:/bert-sst2@champion)`` for log lines."""
        shown = f"{self.name} v{self.version}" if self.name else self.uri
        return shown + (f" ({self.requested})" if self.requested != self.uri else "")


def pin_model(model_uri: str, client: MlflowClient | None = None) -> PinnedModel:
    """Resolve ``model_uri`` in the configured registry to one fixed model; ValueError naming what is there
    when it is not found."""
    client = client or MlflowClient()
    registered, run, logged = (_REGISTERED.fullmatch(model_uri), _RUN.fullmatch(model_uri),
                               _LOGGED.fullmatch(model_uri))
    if registered:
        name, alias, version = registered.group("name", "alias", "version")
        try:
            mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
        except MlflowException as err:
            raise ValueError(_not_found(client, model_uri, err)) from None
        version = str(mv.version)
        return PinnedModel(model_uri, f"models:/{name}/{version}", name, version, alias, mv.run_id,
                           f"{name}-v{version}", experiment_name(scoring_task(name)), _model_id_of_version(mv))
    if run:
        try:
            found = client.get_run(run.group("run_id"))
        except MlflowException as err:
            raise ValueError(f"{model_uri}: run {run.group('run_id')} is not in the tracking store "
                             f"{mask_secrets(client.tracking_uri)} ({err.message})") from None
        return PinnedModel(model_uri, model_uri, None, None, None, run.group("run_id"), f"run-{run.group('run_id')}",
                           experiment_name(scoring_task(None)), _model_id_of_run(client, found, run.group("path")))
    if logged:
        try:
            model = client.get_logged_model(logged.group("model_id"))
        except MlflowException as err:
            raise ValueError(f"{model_uri}: no logged model {logged.group('model_id')} in the tracking store "
                             f"{mask_secrets(client.tracking_uri)} ({err.message})") from None
        return PinnedModel(model_uri, f"models:/{model.model_id}", None, None, None, model.source_run_id,
                           f"model-{model.model_id}", experiment_name(scoring_task(None)), model.model_id)
    raise ValueError(f"{model_uri!r}: expected models:/<name>@<alias> (e.g. models:/bert-sst2@champion), "
                     "models:/<name>/<version>, runs:/<run id>/model or models:/<model id> (models:/m-...)")


def _model_id_of_version(mv) -> str | None:
    """The logged model a version was registered from: its ``model_id``, which a SQL registry leaves empty, else
    its source when that is a ``models:/<model id>`` URI (MLflow 3's ``register_model`` of a logged model)."""
    source = _LOGGED.fullmatch(mv.source or "")
    return getattr(mv, "model_id", None) or (source.group("model_id") if source else None)


def _model_id_of_run(client: MlflowClient, run, name: str) -> str | None:
    """The id of the model named ``name`` that ``run`` logged (MLflow 3 keeps it outside the run's files), as
    MLflow's own ``runs:/`` resolution finds it; None when there is none (a model logged as the run's files)."""
    quoted = name.rstrip("/").replace("'", "\\'")
    try:
        found = client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                            filter_string=f"name = '{quoted}' AND source_run_id = '{run.info.run_id}'")
    except MlflowException:
        return None
    return next((m.model_id for m in found if m.source_run_id == run.info.run_id), None)


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
