"""One text or a text pair in, one answer per row out: the input side that classification and regression (and
any other family reading ``text_a`` / ``text_b``) share.

Fields: ``text_a`` and, for pairs, ``text_b``; the gold field is the family's own (``label`` for both today).
Features: ``[CLS] a [SEP]`` or ``[CLS] a [SEP] b [SEP]`` (pair when ``text_b`` is not None), longest-first
truncated to ``max_seq_length``; keys ``input_ids``, ``token_type_ids``, ``example_index`` and, when the rows
are labelled, ``labels``: the family's ``target`` of each row (a label index, a float score, ...).

Long texts (the spec's ``long_text``, kept in the task settings as a dict): instead of the cut,
- ``windows``: a row longer than ``max_seq_length`` gives several features, overlapping windows of its text, each
  with the row's ``example_index``, its position ``window`` (0, 1, ...) and, in training, the row's target: every
  window is an example of its document's label; with ``train_on: document`` a training step takes whole rows
  and the loss is their pooled logits' (``cls_head.SequenceClassifier``, ``training/batching.py``'s
  ``row_features``). ``pool_windows`` pools a row's window logits (mean or max per class), in evaluation
  (``logits_by_row``) and in that loss alike. A pair keeps its shorter text in every window and windows the longer one: in pair tasks with long
  inputs one side is short (a question, a hypothesis) and which side it is varies by dataset, so the longer text
  is windowed whichever it is (``BertTokenizer.encode_long_batch``), and segment ids keep text_a's first.
- ``head_tail``: one feature per row, the first quarter and the last three quarters of the window's text
  (``HEAD_SHARE``), as Sun et al. 2019 found best for IMDb reviews.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch
from datasets import Features, Value

from bert_core.families.base import FeatureBuilder, as_rows
from bert_core.tokenizer import BertTokenizer
from bert_core.validation import text_problem

# A text is read in at most this many windows; the rest is cut, as truncation cuts it. It bounds one row's work
# (a served request of MAX_LONG_TEXT_CHARS too): 64 windows of 128 tokens, stride 64, read ~4,000 tokens.
MAX_WINDOWS = 64
# head_tail: Sun et al. 2019 ("How to fine-tune BERT for text classification"), 128 head + 382 tail of the 510
# text tokens of a 512-token input; scaled to any max_seq_length.
HEAD_SHARE = 128 / 510
POOLINGS = ("mean", "max")


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


def truncation_note(max_seq_length: int, long_text=None) -> str:
    """What a model of text rows reads of a long input, for a model card's limits (``long_text``: the spec's)."""
    if long_text is not None and long_text.strategy == "windows":
        return (f"a long input is read in windows of {max_seq_length} word pieces overlapping by {long_text.stride} "
                f"(at most {MAX_WINDOWS}; a pair's shorter text in each), its answer from the {long_text.pooling} "
                "of the windows' scores" + (", as in training" if long_text.train_on == "document" else ""))
    if long_text is not None:
        return (f"a long input keeps the first quarter and the last three quarters of {max_seq_length} word pieces "
                "([CLS]/[SEP] included), a pair's shorter text whole or cut")
    return f"each input is cut to {max_seq_length} word pieces ([CLS]/[SEP] included), longest text first"


def text_room(max_seq_length: int, pair: bool) -> int:
    """Tokens of text one feature holds: ``max_seq_length`` less [CLS] and a [SEP] per text."""
    return max_seq_length - (3 if pair else 2)


def suggested_stride(max_seq_length: int) -> int:
    """A ``long_text.stride`` that fits windows of ``max_seq_length`` tokens, pairs included: the default 64, or
    half the room for text when that is less (a window of 64 tokens has room for 61 of a pair)."""
    return min(64, text_room(max_seq_length, pair=True) // 2)


def long_text_problem(long_text: dict | None, max_seq_length: int, pair: bool) -> str | None:
    """Why ``long_text`` (the settings' dict) cannot read features of ``max_seq_length`` tokens, else None."""
    if long_text is None or long_text["strategy"] != "windows":
        return None
    room = text_room(max_seq_length, pair)
    if long_text["stride"] >= room:
        specials = "[CLS] and two [SEP]" if pair else "[CLS] and [SEP]"
        return (f"long_text.stride {long_text['stride']} must be below the window's room for text, {room} tokens "
                f"(max_seq_length {max_seq_length} less {specials}): consecutive windows would share every token; "
                f"e.g. stride {suggested_stride(max_seq_length)}")
    return None


def check_long_text(spec, pair: bool, pooled_loss: bool = False) -> None:
    """A family's spec check of ``long_text`` (stride below the window's room; ``train_on: document`` only where
    the family trains on ``pooled_loss``, classification's); raises ValueError."""
    found = long_text_problem(long_text_settings(spec).get("long_text"), spec.max_seq_length, pair)
    if found:
        raise ValueError(found)
    if spec.long_text is not None and spec.long_text.train_on == "document" and not pooled_loss:
        raise ValueError(f"long_text.train_on 'document' (a loss on each row's pooled windows) is for single and pair "
                         f"classification, not {spec.family!r}; use train_on: windows")


def long_text_settings(spec) -> dict:
    """The task setting ``long_text`` (a dict, as a model's meta keeps it), or nothing when the spec cuts texts."""
    return {"long_text": spec.long_text.model_dump()} if spec.long_text is not None else {}


def window_pooling(settings: dict) -> str:
    """How a row's window logits are pooled (``logits_by_row``): the settings' ``long_text.pooling``, else mean
    (a row of one feature is that feature's, whatever the pooling)."""
    return (settings.get("long_text") or {}).get("pooling", "mean")


def trains_on_documents(settings: dict) -> bool:
    """True when a training step takes whole rows, the loss on their pooled windows (``long_text.train_on``)."""
    return (settings.get("long_text") or {}).get("train_on") == "document"


def pool_windows(windows, pooling: str):
    """A row's logits from its windows' (W, C) or (W,): their ``pooling``, "mean" or "max" per class. A numpy
    array (evaluation, serving) or a torch tensor (training's pooled loss, which backpropagates through it)."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling {pooling!r}; expected one of {POOLINGS}")
    if pooling == "mean":
        return windows.mean(0)
    return windows.amax(0) if isinstance(windows, torch.Tensor) else windows.max(0)


def is_labelled(rows: list[dict], field: str = "label") -> bool:
    """True when every row has its gold ``field``, False when none has (prediction input); a mix is an error."""
    labelled = [row.get(field) is not None for row in rows]
    if any(labelled) and not all(labelled):
        row = rows[labelled.index(False)]
        raise ValueError(f"{row.get('_source', '?')}: field '{field}' is missing, while other rows of the split have one")
    return any(labelled)


def row_texts(rows: list[dict]) -> tuple[list[str], list[str] | None]:
    """Each row's ``text_a``, and its ``text_b`` when the rows are pairs (None for single texts)."""
    texts_b = [row.get("text_b") for row in rows]
    is_pair = any(b is not None for b in texts_b)
    if is_pair and not all(b is not None for b in texts_b):
        row = rows[texts_b.index(None)]
        raise ValueError(f"{row.get('_source', '?')}: field 'text_b' is None, while other rows of the split are pairs")
    return [row["text_a"] for row in rows], texts_b if is_pair else None


def encode_texts(rows: list[dict], tokenizer: BertTokenizer, max_length: int | None = None):
    """Encodings of ``[CLS] a [SEP]`` or, when ``text_b`` is present, ``[CLS] a [SEP] b [SEP]``."""
    return tokenizer.encode_batch(*row_texts(rows), max_length)


def encode_rows(rows: list[dict], tokenizer: BertTokenizer, max_seq_length: int, long_text: dict | None):
    """Each row's encodings: one, cut at ``max_seq_length``, without ``long_text``; with it, a long row's windows
    (or its head and tail), as the module docstring says."""
    if long_text is None:
        return [[enc] for enc in encode_texts(rows, tokenizer, max_seq_length)]
    texts, pairs = row_texts(rows)
    found = long_text_problem(long_text, max_seq_length, pairs is not None)
    if found:
        raise ValueError(found)
    if long_text["strategy"] == "head_tail":
        return tokenizer.encode_long_batch(texts, pairs, max_seq_length, head_share=HEAD_SHARE)
    return tokenizer.encode_long_batch(texts, pairs, max_seq_length, long_text["stride"], MAX_WINDOWS)


@dataclasses.dataclass
class TextFeatures(FeatureBuilder):
    """Text (pair) features; ``target(row, label_names)`` is a labelled row's training target."""

    target: Callable[[dict, list[str] | None], int | float]
    field: str = "label"  # the row field holding the gold label; rows without it get no target

    def build(self, rows, tokenizer: BertTokenizer, label_names: list[str] | None, settings: dict) -> list[dict]:
        rows = as_rows(rows)
        long_text = settings.get("long_text")
        labelled = is_labelled(rows, self.field)
        features = []
        for i, (row, encodings) in enumerate(zip(rows, encode_rows(rows, tokenizer, settings["max_seq_length"],
                                                                   long_text), strict=True)):
            target = self.target(row, label_names) if labelled else None
            for k, enc in enumerate(encodings):
                feature = {"input_ids": enc.input_ids, "token_type_ids": enc.token_type_ids, "example_index": i}
                if long_text is not None:
                    feature["window"] = k
                if labelled:
                    feature["labels"] = target
                features.append(feature)
        return features

    def token_lengths(self, rows, tokenizer: BertTokenizer) -> list[int]:
        return [len(enc) for enc in encode_texts(as_rows(rows), tokenizer)]

    def stats(self, features) -> dict:
        """With ``long_text``: the mean number of features (windows) per row, and the rows read in several."""
        if not features or "window" not in features[0]:
            return {}
        rows = sum(f["window"] == 0 for f in features)
        return {"windows_per_row": round(len(features) / rows, 3), "rows_in_windows": sum(f["window"] == 1 for f in features)}


def logits_by_row(logits: list[np.ndarray], features, n_rows: int, pooling: str = "mean") -> list[np.ndarray]:
    """One logits array per row, found through each feature's ``example_index``: the row's one feature's, or the
    ``pooling`` ("mean" or "max", per class) of its windows' (``long_text``). ``logits[k]``: (C,) or ()."""
    per_row: list[list[np.ndarray]] = [[] for _ in range(n_rows)]
    for logit, feature in zip(logits, features, strict=True):
        per_row[feature["example_index"]].append(np.asarray(logit, dtype=np.float64))
    if not all(per_row):
        raise ValueError("postprocess: some rows have no feature/logits; features and rows do not match")
    return [windows[0] if len(windows) == 1 else pool_windows(np.stack(windows), pooling) for windows in per_row]
