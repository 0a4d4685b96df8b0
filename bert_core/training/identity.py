"""What makes a fine-tune the one it is: ``FinetuneIdentity``, built once and asked everywhere "is this the
same fine-tune?" (a run folder taken over, a checkpoint resumed, a new model against the champion's).

    identity = FinetuneIdentity.of(spec, cfg, pretrained, data_root=data_root(data_dir), drop_bad_rows=False)
    ...                                              # a run folder is matched on this part: before_data().key()
    identity = identity.with_data(data.fingerprint, code_version)
    earlier.differences(identity)                    # ["the data changed (3f2a9c01b7d4 -> 8e1d0c55aa29)"]
    FinetuneIdentity.from_json(identity.to_json())   # saved in checkpoints' state.json and in run.json

Two parts, because they are known at different times:
- asked for, known before any data is read: the task spec's content, the pretrained checkpoint, the recipe
  (``TrainConfig`` with the spec's defaults, less ``RESUME_INDIFFERENT``), the data root and
  ``drop_bad_rows``. A run folder is matched on these, so a flow run finds an unfinished folder to take over
  before it loads anything.
- found, known once the data is read: the data's fingerprint (its bytes and the spec's reading of them,
  ``drop_bad_rows`` included) and the code version. When these changed, checkpoints belong to another
  fine-tune: a taken-over folder sets them aside, ``fit`` refuses them.

Compared (``differences``): the data by its fingerprint when both sides know it (the same bytes in another
folder are the same data), else by data root and ``drop_bad_rows``; the code version only when both know it
(plain-Python runs do not record one). A field of the second part that is None is not known yet.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import NamedTuple

from bert_core.checkpoint import OFFLINE_DEFAULT
from bert_core.loading import ENV_DATA_DIR
from bert_core.spec import TaskSpec
from bert_core.training.config import TrainConfig

# TrainConfig fields that may change between an interrupted run and its resumption: not part of the identity.
RESUME_INDIFFERENT = {"checkpoint_every", "checkpoint_minutes", "keep_checkpoints", "log_every", "progress_bar",
                      "num_threads", "eval_batch_size"}
FOUND = ("data_fingerprint", "code_version")  # the fields known only once the data is read


class Change(NamedTuple):
    """One way two identities differ: ``name`` short (a recipe field's own name, ``data``, ``code``),
    ``what`` in words, the values as people read them."""

    name: str
    what: str
    before: str
    after: str

    def __str__(self) -> str:
        return f"{self.what} changed ({self.before} -> {self.after})"


@dataclasses.dataclass(frozen=True)
class FinetuneIdentity:
    task: str
    spec_sha256: str  # of the spec's content (not its path), 16 hex digits
    # A folder resolved to its absolute path, a hub id, the offline default's name, or a registered model (or a
    # run's) as the pipeline names it: the URI given, the version it resolved to and the logged model's id
    # (tracking/parent_model.py), so `models:/bert-snli@champion` moving to a new version is another fine-tune.
    pretrained: str
    recipe: dict  # TrainConfig with the spec's defaults, less RESUME_INDIFFERENT, as JSON types
    data_root: str | None  # resolved; None: no local root (the hub), or not known (fit given rows)
    drop_bad_rows: bool
    data_fingerprint: str | None = None
    code_version: str | None = None  # git commit (+dirty) or package version; None in plain-Python runs

    @classmethod
    def of(cls, spec: TaskSpec, cfg: TrainConfig, pretrained: str | Path | None = None, *, data_root: str | None = None,
           drop_bad_rows: bool = False, data_fingerprint: str | None = None,
           code_version: str | None = None) -> FinetuneIdentity:
        """``cfg`` with the spec's defaults filled in (as ``fit`` sees it); ``data_root`` resolved (``data_root()``)."""
        return cls(task=spec.name, spec_sha256=hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:16],
                   pretrained=resolve_pretrained(pretrained),
                   recipe=cfg.model_dump(mode="json", exclude=RESUME_INDIFFERENT), data_root=data_root,
                   drop_bad_rows=drop_bad_rows, data_fingerprint=data_fingerprint or None,
                   code_version=code_version or None)

    def with_data(self, data_fingerprint: str, code_version: str | None = None) -> FinetuneIdentity:
        """This identity completed with what the data and the code turned out to be."""
        return dataclasses.replace(self, data_fingerprint=data_fingerprint or None, code_version=code_version or None)

    def before_data(self) -> FinetuneIdentity:
        """The part known before any data is read (the found fields None): what a run folder is matched on."""
        return dataclasses.replace(self, **dict.fromkeys(FOUND))

    def key(self) -> str:
        """16 hex digits over every field, stable across processes and Python versions. Equal keys: no
        differences; ``differences`` is the judgement when one side knows less."""
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:16]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data) -> FinetuneIdentity:
        """The identity ``to_json`` wrote; ValueError for anything else (e.g. a record of an older bertflow)."""
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or data.keys() != names or not isinstance(data["recipe"], dict):
            raise ValueError(f"not a fine-tune identity: {str(data)[:200]}")
        return cls(**data)

    def changes(self, now: FinetuneIdentity) -> list[Change]:
        """How ``now`` differs from this (earlier) identity, in field order; [] when it is the same fine-tune."""
        recipe_fields = [*self.recipe, *(k for k in now.recipe if k not in self.recipe)]
        pairs = [("task", "the task", self.task, now.task),
                 ("spec", "the task spec", self.spec_sha256, now.spec_sha256),
                 ("pretrained", "the pretrained checkpoint", self.pretrained, now.pretrained),
                 *((k, k, self.recipe.get(k), now.recipe.get(k)) for k in recipe_fields)]
        if self.data_fingerprint and now.data_fingerprint:
            pairs.append(("data", "the data", self.data_fingerprint, now.data_fingerprint))
        else:
            pairs += [("data_root", "the data folder", self.data_root, now.data_root),
                      ("drop_bad_rows", "drop_bad_rows", self.drop_bad_rows, now.drop_bad_rows)]
        if self.code_version and now.code_version:
            pairs.append(("code", "the code", self.code_version, now.code_version))
        return [Change(name, what, _shown(a), _shown(b)) for name, what, a, b in pairs if a != b]

    def differences(self, now: FinetuneIdentity) -> list[str]:
        """``changes`` in people's words: ``["the data changed (3f2a9c01b7d4 -> 8e1d0c55aa29)", "learning_rate
        changed (3e-05 -> 5e-05)"]``."""
        return [str(c) for c in self.changes(now)]


def resolve_pretrained(pretrained: str | Path | None) -> str:
    """A folder as its absolute path (the same one from any working directory), a hub id (or a registered
    model's name, as the pipeline resolved it) as given, None as the offline default's name."""
    text = str(pretrained) if pretrained else OFFLINE_DEFAULT
    if Path(text).expanduser().is_dir():
        return str(Path(text).expanduser().resolve())
    return text


def data_root(data_dir: str | Path | None) -> str | None:
    """The data root a run reads local files from, resolved: ``data_dir``, else ``$BERTFLOW_DATA_DIR``, else
    None (the hub)."""
    root = data_dir or os.environ.get(ENV_DATA_DIR)
    return str(Path(root).expanduser().resolve()) if root else None


def _shown(value) -> str:
    """A value as people read it; a hash-like one (sha256 hex, a git commit with ``+dirty``) cut to 12 digits."""
    if not isinstance(value, str):
        return "none" if value is None else json.dumps(value)
    head, dirty, _ = value.partition("+dirty")
    if len(head) > 12 and all(c in "0123456789abcdef" for c in head):
        return head[:12] + dirty
    return value
