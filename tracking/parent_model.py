"""A fine-tune that starts from a registered model (or a run's): its `pretrained` resolved once when the flow run
starts, the model's fine-tuned folder brought here for bert_core to read, and the lineage recorded.

    source = resolve_pretrained_source("models:/bert-snli@champion")
    source.path    # ~/.bertflow/cache/parents/m-3f.../artifacts/model_dir: save_finetuned's folder
    source.name    # "models:/bert-snli@champion -> models:/bert-snli/3 (model m-3f...)": FinetuneIdentity's
    source.tags()  # {"parent_model": "models:/bert-snli/3", "parent_run_id": "9a1...", "parent_model_id": ...}

`pretrained` may be ``models:/<name>@<alias>``, ``models:/<name>/<version>``, ``runs:/<run id>/model`` or
``models:/<model id>`` (MLflow 3's logged model); ``tracking/pinning.py`` pins it (the one resolver that predict,
serve and score use too), so an alias that moves later changes neither this run nor its identity, and an alias
that moved since an earlier run makes it another fine-tune. The logged model is downloaded once to
``$BERTFLOW_HOME/cache/parents/<model id>`` (a logged model's files never change); bert_core loads the
fine-tuned folder it holds (the pyfunc's ``model_dir`` artifact, ``tracking/packaging.py``), never MLflow.
Anything else (a folder, a hub id, None) passes through unchanged.

Lineage: the run and its registered version carry ``parent_model`` (the pinned URI), ``parent_run_id``,
``parent_model_id``, ``parent_task`` and, when an alias was given, ``parent_requested``; the logged model adds
``parent_head`` (``kept`` / ``new``, from the new model's meta).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import mlflow
from mlflow.models import Model
from mlflow.tracking import MlflowClient

from bert_core.checkpoint import MODEL_URI_SCHEMES, is_finetuned, read_finetuned_meta
from bert_core.home import bertflow_home
from bert_core.training.identity import resolve_pretrained
from tracking.pinning import PinnedModel, pin_model

PARENT_TAGS = ("parent_model", "parent_run_id", "parent_model_id", "parent_task", "parent_requested", "parent_head")


@dataclasses.dataclass(frozen=True)
class ParentModel:
    """The fine-tuned model a fine-tune starts from, pinned and downloaded."""

    requested: str  # the URI as given, e.g. models:/bert-snli@champion
    uri: str  # pinned: models:/<name>/<version>, runs:/<run id>/<path> or models:/<model id>
    version: str | None  # the registered version; None for a run's model
    model_id: str | None  # the logged model (MLflow 3); None for a version registered from a run's files
    run_id: str | None  # the run that trained it
    task: str | None  # its meta's: the task it was fine-tuned for
    family: str
    label_names: list[str] | None
    folder: str  # its fine-tuned folder, here

    def describe(self) -> str:
        """How a fine-tune's identity names it: the URI given, the version it resolved to, the logged model."""
        name = self.requested if self.requested == self.uri else f"{self.requested} -> {self.uri}"
        return name + (f" (model {self.model_id})" if self.model_id and self.model_id not in self.uri else "")

    def tags(self) -> dict[str, str]:
        """The lineage tags of a run (and version) fine-tuned from it."""
        tags = {"parent_model": self.uri, "parent_run_id": self.run_id or "none", "parent_task": self.task or "none"}
        if self.model_id:
            tags["parent_model_id"] = self.model_id
        if self.requested != self.uri:
            tags["parent_requested"] = self.requested
        return tags


@dataclasses.dataclass(frozen=True)
class PretrainedSource:
    """A fine-tune's `pretrained`, resolved: what bert_core loads and how the fine-tune's identity names it."""

    given: str | None  # as the user gave it
    path: str | None  # a folder, a hub id, or None (the offline default): what bert_core's `fit` takes
    name: str  # FinetuneIdentity's `pretrained`
    parent: ParentModel | None = None  # a registered model or a run's: pinned, downloaded, its meta read

    def tags(self) -> dict[str, str]:
        return self.parent.tags() if self.parent else {}


