"""One text or a text pair in, one answer per row out: the input side that classification and regression (and
any other family reading ``text_a`` / ``text_b``) share.

Fields: ``text_a`` and, for pairs, ``text_b``; the gold field is the family's own (``label`` for both today).
Features: ``[CLS] a [SEP]`` or ``[CLS] a [SEP] b [SEP]`` (pair when ``text_b`` is not None), longest-first
truncated to ``max_seq_length``; keys ``input_ids``, ``token_type_ids``, ``example_index`` and, when the rows
are labelled, ``labels``: the family's ``target`` of each row (a label index, a float score, ...).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from datasets import Features, Value

from bert_core.families.base import FeatureBuilder, as_rows
from bert_core.tokenizer import BertTokenizer
from bert_core.validation import text_problem


def text_fields(pair: bool) -> tuple[str, ...]:
    """The canonical text fields of a row: one text, or a pair."""
    return ("text_a", "text_b") if pair else ("text_a",)


def text_request(pair: bool) -> dict[str, tuple[str, ...]]:
    """Request columns a served model reads each text from, preferred first."""
    return {"text_a": ("text_a", "text"), "text_b": ("text_b", "text_pair")} if pair else {"text_a": ("text", "text_a")}


def text_arrow_features(**gold: Value) -> Features:
    """Column types of text rows stored as a ``datasets.Dataset``: both texts (``text_b`` None for single
    texts), the family's ``gold`` field(s), ``_source``."""
    return Features(text_a=Value("string"), text_b=Value("string"), **gold, _source=Value("string"))


def text_row_problem(row: dict, pair: bool) -> str | None:
    """The first empty or non-text field among the row's texts, worded by ``validation.problem``; None if fine."""
    return text_problem(row, "text_a") or (text_problem(row, "text_b") if pair else None)


def truncation_note(max_seq_length: int) -> str:
    """What a model of text rows reads of a long input, for a model card's limits."""
    return f"each input is cut to {max_seq_length} word pieces ([CLS]/[SEP] included), longest text first"


def is_labelled(rows: list[dict], field: str = "label") -> bool:
    """True when every row has its gold ``field``, False when none has (prediction input); a mix is an error."""
    labelled = [row.get(field) is not None for row in rows]
    if any(labelled) and not all(labelled):
        row = rows[labelled.index(False)]
        raise ValueError(f"{row.get('_source', '?')}: field '{field}' is missing, while other rows of the split have one")
    return any(labelled)


def encode_texts(rows: list[dict], tokenizer: BertTokenizer, max_length: int | None = None):
    """Encodings of ``[CLS] a [SEP]`` or, when ``text_b`` is present, ``[CLS] a [SEP] b [SEP]``."""
    texts_b = [row.get("text_b") for row in rows]
    is_pair = any(b is not None for b in texts_b)
    if is_pair and not all(b is not None for b in texts_b):
        row = rows[texts_b.index(None)]
        raise ValueError(f"{row.get('_source', '?')}: field 'text_b' is None, while other rows of the split are pairs")
    return tokenizer.encode_batch([row["text_a"] for row in rows], texts_b if is_pair else None, max_length)


@dataclasses.dataclass
class TextFeatures(FeatureBuilder):
    """Text (pair) features; ``target(row, label_names)`` is a labelled row's training target."""

    target: Callable[[dict, list[str] | None], int | float]
    field: str = "label"  # the row field holding the gold label; rows without it get no target

    def build(self, rows, tokenizer: BertTokenizer, label_names: list[str] | None, settings: dict) -> list[dict]:
        rows = as_rows(rows)
        encodings = encode_texts(rows, tokenizer, settings["max_seq_length"])
        features = [{"input_ids": enc.input_ids, "token_type_ids": enc.token_type_ids, "example_index": i}
                    for i, enc in enumerate(encodings)]
        if is_labelled(rows, self.field):
            for feature, row in zip(features, rows, strict=True):
                feature["labels"] = self.target(row, label_names)
        return features

    def token_lengths(self, rows, tokenizer: BertTokenizer) -> list[int]:
        return [len(enc) for enc in encode_texts(as_rows(rows), tokenizer)]


def logits_by_row(logits: list[np.ndarray], features, n_rows: int) -> list[np.ndarray]:
    """One logits array per row, found through each feature's ``example_index``."""
    per_row: list[np.ndarray | None] = [None] * n_rows
    for logit, feature in zip(logits, features, strict=True):
        per_row[feature["example_index"]] = np.asarray(logit, dtype=np.float64)
    if any(x is None for x in per_row):
        raise ValueError("postprocess: some rows have no feature/logits; features and rows do not match")
    return per_row
