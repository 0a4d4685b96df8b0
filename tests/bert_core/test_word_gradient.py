"""The word embedding's kept gradient buffer (bert_core/training/word_gradient.py): the same gradient and the same
AdamW updates as PyTorch's dense embedding backward, and fit uses it."""

import pytest
import torch

from bert_core import get_family, load_pretrained
from bert_core.training.optim import build_optimizer, clipped_step
from bert_core.training.word_gradient import KeptWordGradient, keep_word_gradient

# Three steps of two accumulation micro-batches; 0 is [PAD] (no gradient); 7 repeats; step 2 touches rows step 1
# did not, so rows left over from step 1 must be zeroed.
STEPS = [
    [torch.tensor([[2, 7, 9, 7, 3], [2, 11, 5, 3, 0]]), torch.tensor([[2, 13, 3, 0, 0], [2, 7, 7, 7, 3]])],
    [torch.tensor([[2, 21, 22, 3, 0], [2, 23, 3, 0, 0]]), torch.tensor([[2, 24, 25, 26, 3], [2, 9, 3, 0, 0]])],
    [torch.tensor([[2, 7, 30, 3, 0], [2, 31, 3, 0, 0]]), torch.tensor([[2, 5, 3, 0, 0], [2, 32, 33, 3, 0]])],
]


def train(tiny_no_dropout, kept: bool):
    """(word-embedding gradient of every step, every weight after the three steps)."""
    torch.manual_seed(0)
    encoder, _ = load_pretrained(tiny_no_dropout)
    model = get_family("single_classification").build_model(encoder, ["neg", "pos"]).train()
    opt = build_optimizer(model, 1e-2, 0.1)
    words = model.bert.embeddings.word_embeddings
    if kept:
        KeptWordGradient(words)
    grads = []
    for micro in STEPS:
        for ids in micro:
            out = model(ids, attention_mask=(ids != 0).long(), labels=torch.tensor([0, 1]))
            (out.loss / len(micro)).backward()
        grads.append(words.weight.grad.clone())
        clipped_step(opt, model, 1.0)
        opt.zero_grad(set_to_none=True)
    return grads, [p.detach().clone() for p in model.parameters()]


def test_kept_gradient_is_the_dense_gradient_and_the_updates_are_the_same(tiny_no_dropout):
    dense_grads, dense_weights = train(tiny_no_dropout, kept=False)
    kept_grads, kept_weights = train(tiny_no_dropout, kept=True)
    for dense, kept in zip(dense_grads, kept_grads):
        assert torch.allclose(dense, kept, atol=1e-7)
        assert dense[0].abs().sum() == 0 and kept[0].abs().sum() == 0  # [PAD]'s row
    assert kept_grads[1][13].abs().sum() == 0 and dense_grads[0][13].abs().sum() > 0  # step 1's row zeroed
    # AdamW divides by sqrt(v): a gradient component near 0 turns a 1e-9 rounding gap (the sums' order) into
    # ~1e-6 of weight after three steps of lr 1e-2; a missed row or a stale one would be off by ~1e-2.
    for dense, kept in zip(dense_weights, kept_weights):
        assert torch.allclose(dense, kept, atol=2e-5)


def test_the_buffer_is_the_gradient_and_remove_restores_the_lookup(tiny_no_dropout):
    encoder, _ = load_pretrained(tiny_no_dropout)
    words = encoder.embeddings.word_embeddings
    kept = KeptWordGradient(words)
    ids = STEPS[0][0]
    words(ids).sum().backward()
    assert words.weight.grad is kept.buffer  # no other (V, H) tensor was made
    kept.remove()
    words.weight.grad = None
    words(ids).sum().backward()
    assert words.weight.grad is not kept.buffer


@pytest.mark.parametrize("world_size,update,kept", [(1, "dense", True), (2, "dense", False), (1, "sparse", False)])
def test_fit_keeps_the_gradient_only_where_it_can(tiny_no_dropout, world_size, update, kept):
    encoder, _ = load_pretrained(tiny_no_dropout)
    model = get_family("single_classification").build_model(encoder, ["neg", "pos"])
    assert (keep_word_gradient(model, world_size, update) is not None) == kept


def test_fit_uses_the_kept_gradient(tmp_path, tiny, monkeypatch):
    """fit routes the word embedding's gradient through the buffer (this fails if the recipe stops keeping it),
    and takes the plain lookup back afterwards."""
    from tests.toy_task import fit_toy

    calls = []
    add = KeptWordGradient.add
    monkeypatch.setattr(KeptWordGradient, "add", lambda self, ids, grad: calls.append(1) or add(self, ids, grad))
    result = fit_toy(tmp_path, tiny, "kept", epochs=1)
    assert calls and result.final_step > 0
