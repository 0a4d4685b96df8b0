"""The production loader: every checkpoint layout we promise, and loud failures for the rest."""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from bert_core import load_pretrained
from bert_core.checkpoint import convert_hf_state_dict, resolve_source
from bert_core.config import BertConfig
from tests.tiny_models import TINY, write_tiny_checkpoint

pytest.importorskip("transformers")

IDS = torch.tensor([[2, 10, 11, 12, 3, 13, 14, 3]])
TYPES = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1]])


def _out(encoder):
    with torch.no_grad():
        return encoder(IDS, TYPES, torch.ones_like(IDS))[0]


def test_bertmodel_and_bertforpretraining_give_the_same_encoder(tmp_path):
    plain, _ = load_pretrained(write_tiny_checkpoint(tmp_path / "plain", seed=5))
    # Same seed, so BertForPreTraining's encoder has other weights; check it loads and drops cls.* heads.
    pretraining, _ = load_pretrained(write_tiny_checkpoint(tmp_path / "mlm", seed=5, head="mlm"))
    assert _out(plain).shape == _out(pretraining).shape
    hf = load_file(str(tmp_path / "mlm" / "model.safetensors"))
    assert any(k.startswith("cls.") for k in hf) and all(k.startswith(("bert.", "cls.")) for k in hf)
    ref = torch.cat([hf["bert.encoder.layer.0.attention.self.query.weight"],
                     hf["bert.encoder.layer.0.attention.self.key.weight"],
                     hf["bert.encoder.layer.0.attention.self.value.weight"]])
    assert torch.equal(pretraining.layers[0].attention.qkv.weight, ref)


def test_tagging_checkpoint_without_pooler_loads_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match="no pooler"):
        load_pretrained(write_tiny_checkpoint(tmp_path / "tag", head="tagging"))


def test_pytorch_model_bin_loads_like_safetensors(tmp_path):
    a, _ = load_pretrained(write_tiny_checkpoint(tmp_path / "st", seed=1))
    b, _ = load_pretrained(write_tiny_checkpoint(tmp_path / "bin", seed=1, safetensors=False))
    assert (tmp_path / "bin" / "pytorch_model.bin").is_file()
    assert torch.equal(_out(a), _out(b))


def test_unknown_and_missing_keys_are_listed(tmp_path):
    folder = write_tiny_checkpoint(tmp_path / "bad")
    state = load_file(str(folder / "model.safetensors"))
    state["encoder.layer.0.attention.self.rotary.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match="rotary"):
        convert_hf_state_dict(state, BertConfig(**TINY))
    del state["encoder.layer.0.attention.self.rotary.weight"]
    del state["encoder.layer.1.output.dense.weight"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(KeyError, match=r"layers\.1\.ffn\.down\.weight"):
        load_pretrained(folder)


def test_shape_mismatch_names_the_weight(tmp_path):
    state = load_file(str(write_tiny_checkpoint(tmp_path / "m") / "model.safetensors"))
    with pytest.raises(ValueError, match="word_embeddings"):
        convert_hf_state_dict(state, BertConfig(**{**TINY, "vocab_size": TINY["vocab_size"] + 1}))


def test_offline_hub_id_says_how_to_pass_a_folder(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="local folder"):
        resolve_source("some-org/some-bert-that-is-not-cached")


def test_missing_local_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        resolve_source(str(tmp_path / "nope"))


def test_offline_default_is_the_packaged_minilm():
    encoder, tokenizer = load_pretrained(None)
    assert encoder.config.hidden_size == 384 and encoder.config.num_hidden_layers == 6
    assert tokenizer.vocab_size == 30522
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the packaged checkpoint has its pooler: no warning
        load_pretrained(resolve_source(None))
