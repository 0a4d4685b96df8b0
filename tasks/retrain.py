"""Retrain on change: the finetune flow's step between its data and its features (tracking/retrain.py says what
is compared and what is kept in MLflow).

- `compare_with_champion`: the fine-tune's identity, complete once its data is read, recorded on its run and
  compared with what the task's registered versions were trained on; returns the `Comparison`.
- `skip_unchanged`: the run of a fine-tune that trains nothing tagged so, and a Prefect markdown artifact under
  the key the registry decision uses, so the task's latest artifact says what its latest run did (and which
  serving precisions the version it stands on has).
"""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from bert_core.spec import TaskSpec
from bert_core.training.identity import FinetuneIdentity
from tasks.retry_policy import retry_if_transient
from tasks.train import artifact_key
from tracking.registry import CHAMPION, model_name
from tracking.retrain import (
    Comparison,
    KnownVersion,
    compare_with_registry,
    record_comparison,
    record_skipped,
)
from tracking.run import TrackedRun


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10, retry_condition_fn=retry_if_transient)
def compare_with_champion(spec: TaskSpec, identity: FinetuneIdentity, run: TrackedRun) -> Comparison:
    """`identity` (its data fingerprint and code version known) recorded on `run`, and compared with the
    registered versions of `bert-<task>`."""
    comparison = compare_with_registry(model_name(spec.name), identity)
    record_comparison(run.run_id, identity, comparison)
    return comparison


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10, retry_condition_fn=retry_if_transient)
def skip_unchanged(spec: TaskSpec, since: KnownVersion, run: TrackedRun, serving: list[str]) -> str:
    """Tag `run` as a fine-tune that trained nothing, since nothing changed since version `since`; returns the
    one-line message ("no change since models:/bert-sst2/3"). `serving`: the lines of `since`'s run on its
    serving precisions (tasks.serving_precision.serving_lines_of_version), listed in the artifact."""
    line = f"no change since {since.uri}"
    record_skipped(run.run_id, since)
    role = "the champion" if CHAMPION in since.aliases else ", ".join(since.aliases) or "no alias"
    fingerprint = since.identity.data_fingerprint[:12] if since.identity and since.identity.data_fingerprint else "?"
    served = "".join(f"\n- {s}" for s in serving)
    create_markdown_artifact(
        f"### {since.name}: {line}\n\nNothing trained, nothing registered: the data (fingerprint `{fingerprint}`), "
        f"the task spec, the pretrained checkpoint, the recipe and the code are those {since.name} v{since.version} "
        f"({role}) was trained with. Run with `force` to train anyway."
        + (f"\n\nRegistered beside v{since.version} by its run:{served}" if served else ""),
        key=artifact_key(spec.name, "registry-decision"), description=f"{since.name}: {line}")
    return line
