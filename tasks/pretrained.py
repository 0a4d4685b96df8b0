"""The `resolve_pretrained` task: a fine-tune's `pretrained` resolved once, before its run folder, its MLflow run or
any training. A registered model or a run's (`models:/bert-snli@champion`, `models:/bert-snli/3`,
`runs:/<run id>/model`, `models:/m-...`) is pinned to one version and its fine-tuned folder brought here
(tracking/parent_model.py), and that folder's positions are checked against the run's max_seq_length, so a wrong
URI or a model that cannot serve fails now, with its message; a folder, a hub id or the default pass through.
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from bert_core.config import BertConfig
from bert_core.spec import TaskSpec
from bert_core.training import TrainConfig, feature_settings
from bert_core.training.features import check_fits_checkpoint
from tasks.retry_policy import retry_if_transient
from tracking.parent_model import PretrainedSource, resolve_pretrained_source


# A retry heals an unreachable store or a broken download; a URI that names nothing fails at once.
@task(retries=2, retry_delay_seconds=10, retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)
def resolve_pretrained(pretrained: str | None, spec: TaskSpec, cfg: TrainConfig) -> PretrainedSource:
    """`pretrained` resolved for a fine-tune of `spec` with `cfg` (holding the spec's defaults); tracking must be
    configured. ValueError: the model is not there, not a bertflow model, or has too few positions."""
    source = resolve_pretrained_source(pretrained)
    if parent := source.parent:
        config = BertConfig.from_json(Path(parent.folder) / "config.json")
        check_fits_checkpoint(feature_settings(spec, cfg), config, parent.describe())
        get_run_logger().info("pretrained: %s, fine-tuned for %s (%s)", parent.describe(), parent.task or "a task",
                              parent.family)
    return source
