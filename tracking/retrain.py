"""Retrain on change, the MLflow side: what a fine-tune was trained on, kept with its run and its registered
version, and a new fine-tune compared with what the task's registered versions were trained on, after its data
is read and before anything is trained.

    comparison = compare_with_registry("bert-sst2", identity)   # identity: FinetuneIdentity, data and code known
    comparison.unchanged        # KnownVersion bert-sst2 v3: nothing changed since it (nothing to train); or None
    comparison.changes          # ["the data changed (3f2a9c01b7d4 -> 8e1d0c55aa29)"]: vs the champion, in words
    record_comparison(run_id, identity, comparison)             # on every fine-tune's run
    version_tags(run_id)        # what the run's registered version keeps of it (tasks/register.py)

Kept in MLflow:
- ``finetune_identity``: the identity's key (16 hex digits), a tag of the run and of its registered version;
- ``finetune_identity.json``: the identity itself, a file of the run and a tag of the version (a registry tag
  holds 100,000 characters, a run tag 8,000; the JSON is ~1.5 KB, paths included);
- ``changed_since`` (``models:/bert-X/N``, the champion compared with, or ``none``) and ``changes`` (the
  differences in words, ``; ``-joined, or ``none``), tags of the run and of its version;
- ``skipped`` = ``unchanged`` and ``unchanged_since`` (``models:/bert-X/N``): tags of the run of a fine-tune
  that trained nothing.

Nothing changed (``Comparison.unchanged``) when
- the champion's identity has no differences from this one (``FinetuneIdentity.differences``: the same data
  bytes in another folder are the same data); or else
- another version holds this very identity (its key): this fine-tune was registered already and did not
  become champion (e.g. a weekly run whose recipe is not the one a sweep found for the champion). Training it
  again would give the same model, so it is not trained either.
A champion registered before bertflow kept identities records none: the fine-tune trains, and says why.
"""

from __future__ import annotations

import dataclasses
import json

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

from bert_core.training.identity import FinetuneIdentity
from tracking.registry import CHAMPION

IDENTITY_TAG = "finetune_identity"
IDENTITY_JSON = "finetune_identity.json"
CHANGED_SINCE_TAG = "changed_since"
CHANGES_TAG = "changes"
SKIPPED_TAG = "skipped"
UNCHANGED_SINCE_TAG = "unchanged_since"
NONE = "none"  # the value of changed_since / changes when there is nothing to name


@dataclasses.dataclass(frozen=True)
class KnownVersion:
    """A registered version, as the comparison and a skipped fine-tune's summary need it."""

    name: str
    version: str
    aliases: list[str]
    metrics: dict[str, float]  # its eval metrics (the version tags metric.<name>)
    identity: FinetuneIdentity | None  # what it was trained on; None: registered before bertflow kept it
    run_id: str | None = None  # the run that registered it (None: registered from files, no run)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A fine-tune against the task's registered versions, before any training."""

    champion: KnownVersion | None  # None: no champion yet
    changes: list[str]  # how the fine-tune differs from the champion, in words; [] when it does not, or no champion
    unchanged: KnownVersion | None  # the version it would repeat (the champion, else one of the same identity)

    @property
    def changed_since(self) -> str:
        return self.champion.uri if self.champion else NONE


def compare_with_registry(name: str, identity: FinetuneIdentity) -> Comparison:
    """``identity`` (data fingerprint and code version known) against registered model ``name``'s versions."""
    client = MlflowClient()
    champion = _version_by_alias(client, name, CHAMPION)
    changes = []
    if champion is not None:
        if champion.identity is None:
            changes = [f"{champion.uri} records no fine-tune identity (registered before bertflow kept one)"]
        else:
            changes = champion.identity.differences(identity)
        if not changes:
            return Comparison(champion, [], champion)
    same = _versions_with_key(client, name, identity.key())
    return Comparison(champion, changes, same[-1] if same else None)


def record_comparison(run_id: str, identity: FinetuneIdentity, comparison: Comparison) -> None:
    """The run's identity (key tag, JSON file) and what changed since the champion (tags)."""
    client = MlflowClient()
    mlflow.log_text(json.dumps(identity.to_json(), indent=1), IDENTITY_JSON, run_id=run_id)
    client.set_tag(run_id, IDENTITY_TAG, identity.key())
    client.set_tag(run_id, CHANGED_SINCE_TAG, comparison.changed_since)
    client.set_tag(run_id, CHANGES_TAG, _cut("; ".join(comparison.changes) or NONE))


def record_skipped(run_id: str, since: KnownVersion) -> None:
    """The tags of a fine-tune that trained nothing: nothing changed since version ``since``."""
    client = MlflowClient()
    client.set_tag(run_id, SKIPPED_TAG, "unchanged")
    client.set_tag(run_id, UNCHANGED_SINCE_TAG, since.uri)


def version_tags(run_id: str) -> dict[str, str]:
    """What the version registered from run ``run_id`` keeps of its comparison: the identity's key and JSON,
    ``changed_since`` and ``changes``; {} for a run that recorded none (logged by an older bertflow)."""
    tags = MlflowClient().get_run(run_id).data.tags
    if IDENTITY_TAG not in tags:
        return {}
    kept = {k: tags[k] for k in (IDENTITY_TAG, CHANGED_SINCE_TAG, CHANGES_TAG) if k in tags}
    return kept | {IDENTITY_JSON: mlflow.artifacts.load_text(f"runs:/{run_id}/{IDENTITY_JSON}")}


def read_version(model_uri: str) -> KnownVersion:
    """``models:/<name>/<version>`` read back (a skipped fine-tune's summary, rebuilt from its run)."""
    name, _, version = model_uri.removeprefix("models:/").rpartition("/")
    client = MlflowClient()
    return _known(client, client.get_model_version(name, version))


def _version_by_alias(client: MlflowClient, name: str, alias: str) -> KnownVersion | None:
    try:
        return _known(client, client.get_model_version_by_alias(name, alias))
    except MlflowException as err:  # no such model, or no such alias: nothing registered to compare with
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def _versions_with_key(client: MlflowClient, name: str, key: str) -> list[KnownVersion]:
    """The versions of ``name`` tagged with identity ``key``, oldest first."""
    quoted = name.replace("'", "\\'")
    found = client.search_model_versions(f"name = '{quoted}' and tags.{IDENTITY_TAG} = '{key}'")
    return [_known(client, mv) for mv in sorted(found, key=lambda mv: int(mv.version))]


def _known(client: MlflowClient, mv) -> KnownVersion:
    aliases = getattr(mv, "aliases", None) or []
    if not aliases:  # search results carry no aliases on every store: ask the registered model
        registered = client.get_registered_model(mv.name).aliases
        aliases = [a for a, v in registered.items() if str(v) == str(mv.version)]
    metrics = {}
    for key, value in mv.tags.items():
        if key.startswith("metric."):
            try:
                metrics[key.removeprefix("metric.")] = float(value)
            except ValueError:  # "none": a metric with no value
                pass
    return KnownVersion(mv.name, str(mv.version), sorted(aliases), metrics, _identity(mv.tags.get(IDENTITY_JSON)),
                        mv.run_id or None)


def _identity(text: str | None) -> FinetuneIdentity | None:
    try:
        return FinetuneIdentity.from_json(json.loads(text)) if text else None
    except ValueError:  # written by another bertflow: as good as none
        return None


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TAG_VAL_LENGTH else text[:MAX_TAG_VAL_LENGTH - 3] + "..."
