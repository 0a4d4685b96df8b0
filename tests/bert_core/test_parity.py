"""Our encoder equals transformers.BertModel on the same weights, loaded through the production loader."""

from __future__ import annotations

import pytest
import torch

from bert_core import load_pretrained
from bert_core.checkpoint import resolve_source
from tests.tiny_models import write_tiny_checkpoint

transformers = pytest.importorskip("transformers")

SINGLES = ["The movie was great!", "Café au lait, s'il vous plaît.", "a"]
PAIRS = [
    ("A man is playing a guitar.", "Someone plays an instrument on a stage in front of a crowd."),
    ("Short.", "Also short, but a little longer than the first one."),
    ("What is the capital of France?", "Paris."),
]


def _batch(tokenizer, texts, pairs=None):
    encs = tokenizer.encode_batch(texts, pairs)
    T = max(len(e) for e in encs)
    ids = torch.zeros(len(encs), T, dtype=torch.long)
    types = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(encs):
        ids[i, : len(e)] = torch.tensor(e.input_ids)
        types[i, : len(e)] = torch.tensor(e.token_type_ids)
        mask[i, : len(e)] = 1
    return ids, types, mask


def _compare(folder, ours, tokenizer):
    theirs = transformers.BertModel.from_pretrained(str(folder), attn_implementation="eager").eval()
    for batch in (_batch(tokenizer, SINGLES), _batch(tokenizer, *zip(*PAIRS))):
        ids, types, mask = batch
        assert (mask == 0).any(), "the batch should contain padding"
        with torch.no_grad():
            seq, pooled = ours(ids, types, mask)
            ref = theirs(input_ids=ids, token_type_ids=types, attention_mask=mask)
        real = mask.bool()
        # Padding positions carry no meaning (and differ by masking convention); compare real tokens.
        assert (seq - ref.last_hidden_state)[real].abs().max().item() < 1e-4
        assert (pooled - ref.pooler_output).abs().max().item() < 1e-4


def test_parity_on_packaged_minilm():
    ours, tokenizer = load_pretrained(None)
    _compare(resolve_source(None), ours, tokenizer)


def test_parity_on_tiny_random_bert(tmp_path):
    folder = write_tiny_checkpoint(tmp_path / "tiny")
    ours, tokenizer = load_pretrained(folder)
    _compare(folder, ours, tokenizer)


def test_encoder_returns_sequence_and_pooled(tmp_path):
    ours, tokenizer = load_pretrained(write_tiny_checkpoint(tmp_path / "tiny"))
    ids, types, mask = _batch(tokenizer, SINGLES)
    seq, pooled = ours(ids, types, mask)
    assert seq.shape == (3, ids.shape[1], 32)
    assert pooled.shape == (3, 32)
