"""Tiny random BERT checkpoints for unit tests: vocab ~100, hidden 32, 2 layers, 4 heads.

Written by ``transformers`` itself (test-only dependency), so the folder has exactly the layout a real
Hugging Face checkpoint has and goes through the production loader.
"""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = (
    "the a an is was good bad movie film great terrible not very and of to in it this that "
    "john paris london visited city played by , . ! ? ' \" - who what where when answer question "
    "cafe river bank money ##s ##ed ##ing ##ly ##er fun boring plot actor"
).split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]

TINY = dict(
    vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    intermediate_size=37, max_position_embeddings=128, type_vocab_size=2,
)


def write_tiny_checkpoint(folder: Path, seed: int = 0, head: str | None = None, safetensors: bool = True,
                          dropout: float = 0.1) -> Path:
    """A random ``transformers`` BERT saved to ``folder`` with a vocab.txt.

    head: None saves a ``BertModel``; "mlm" a ``BertForPreTraining`` (MLM + NSP heads, ``bert.`` prefix);
    "tagging" a ``BertForTokenClassification`` (no pooler). dropout=0 makes training deterministic
    across process layouts (DDP vs one process, accumulation vs one big batch).
    """
    import transformers

    torch.manual_seed(seed)
    config = transformers.BertConfig(**TINY, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    cls = {None: transformers.BertModel, "mlm": transformers.BertForPreTraining,
           "tagging": transformers.BertForTokenClassification}[head]
    model = cls(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    if not safetensors:  # the legacy layout: a pickled state dict (transformers 5 only writes safetensors)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return folder
