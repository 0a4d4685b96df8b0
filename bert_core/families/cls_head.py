"""The ``[CLS]`` head of the families that answer once per text (pair): the pooled ``[CLS]`` vector (dense +
tanh, from pre-training) -> dropout -> linear, i.e. a two-layer MLP on ``[CLS]``. The family gives the number
of outputs and the loss: cross-entropy over label names (classification), mean squared error on one output
(regression). Given ``windows_per_row`` (``long_text.train_on: document``), the loss is the rows': each row's
window logits pooled as evaluation pools them (``text_encoding.pool_windows``), the family's loss on those."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from bert_core.dropout import Dropout
from bert_core.families.base import Output
from bert_core.families.text_encoding import pool_windows
from bert_core.model import BertEncoder


class SequenceClassifier(nn.Module):
    """BERT + ``[CLS]`` head. ``num_labels == 1`` means one score per row: logits (B,) instead of (B, 1)."""

    # The head reads [CLS] alone, so the encoder's last layer computes that position only: the same logits, a
    # training step 1.07x faster on MiniLM-L6. False runs the whole last layer (bench/step_variants.py compares).
    cls_only = True

    def __init__(self, encoder: BertEncoder, num_labels: int,
                 loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        super().__init__()
        self.bert = encoder
        self.num_labels = num_labels
        self.loss = loss  # (logits, labels) -> scalar: the family's training objective
        self.dropout = Dropout(encoder.config.hidden_dropout_prob)
        self.classifier = nn.Linear(encoder.config.hidden_size, num_labels)
        nn.init.normal_(self.classifier.weight, std=encoder.config.initializer_range)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None,
                windows_per_row: list[int] | None = None, pooling: str = "mean") -> Output:
        """labels: (B,) the family's targets (int64 class ids, float scores). ``windows_per_row``: the B inputs are
        the windows of consecutive rows, this many each (sum B); then the logits are the rows' (R, C), each the
        ``pooling`` of its windows', and the loss is on them, a row's label being its windows' (its first's)."""
        _, pooled = self.bert(input_ids, token_type_ids, attention_mask, cls_only=self.cls_only)  # (B, H)
        logits = self.classifier(self.dropout(pooled))  # (B, C)
        if self.num_labels == 1:
            logits = logits.squeeze(-1)  # (B,)
        if windows_per_row is not None:
            logits = torch.stack([pool_windows(w, pooling) for w in logits.split(list(windows_per_row))])  # (R, C)
            if labels is not None:
                first = torch.tensor([0, *windows_per_row[:-1]], device=labels.device).cumsum(0)
                labels = labels[first]  # (R,)
        return Output(logits=logits, loss=None if labels is None else self.loss(logits, labels))
