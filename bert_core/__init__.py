"""bert_core: BERT fine-tuning in plain PyTorch (no Prefect, no MLflow).

Stable public API: ``load_pretrained(source) -> (encoder, tokenizer)``, where
``encoder(input_ids, token_type_ids, attention_mask)`` returns ``(sequence_output, pooled_output)``
like ``transformers.BertModel``; ``save_finetuned`` / ``load_finetuned``; the family registry.

The names are imported on first use, not with the package (``bert_core/lazy_exports.py`` says why).
"""

from bert_core.lazy_exports import lazy_exports

_EXPORTS = {
    "load_finetuned": "bert_core.checkpoint", "load_pretrained": "bert_core.checkpoint",
    "save_finetuned": "bert_core.checkpoint", "BertConfig": "bert_core.config",
    "FAMILIES": "bert_core.families", "get_family": "bert_core.families", "BertEncoder": "bert_core.model",
    "BertTokenizer": "bert_core.tokenizer", "Encoding": "bert_core.tokenizer",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
