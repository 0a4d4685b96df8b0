"""The model a fine-tune starts from: the task family's head on an encoder, and the tokenizer that goes with it.

    start = starting_model(family, label_names, pretrained)   # StartingModel(model, tokenizer, parent)

``pretrained`` (a folder, a hub id, or None for the offline default) holds one of two things:
- a Hugging Face BERT checkpoint: its encoder and tokenizer, and a new head (the usual fine-tune);
- a model bertflow fine-tuned (``save_finetuned``'s folder, known by the ``bertflow`` block of its config.json):
  its encoder, tokenizer and config, and its head too when that head answers the same question, i.e. the same
  family and the same label names in the same order (the head's rows are in that order): training goes on, e.g.
  on new data. Otherwise the head is new, as in intermediate-task transfer (STILTs, Phang et al. 2018: RTE
  started from an SNLI model). ``parent`` then says what the folder was and whether its head was kept; the
  recipe saves it in the new model's meta, and its model card shows it.

A registered model (``models:/bert-snli@champion``) reaches this module as its folder: the pipeline resolves the
URI first (``tracking/parent_model.py``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torch import nn

from bert_core.checkpoint import is_finetuned, load_finetuned, load_pretrained, resolve_source
from bert_core.families import Family
from bert_core.tokenizer import BertTokenizer

KEPT, NEW = "kept", "new"


@dataclasses.dataclass
class StartingModel:
    model: nn.Module  # the family's head on the encoder (under ``.bert``)
    tokenizer: BertTokenizer
    parent: dict | None  # a fine-tuned folder's task, family, label_names and "head": "kept" | "new"; else None


def starting_model(family: Family, label_names: list[str] | None, pretrained: str | Path | None) -> StartingModel:
    """The encoder (and, from a fine-tuned folder whose head fits, the head) ``fit`` trains from step 0."""
    folder = resolve_source(pretrained)
    if not is_finetuned(folder):
        encoder, tokenizer = load_pretrained(folder)
        return StartingModel(family.build_model(encoder, label_names), tokenizer, None)
    parent, tokenizer, meta = load_finetuned(folder)
    kept = head_fits(meta, family.name, label_names)
    model = parent if kept else family.build_model(parent.bert, label_names)
    return StartingModel(model, tokenizer, {"task": meta.get("task"), "family": meta["family"],
                                            "label_names": meta.get("label_names"), "head": KEPT if kept else NEW})


def head_fits(meta: dict, family_name: str, label_names: list[str] | None) -> bool:
    """Whether a fine-tuned model's head (``meta``: its saved meta) answers what a task of ``family_name`` with
    ``label_names`` asks: the same family, and the same label names in the same order (None for families
    without label names, e.g. regression and QA)."""
    theirs = list(meta.get("label_names") or []) or None
    ours = list(label_names or []) or None
    return meta["family"] == family_name and theirs == ours
