"""A registered model (or a run's) as a fine-tune's `pretrained`, resolved through a temporary sqlite MLflow store:
every URI form reaches the same fine-tuned folder, the identity's name follows the version an alias points at, a
URI that names nothing or a model bertflow did not fine-tune fails naming what is wrong, and the lineage tags of a
run reach the version it registered."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from bert_core import BertConfig, BertEncoder, BertTokenizer, get_family, save_finetuned
from tests.tiny_models import TINY, VOCAB
from tests.tracking.test_pyfunc import EXAMPLE_ROWS
from tracking.packaging import log_model
from tracking.parent_model import copy_lineage_to_version, resolve_pretrained_source
from tracking.pinning import pin_model
from tracking.registry import register_version
from tracking.store import configure_tracking, experiment_for

FAMILY, LABELS = "single_classification", ["neg", "pos"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sqlite tracking + registry store and BERTFLOW_HOME (where parents are downloaded) for this module."""
    root = tmp_path_factory.mktemp("parents")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("BERTFLOW_HOME", str(root / "home"))
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        yield {"root": root, "experiment": experiment_for("parents", configure_tracking())}
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


def register_tiny(store, name: str, seed: int) -> tuple[str, str, str]:
    """A tiny fine-tuned model saved, logged and registered (policy always: it takes `champion`);
    (version, run id, the saved folder)."""
    (store["root"] / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    torch.manual_seed(seed)
    model = get_family(FAMILY).build_model(BertEncoder(BertConfig(**TINY)), LABELS).eval()
    folder = save_finetuned(model, BertTokenizer.from_vocab(store["root"] / "vocab.txt"),
                            store["root"] / f"{name}-{seed}",
                            {"family": FAMILY, "label_names": LABELS, "task": "toy", "max_seq_length": 32})
    with mlflow.start_run(experiment_id=store["experiment"]) as run:
        info = log_model(folder, FAMILY, EXAMPLE_ROWS[FAMILY])
    version = register_version(info.model_uri, name, run.info.run_id, {"acc": 0.5}, "acc", "fp", policy="always")
    return version.version, run.info.run_id, str(folder)


@pytest.fixture(scope="module")
def toy(store):
    version, run_id, folder = register_tiny(store, "bert-toy", seed=0)
    return {"version": version, "run_id": run_id, "folder": folder}


def test_every_uri_form_reaches_the_same_fine_tuned_folder(toy):
    model_id = pin_model("models:/bert-toy/1").model_id
    assert model_id and model_id.startswith("m-")
    expected = load_file(f"{toy['folder']}/model.safetensors")
    for uri in ("models:/bert-toy@champion", "models:/bert-toy/1", f"runs:/{toy['run_id']}/model",
                f"models:/{model_id}"):
        source = resolve_pretrained_source(uri)
        parent = source.parent
        assert source.given == uri and source.path == parent.folder
        assert (parent.run_id, parent.model_id, parent.task, parent.family, parent.label_names) == (
            toy["run_id"], model_id, "toy", FAMILY, LABELS), uri
        got = load_file(f"{source.path}/model.safetensors")
        assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
    pinned = resolve_pretrained_source("models:/bert-toy@champion")
    assert pinned.name == f"models:/bert-toy@champion -> models:/bert-toy/1 (model {model_id})"
    assert pinned.tags() == {"parent_model": "models:/bert-toy/1", "parent_run_id": toy["run_id"],
                             "parent_task": "toy", "parent_model_id": model_id,
                             "parent_requested": "models:/bert-toy@champion"}
    assert resolve_pretrained_source(f"models:/{model_id}").parent.uri == f"models:/{model_id}"


def test_a_moved_alias_gives_another_name_and_a_version_keeps_its_own(store):
    register_tiny(store, "bert-moving", seed=1)
    first = resolve_pretrained_source("models:/bert-moving@champion")
    register_tiny(store, "bert-moving", seed=2)  # policy always: v2 takes the alias
    moved = resolve_pretrained_source("models:/bert-moving@champion")
    assert first.parent.version == "1" and moved.parent.version == "2"
    assert first.name != moved.name and "models:/bert-moving/2" in moved.name
    assert moved.parent.model_id != first.parent.model_id and moved.path != first.path
    assert resolve_pretrained_source("models:/bert-moving/1").path == first.path  # downloaded once, kept


def test_checkpoints_pass_through_unchanged(tmp_path):
    assert resolve_pretrained_source(None).parent is None
    assert resolve_pretrained_source(None).name.startswith("all-MiniLM-L6-v2")
    source = resolve_pretrained_source(str(tmp_path))
    assert (source.path, source.name, source.tags()) == (str(tmp_path), str(tmp_path.resolve()), {})


def test_a_uri_that_names_nothing_fails_naming_it_and_what_the_registry_holds(toy):
    with pytest.raises(ValueError, match=r"models:/bert-nope@champion is not in the model registry .*bert-toy"):
        resolve_pretrained_source("models:/bert-nope@champion")
    with pytest.raises(ValueError, match=r"models:/bert-toy/9 is not in the model registry"):
        resolve_pretrained_source("models:/bert-toy/9")
    with pytest.raises(ValueError, match=r"run 0123abc is not in the tracking store"):
        resolve_pretrained_source("runs:/0123abc/model")
    with pytest.raises(ValueError, match=r"no logged model m-0123abc"):
        resolve_pretrained_source("models:/m-0123abc")


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


def test_a_model_bertflow_did_not_fine_tune_is_refused(store):
    with mlflow.start_run(experiment_id=store["experiment"]) as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=["mlflow"],
                                       input_example=pd.DataFrame({"x": [1.0]}))
    register_version(info.model_uri, "bert-echo", run.info.run_id, {"acc": 0.5}, "acc", "fp")
    with pytest.raises(ValueError, match=r"models:/bert-echo@champion .* is not a model bertflow fine-tuned: it has "
                                         r"no model_dir artifact"):
        resolve_pretrained_source("models:/bert-echo@champion")


def test_the_runs_lineage_tags_reach_its_version(store, toy):
    source = resolve_pretrained_source("models:/bert-toy@champion")
    with mlflow.start_run(experiment_id=store["experiment"]) as run:
        mlflow.set_tags({**source.tags(), "parent_head": "kept", "task": "child"})
        info = mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=["mlflow"],
                                       input_example=pd.DataFrame({"x": [1.0]}))
    version = register_version(info.model_uri, "bert-child", run.info.run_id, {"acc": 0.5}, "acc", "fp").version
    copied = copy_lineage_to_version(run.info.run_id, "bert-child", version)
    tags = MlflowClient().get_model_version("bert-child", version).tags
    assert copied == {**source.tags(), "parent_head": "kept"}
    assert {k: tags[k] for k in copied} == copied and tags["parent_model"] == "models:/bert-toy/1"
