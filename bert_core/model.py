"""The BERT encoder (Devlin et al., 2019, Figure 1 and Section 3) in plain PyTorch.

Read bottom-up: embeddings -> self-attention -> feed-forward -> layer -> encoder stack -> pooler ->
``BertEncoder``. Post-LN Transformer layers with GELU, as in the paper and in Hugging Face's
``modeling_bert.py``; attention runs through ``F.scaled_dot_product_attention`` so PyTorch picks its
fastest kernel, except in CPU training with dropout, where SDPA's math path is written out (``attention``) to
draw ``bert_core/dropout.py``'s cheaper mask. Query, key and value are one fused ``Linear(H, 3H)`` (one matmul instead of three);
``checkpoint.py`` concatenates the three Hugging Face matrices into it on load.

Shapes: B batch, T tokens, H hidden size, nh heads, hd = H / nh.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from bert_core.config import BertConfig
from bert_core.dropout import Dropout, dropout, mask_source

# Attention maps (B * nh * T * T elements per layer) above which CPU training recomputes them in backward rather
# than keeping them: 8M is B=32 x 12 heads at T=148; SST-2, GLUE or CoNLL batches stay below, SQuAD's go above.
RECOMPUTE_ATTENTION_ABOVE = 8 * 2**20


class Embeddings(nn.Module):
    """Token + segment + absolute position embeddings, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, H)."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,) broadcast over B
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids) + self.position_embeddings(positions)
        return self.dropout(self.LayerNorm(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention with a padding mask, followed by the output projection."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)
        self.attn_dropout = config.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cls_only: bool = False) -> torch.Tensor:
        """x (B, T, H), mask (B, 1, 1, T) bool, True = attend -> (B, T, H); (B, 1, H) with ``cls_only``: the
        [CLS] query alone against every key and value."""
        B, T, H = x.shape
        if cls_only and isinstance(self.qkv, nn.Linear):
            # The fused weight's rows are [query; key; value]: project the [CLS] position to a query, every position
            # to keys and values, and skip the other T - 1 queries.
            w, b = self.qkv.weight, self.qkv.bias
            q = F.linear(x[:, :1], w[:H], b[:H])  # (B, 1, H)
            k, v = F.linear(x, w[H:], b[H:]).split(H, dim=-1)  # 2 x (B, T, H)
        else:
            q, k, v = self.qkv(x).split(H, dim=-1)  # 3 x (B, T, H)
            if cls_only:  # an int8 projection (bert_core.serving_precision) has no float weight to slice
                q = q[:, :1]  # (B, 1, H)
        Tq = q.shape[1]
        q = q.view(B, Tq, self.num_heads, H // self.num_heads).transpose(1, 2)  # (B, nh, Tq, hd)
        k, v = (t.view(B, T, self.num_heads, H // self.num_heads).transpose(1, 2) for t in (k, v))  # (B, nh, T, hd)
        dropout_p = self.attn_dropout if self.training else 0.0
        # With dropout, CPU SDPA takes its math path anyway (GPU kernels fuse dropout); written out here, it draws
        # the cheaper mask (bert_core/dropout.py) where this machine's rule picks it.
        attend = attention if dropout_p and x.device.type == "cpu" and mask_source() == "lanes" else \
            F.scaled_dot_product_attention
        if dropout_p and x.device.type == "cpu" and torch.is_grad_enabled() \
                and B * self.num_heads * Tq * T > RECOMPUTE_ATTENTION_ABOVE:
            # The math path keeps the (B, nh, T, T) scores, probabilities and mask of every layer for backward:
            # 4.4 GB of a 6.4 GB peak at B=32, T=384 (SQuAD). Recompute them in backward instead, the same dropout
            # mask included (RNG state replayed).
            y = checkpoint(attend, q, k, v, attn_mask=mask, dropout_p=dropout_p, use_reentrant=False)
        else:
            y = attend(q, k, v, attn_mask=mask, dropout_p=dropout_p)  # (B, nh, Tq, hd)
        y = y.transpose(1, 2).reshape(B, Tq, H)  # (B, Tq, H)
        return self.out(y)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None,
              dropout_p: float) -> torch.Tensor:
    """SDPA's math path: softmax(q k^T / sqrt(hd), masked) -> dropout -> @ v. q (B, nh, Tq, hd), k and v
    (B, nh, T, hd), attn_mask (B, 1, 1, T) bool, True = attend -> (B, nh, Tq, hd)."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, nh, Tq, T)
    if attn_mask is not None:
        scores.masked_fill_(~attn_mask, float("-inf"))  # in place: the matmul's backward needs q and k, not this
    return dropout(scores.softmax(-1), dropout_p) @ v


class FeedForward(nn.Module):
    """Position-wise Linear(H, 4H) -> GELU -> Linear(4H, H)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.intermediate_size)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size)
        # "gelu" in BERT checkpoints is the exact erf form; the *_tanh / gelu_new names are the approximation.
        self.approximate = "none" if config.hidden_act == "gelu" else "tanh"
        self.relu = config.hidden_act == "relu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, H) -> (B, T, H)."""
        h = self.up(x)  # (B, T, 4H)
        h = F.relu(h) if self.relu else F.gelu(h, approximate=self.approximate)
        return self.down(h)


class Layer(nn.Module):
    """One post-LN Transformer layer: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = SelfAttention(config)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn = FeedForward(config)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cls_only: bool = False) -> torch.Tensor:
        """(B, T, H) -> (B, T, H); (B, 1, H), the [CLS] position alone, with ``cls_only``."""
        residual = x[:, :1] if cls_only else x
        x = self.attention_norm(residual + self.dropout(self.attention(x, mask, cls_only)))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class Pooler(nn.Module):
    """The [CLS] vector through dense + tanh, as pre-trained with next-sentence prediction."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, sequence_output: torch.Tensor) -> torch.Tensor:
        """(B, T, H) -> (B, H)."""
        return torch.tanh(self.dense(sequence_output[:, 0]))


class BertEncoder(nn.Module):
    """Embeddings, N layers and the pooler. Returns ``(sequence_output (B, T, H), pooled_output (B, H))``.

    With ``cls_only=True`` the last layer computes the [CLS] position alone (its query, feed-forward and norms;
    keys and values still come from every token), so ``sequence_output`` is (B, 1, H) and ``pooled_output`` is
    the same as without it: for heads that read [CLS] only, one layer's work in six saved on MiniLM-L6.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))
        self.pooler = Pooler(config)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        # BERT's truncated-normal-like init; only matters for random-weight tests and new heads.
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cls_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids, token_type_ids, attention_mask: (B, T); mask 1 = real token, 0 = padding."""
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {input_ids.shape[1]} exceeds max_position_embeddings "
                f"{self.config.max_position_embeddings}; truncate inputs (max_seq_length)"
            )
        mask = None
        # Skipping an all-ones mask lets SDPA pick a faster kernel; under torch.compile the data-dependent test
        # would break the graph, so a compiled model always takes the mask.
        if attention_mask is not None and (torch.compiler.is_compiling() or not bool(attention_mask.all())):
            mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T), broadcast over heads and queries
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, H)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x, mask, cls_only=cls_only and i == last)
        return x, self.pooler(x)
