"""A fine-tune started from a model bertflow fine-tuned (a parent), on a tiny random BERT: the model `fit` trains
from step 0 holds the parent's encoder; the parent's head is kept when the labels and family are the same, and a
new one is built otherwise; the tokenizer comes from the parent; positions must fit; the identity names what the
pipeline resolved. The step-0 model is caught where `fit` gets it (`recipe.starting_model`), before any step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bert_core.checkpoint import read_finetuned_meta, resolve_source, save_finetuned
from bert_core.families import get_family
from bert_core.training import TrainConfig, fit, recipe
from bert_core.training.starting_model import head_fits, starting_model
from bert_core.training.state import list_checkpoints
from tests.tiny_models import write_tiny_checkpoint
from tests.toy_task import SPEC, toy_rows

pytest.importorskip("transformers")
CFG = dict(learning_rate=3e-3, batch_size=16, seed=7, precision="fp32", progress_bar=False, checkpoint_every=100)


def renamed(rows: list[dict], names: dict[str, str]) -> list[dict]:
    return [{**r, "label": names[r["label"]]} for r in rows]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("base") / "ckpt", seed=0)


@pytest.fixture(scope="module")
def parent(tmp_path_factory, base) -> Path:
    """A tiny model fine-tuned on the toy sentiment task (labels neg, pos): its best folder."""
    out = tmp_path_factory.mktemp("parent")
    result = fit(SPEC, TrainConfig(epochs=2, **CFG), out / "run", toy_rows(96, 1), toy_rows(48, 2), ["neg", "pos"],
                 pretrained=base, data_fingerprint="toy-v1", cache_dir=out / "cache")
    return result.model_dir


@pytest.fixture
def step0(monkeypatch) -> dict[str, torch.Tensor]:
    """Filled, when `fit` runs, with the state dict of the model it starts training from (before step 1)."""
    seen: dict[str, torch.Tensor] = {}

    def spy(family, label_names, pretrained):
        start = starting_model(family, label_names, pretrained)
        seen.update({k: v.detach().clone() for k, v in start.model.state_dict().items()})
        return start

    monkeypatch.setattr(recipe, "starting_model", spy)
    return seen


def child(tmp_path, parent, spec=SPEC, labels=("neg", "pos"), names=None, pretrained_name=None, **overrides):
    """One optimizer step of a fine-tune started from `parent`; rows relabelled by `names`."""
    train, dev = toy_rows(32, 3), toy_rows(16, 4)
    if names:
        train, dev = renamed(train, names), renamed(dev, names)
    return fit(spec, TrainConfig(**{**CFG, "max_steps": 1, **overrides}), tmp_path / "child", train, dev, list(labels),
               pretrained=parent, data_fingerprint="toy-v2", cache_dir=tmp_path / "cache",
               pretrained_name=pretrained_name)


def encoder(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith("bert.")}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_parents_encoder_moved_away_from_the_base_checkpoint(parent, base):
    """Guards the tests below: a child that started from the base checkpoint would not pass them."""
    base_model = starting_model(get_family("single_classification"), ["neg", "pos"], base).model
    assert not same(encoder(base_model.state_dict()), encoder(load_file(str(parent / "model.safetensors"))))


def test_equal_labels_keep_the_parents_encoder_and_head(tmp_path, parent, step0):
    result = child(tmp_path, parent)
    assert same(step0, load_file(str(parent / "model.safetensors")))  # encoder and head, at step 0
    meta = read_finetuned_meta(result.model_dir)
    assert meta["parent"] == {"task": "toy_sentiment", "family": "single_classification",
                              "label_names": ["neg", "pos"], "head": "kept"}
    assert (result.model_dir / "tokenizer.json").read_bytes() == (parent / "tokenizer.json").read_bytes()


@pytest.mark.parametrize("labels, names", [
    (("negative", "positive"), {"neg": "negative", "pos": "positive"}),  # same shape, other labels
    (("neg", "neutral", "pos"), None),  # another label set: another shape
    (("pos", "neg"), None),  # the same names in another order: the head's rows would mean the other label
])
def test_other_labels_get_a_new_head_on_the_parents_encoder(tmp_path, parent, step0, labels, names):
    spec = SPEC.model_copy(update={"labels": list(labels)})
    result = child(tmp_path, parent, spec, labels, names)
    theirs = load_file(str(parent / "model.safetensors"))
    assert same(encoder(step0), encoder(theirs))
    assert step0["classifier.weight"].shape == (len(labels), 32)
    assert not torch.equal(step0["classifier.weight"][:2], theirs["classifier.weight"])  # fresh, not copied
    assert torch.all(step0["classifier.bias"] == 0)  # as the head initialises it
    assert read_finetuned_meta(result.model_dir)["parent"]["head"] == "new"


def test_another_family_gets_a_new_head_on_the_parents_encoder(tmp_path, parent, step0):
    spec = SPEC.model_copy(update={"family": "pair_regression", "labels": None, "metrics": ["pearson"],
                                   "primary_metric": "pearson"})
    rows = [{"text_a": r["text_a"], "text_b": "the film", "label": float(r["label"] == "pos") + 0.1 * i,
             "_source": r["_source"]} for i, r in enumerate(toy_rows(32, 3))]
    fit(spec, TrainConfig(**{**CFG, "max_steps": 1}), tmp_path / "child", rows, rows, None, pretrained=parent,
        data_fingerprint="toy-reg", cache_dir=tmp_path / "cache")
    assert same(encoder(step0), encoder(load_file(str(parent / "model.safetensors"))))
    assert step0["classifier.weight"].shape == (1, 32)


def test_head_fits_only_the_same_family_and_label_list():
    meta = {"family": "single_classification", "label_names": ["neg", "pos"]}
    assert head_fits(meta, "single_classification", ["neg", "pos"])
    assert not head_fits(meta, "single_classification", ["pos", "neg"])
    assert not head_fits(meta, "pair_classification", ["neg", "pos"])
    assert head_fits({"family": "pair_regression", "label_names": None}, "pair_regression", None)


def test_a_parent_with_too_few_positions_is_refused_before_training(tmp_path, parent):
    spec = SPEC.model_copy(update={"max_seq_length": 256})  # the tiny model has 128 positions
    with pytest.raises(ValueError, match=r"max_seq_length 256 is longer than the 128 positions"):
        child(tmp_path, parent, spec)
    assert not list_checkpoints(tmp_path / "child" / "checkpoints")


def test_a_folder_whose_meta_names_no_family_is_not_a_bertflow_model(tmp_path, parent):
    folder = tmp_path / "odd"
    folder.mkdir()
    for name in ("model.safetensors", "tokenizer.json"):
        (folder / name).write_bytes((parent / name).read_bytes())
    config = json.loads((parent / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "bertflow": {"task": "x"}}))
    with pytest.raises(ValueError, match="not a bertflow model"):
        child(tmp_path, folder)


def test_a_model_uri_is_for_the_pipeline_to_resolve():
    with pytest.raises(ValueError, match="the pipeline .* resolves it"):
        resolve_source("models:/bert-sst2@champion")


def test_the_identity_names_the_parent_as_resolved_and_a_moved_alias_is_another_fine_tune(tmp_path, parent):
    v3 = "models:/bert-toy@champion -> models:/bert-toy/3 (model m-3)"
    child(tmp_path, parent, pretrained_name=v3, max_steps=2, checkpoint_every=1)
    state = json.loads((list_checkpoints(tmp_path / "child" / "checkpoints")[-1] / "state.json").read_text())
    assert state["identity"]["pretrained"] == v3
    v4 = "models:/bert-toy@champion -> models:/bert-toy/4 (model m-4)"
    with pytest.raises(ValueError, match=r"differs in pretrained"):
        child(tmp_path, parent, pretrained_name=v4, max_steps=2, checkpoint_every=1)


def test_the_model_saved_by_save_finetuned_round_trips_as_a_parent(tmp_path, parent):
    """`starting_model` on a folder `save_finetuned` wrote from a loaded parent: the same weights again."""
    start = starting_model(get_family("single_classification"), ["neg", "pos"], parent)
    again = save_finetuned(start.model, start.tokenizer, tmp_path / "again", read_finetuned_meta(parent))
    assert same(load_file(str(again / "model.safetensors")), load_file(str(parent / "model.safetensors")))
