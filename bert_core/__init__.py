"""bert_core: BERT fine-tuning in plain PyTorch (no Prefect, no MLflow).

Stable public API: ``load_pretrained(source) -> (encoder, tokenizer)``, where
``encoder(input_ids, token_type_ids, attention_mask)`` returns ``(sequence_output, pooled_output)``
like ``transformers.BertModel``; ``save_finetuned`` / ``load_finetuned``; the family registry.

The names below are imported on first use (PEP 562), not with the package: ``bert_core.allocator`` must run
before torch is imported, and ``python -m bert_core.training`` imports this package first.
"""

import importlib

_EXPORTS = {
    "load_finetuned": "bert_core.checkpoint", "load_pretrained": "bert_core.checkpoint",
    "save_finetuned": "bert_core.checkpoint", "BertConfig": "bert_core.config",
    "FAMILIES": "bert_core.families", "get_family": "bert_core.families", "BertEncoder": "bert_core.model",
    "BertTokenizer": "bert_core.tokenizer", "Encoding": "bert_core.tokenizer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'bert_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
