"""The word embedding's gradient kept in one buffer across steps, its batch's rows zeroed instead of all of it.

Why: the word embedding is the largest matrix of a small BERT (30522 x 384 floats, 47 MB, half of
all-MiniLM-L6-v2's weights) and a batch touches a few hundred of its rows. PyTorch's dense embedding backward
allocates a fresh (V, H) gradient every step and zero-fills it; optimizer.zero_grad(set_to_none=True) frees it
again. Above glibc's largest mmap threshold (32 MB) every such allocation is a fresh mapping, so each step also
pays a page fault per 4 KB page of it, which in a virtual machine costs far more than the fill itself
(docs/benchmarks.md, "The word embedding's gradient"). Here the lookup's backward adds the batch's rows into a
buffer kept for the whole fit, and the rows of the previous step are zeroed before the next step's first
backward. The gradient the optimizer reads is the same (V, H) tensor with the same values, so clipping and
dense AdamW, which still update every row, do exactly what they did.

Single-process training only: DDP all-reduces gradients from autograd's accumulation hooks, which this bypasses
(``fit`` keeps the plain embedding when ``world_size > 1``), as does ``embedding_update: sparse``.
"""

from __future__ import annotations

import torch
from torch import nn


class KeptWordGradient:
    """Routes ``embedding``'s lookups through ``_Lookup`` so their gradient lands in ``self.buffer``.

    A step starts when ``weight.grad`` is None (``zero_grad(set_to_none=True)`` ran): the rows the previous step
    touched are zeroed and the buffer becomes ``weight.grad``. Every backward of the step (accumulation
    micro-batches) adds into it. ``remove()`` restores the module's own lookup."""

    def __init__(self, embedding: nn.Embedding):
        if embedding.sparse:
            raise ValueError("a sparse embedding has its own gradient layout: keep the dense lookup")
        self.embedding = embedding
        self.buffer = torch.zeros_like(embedding.weight)  # (V, H), the only one ever allocated
        self.touched: list[torch.Tensor] = []  # (n,) row ids added into the buffer since it was last zeroed
        embedding.forward = self.lookup  # an instance attribute: the class's forward is untouched

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, H), as nn.Embedding's forward."""
        return _Lookup.apply(ids, self.embedding.weight, self)

    def add(self, ids: torch.Tensor, grad: torch.Tensor) -> None:
        """ids (B, T), grad (B, T, H): each token's gradient added to its row; [PAD]'s row gets none."""
        weight = self.embedding.weight
        if weight.grad is None:  # a new optimizer step: last step's rows back to zero
            if self.touched:
                self.buffer.index_fill_(0, torch.cat(self.touched).unique(), 0.0)
            self.touched = []
            weight.grad = self.buffer
        rows, grad = ids.reshape(-1), grad.reshape(-1, grad.shape[-1]).to(weight.grad.dtype)
        if self.embedding.padding_idx is not None:
            keep = rows != self.embedding.padding_idx
            rows, grad = rows[keep], grad[keep]
        weight.grad.index_add_(0, rows, grad)
        if weight.grad is self.buffer:
            self.touched.append(rows)

    def remove(self) -> None:
        del self.embedding.forward


class _Lookup(torch.autograd.Function):
    """F.embedding forward; backward adds the tokens' gradients to the kept buffer and returns none for the
    weight, so autograd neither builds the dense gradient nor accumulates one."""

    @staticmethod
    def forward(ctx, ids, weight, kept):
        ctx.save_for_backward(ids)
        ctx.kept = kept
        return nn.functional.embedding(ids, weight, kept.embedding.padding_idx)

    @staticmethod
    def backward(ctx, grad):
        (ids,) = ctx.saved_tensors
        ctx.kept.add(ids, grad)
        return None, None, None


def keep_word_gradient(model: nn.Module, world_size: int, embedding_update: str) -> KeptWordGradient | None:
    """A ``KeptWordGradient`` on the model's word embedding when this fit can take it: one process, the dense
    update, a trainable embedding. None otherwise (the plain lookup stays)."""
    words = model.bert.embeddings.word_embeddings
    if world_size > 1 or embedding_update != "dense" or not words.weight.requires_grad:
        return None
    return KeptWordGradient(words)