def is_model_uri(pretrained: str | None) -> bool:
    return bool(pretrained) and str(pretrained).startswith(MODEL_URI_SCHEMES)


def resolve_pretrained_source(pretrained: str | None, client: MlflowClient | None = None) -> PretrainedSource:
    """``pretrained`` resolved (tracking configured first: ``tracking.store.configure_tracking``). A model URI
    that names nothing raises a ValueError naming it and what the registry holds; a model that is not a bertflow
    fine-tuned one raises a ValueError saying what it lacks."""
    if not is_model_uri(pretrained):
        return PretrainedSource(pretrained, pretrained, resolve_pretrained(pretrained))
    parent = resolve_parent(str(pretrained), client)
    return PretrainedSource(pretrained, parent.folder, parent.describe(), parent)


def resolve_parent(model_uri: str, client: MlflowClient | None = None) -> ParentModel:
    """A model URI pinned, its files downloaded (once) and its fine-tuned folder's meta read."""
    pinned = pin_model(model_uri, client)
    root = _downloaded(pinned)
    folder = _finetuned_folder(root, pinned)
    meta = read_finetuned_meta(folder)
    return ParentModel(requested=model_uri, uri=pinned.uri, version=pinned.version, model_id=pinned.model_id,
                       run_id=pinned.run_id, task=meta.get("task"), family=meta["family"],
                       label_names=meta.get("label_names"), folder=str(folder))


def _downloaded(pinned: PinnedModel) -> Path:
    """The logged model's files (its MLmodel at the top) under ``$BERTFLOW_HOME/cache/parents``, downloaded
    the first time; a download is renamed into place whole, so a concurrent one or a kill leaves no half."""
    key = pinned.model_id or "uri-" + hashlib.sha256(f"{mlflow.get_tracking_uri()}|{pinned.uri}".encode()).hexdigest()[:16]
    root = bertflow_home() / "cache" / "parents"
    target = root / key
    if (target / "MLmodel").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=root, prefix=f".{key}-"))
    try:
        source = f"models:/{pinned.model_id}" if pinned.model_id else pinned.uri
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(partial)))
        if local != partial:  # a run's model lands in a folder of its name
            local.rename(partial.with_name(partial.name + ".model"))
            shutil.rmtree(partial)
            partial = partial.with_name(partial.name + ".model")
        try:
            os.rename(partial, target)
        except OSError:
            if not (target / "MLmodel").is_file():  # not a concurrent download that finished first
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def _finetuned_folder(root: Path, pinned: PinnedModel) -> Path:
    """The ``save_finetuned`` folder a bertflow pyfunc holds as its ``model_dir`` artifact; ValueError for any
    other model (another flavour, another pyfunc, a folder without bertflow's meta)."""
    what = f"{pinned.requested} ({pinned.uri}{', run ' + pinned.run_id if pinned.run_id else ''})"
    if not (root / "MLmodel").is_file():
        raise ValueError(f"{what} has no MLmodel file; it is not a logged model")
    flavors = Model.load(str(root / "MLmodel")).flavors
    artifact = flavors.get("python_function", {}).get("artifacts", {}).get("model_dir", {}).get("path")
    folder = root / artifact if artifact else None
    if folder is None or not is_finetuned(folder):
        raise ValueError(f"{what} is not a model bertflow fine-tuned: it has "
                         f"{'no model_dir artifact' if folder is None else 'no bertflow meta in model_dir/config.json'}"
                         f" (flavours: {', '.join(sorted(flavors)) or 'none'}); start from a bertflow model "
                         "(`bertflow run` registers them as bert-<task>), a Hugging Face checkpoint folder or a hub id")
    return folder


# ---- lineage -------------------------------------------------------------------------------------------------
def copy_lineage_to_version(run_id: str, name: str, version: str) -> dict[str, str]:
    """The run's lineage tags (``PARENT_TAGS``) set on the version it registered too, so the registry alone tells
    which model each version started from; returns them ({} for a run that started from a checkpoint)."""
    client = MlflowClient()
    tags = {k: v for k, v in client.get_run(run_id).data.tags.items() if k in PARENT_TAGS}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return tags

