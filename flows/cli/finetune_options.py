"""The options of a fine-tune, shared by `check`, `run`, `suite` and `sweep`: FinetuneParams' fields, its
`training` field as one option per TrainConfig field. A training option not given stays unset in TrainConfig,
so the task spec's default applies (e.g. its learning rate), as it does for a deployment or the Prefect form."""

from __future__ import annotations

from bert_core.training import TrainConfig
from flows.cli.options import ModelOptions
from flows.params import FinetuneParams

TRAINING = ModelOptions(TrainConfig, spec_defaults=True,
                        title="training (TrainConfig; unset fields take the task spec's defaults)")
# Set by the sweep flow on its own trials; no one gives it by hand.
NOT_ON_THE_COMMAND_LINE = ("sweep_trial",)


def finetune_options(*, only: tuple[str, ...] | None = None, exclude: tuple[str, ...] = (),
                     title: str | None = None) -> ModelOptions:
    """FinetuneParams' options (`only` those fields, or all but `exclude`), the task as the positional argument."""
    return ModelOptions(FinetuneParams, only=only, exclude=(*exclude, *NOT_ON_THE_COMMAND_LINE),
                        positional=("task",), nested={"training": TRAINING}, title=title)
