"""bert_core: BERT fine-tuning in plain PyTorch (no Prefect, no MLflow).

Stable public API: ``load_pretrained(source) -> (encoder, tokenizer)``, where
``encoder(input_ids, token_type_ids, attention_mask)`` returns ``(sequence_output, pooled_output)``
like ``transformers.BertModel``; ``save_finetuned`` / ``load_finetuned``; the family registry.
"""

from bert_core.checkpoint import load_finetuned, load_pretrained, save_finetuned
from bert_core.config import BertConfig
from bert_core.families import FAMILIES, get_family
from bert_core.model import BertEncoder
from bert_core.tokenizer import BertTokenizer, Encoding

__all__ = ["FAMILIES", "BertConfig", "BertEncoder", "BertTokenizer", "Encoding", "get_family", "load_finetuned",
           "load_pretrained", "save_finetuned"]
