"""Token tagging (POS, NER): every token's vector -> one shared linear layer -> tag.

Labels sit on the first sub-token of each word; the other sub-tokens, the specials and padding carry
-100 and are skipped by the loss, as in the BERT paper's CoNLL-2003 setup.

Features: ``input_ids``, ``token_type_ids``, ``word_ids`` (the word each token came from, -1 for
``[CLS]``/``[SEP]``), ``words_truncated``, ``example_index`` and, when the rows are tagged, ``labels``.
``words_truncated`` counts the row's words with no token in the feature: words cut off by
``max_seq_length`` (or, rarely, a word the tokenizer drops entirely, such as a lone control
character). It is stored in every feature rather than returned on the side, so the count survives the
feature cache: ``sum(features["words_truncated"])`` is the split's total; building also logs it.

Rows: ``tokens`` and ``tags``, one tag per token; the spec may give a ``tag_scheme`` (and ``repair_tags``).
Predictions: ``{"tokens": words, "tags": one tag per word, "words_truncated": n}``; every input word
gets a tag, the ones without a token the fallback tag (``"O"``, or the first tag name without one).
Metrics: ``token_accuracy``, ``entity_f1``, ``entity_precision``, ``entity_recall`` (seqeval's strict mode for
the spec's ``tag_scheme``, whose sequences ``check_data`` validates when the data loads).
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import torch.nn.functional as F
from datasets import Features, List, Value
from sklearn.metrics import classification_report
from torch import nn

from bert_core import metrics, tag_schemes
from bert_core.dropout import Dropout
from bert_core.families.base import IGNORE_INDEX, Family, FeatureBuilder, Output, Predictions, Rows, as_rows
from bert_core.model import BertEncoder
from bert_core.tokenizer import BertTokenizer
from bert_core.validation import DataError, problem, show

log = logging.getLogger(__name__)

TAGGING_METRICS = ("token_accuracy", "entity_f1", "entity_precision", "entity_recall")
SPECIAL = -1  # word id of [CLS] / [SEP] in a feature's ``word_ids`` (None does not pad into a tensor)


class TokenTagger(nn.Module):
    """BERT + one linear layer shared by all positions."""

    def __init__(self, encoder: BertEncoder, num_tags: int):
        super().__init__()
        self.bert = encoder
        self.num_labels = num_tags
        self.dropout = Dropout(encoder.config.hidden_dropout_prob)
        self.classifier = nn.Linear(encoder.config.hidden_size, num_tags)
        nn.init.normal_(self.classifier.weight, std=encoder.config.initializer_range)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None) -> Output:
        """labels: (B, T) int64 tag ids, -100 where no tag is predicted."""
        sequence, _ = self.bert(input_ids, token_type_ids, attention_mask)  # (B, T, H)
        logits = self.classifier(self.dropout(sequence))  # (B, T, C)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
        return Output(logits=logits, loss=loss)


def fallback_tag(label_names: list[str]) -> str:
    """Tag given to words the model never saw (cut off by the maximum length)."""
    return "O" if "O" in label_names else label_names[0]


def first_subtoken_labels(word_ids: list[int], word_tags: list[int]) -> list[int]:
    """word_ids: (T,) word per token, SPECIAL for specials; word_tags: (W,) tag id per word.
    Returns (T,) labels: the word's tag on its first sub-token, IGNORE_INDEX on the rest."""
    labels, previous = [], SPECIAL
    for word in word_ids:
        labels.append(word_tags[word] if word != SPECIAL and word != previous else IGNORE_INDEX)
        previous = word
    return labels


def _is_tagged(rows: list[dict]) -> bool:
    """True when every row has tags, False when none has (prediction input); a mix is an error."""
    tagged = [row.get("tags") is not None for row in rows]
    if any(tagged) and not all(tagged):
        row = rows[tagged.index(False)]
        raise ValueError(f"{row.get('_source', '?')}: field 'tags' is missing, while other rows of the split have them")
    return any(tagged)


def _tag_ids(row: dict, index: dict[str, int]) -> list[int]:
    source = row.get("_source", "?")
    if len(row["tags"]) != len(row["tokens"]):
        raise ValueError(f"{source}: {len(row['tags'])} tags for {len(row['tokens'])} tokens; expected one tag per token")
    unknown = [tag for tag in row["tags"] if tag not in index]
    if unknown:
        raise ValueError(f"{source}: field 'tags' has {unknown[0]!r}; expected one of {list(index)}")
    return [index[tag] for tag in row["tags"]]


class TagRows(Rows):
    """Sentences of words with one tag per word."""

    fields = ("tokens", "tags")
    request = {"tokens": ("tokens", "text")}
    local_formats = ("conll", "json", "jsonl", "parquet")
    spec_fields = ("tag_scheme", "repair_tags")

    def check_spec(self, spec) -> None:
        if spec.tag_scheme is not None:
            spec.tag_scheme = tag_schemes.canonical(spec.tag_scheme)
        entity_metrics = [m for m in spec.metrics if m.startswith("entity_")]
        if entity_metrics and spec.tag_scheme is None:
            raise ValueError(f"metrics {entity_metrics} count entities, which needs a tag_scheme (IOB1, IOB2, IOE1, "
                             "IOE2, IOBES or BILOU); plain tags (POS) get token_accuracy only")
        if spec.repair_tags and spec.tag_scheme is None:
            raise ValueError("repair_tags rewrites sequences into a tag_scheme: give the tag_scheme")

    def task_settings(self, spec) -> dict:
        return {"tag_scheme": spec.tag_scheme} if spec.tag_scheme is not None else {}

    def arrow_features(self) -> Features:
        return Features(tokens=List(Value("string")), tags=List(Value("string")), _source=Value("string"))

    def normalise(self, rows, label_map, spec):
        if label_map:
            for row in rows:
                if isinstance(row.get("tags"), list):
                    row["tags"] = [label_map.get(t, t) for t in row["tags"]]
        return rows

    def validate_row(self, row, label_set, expected):
        tokens, tags = row.get("tokens"), row.get("tags")
        if not isinstance(tokens, list) or not tokens:
            return problem("tokens", tokens, "a non-empty list of tokens")
        if not isinstance(tags, list) or len(tags) != len(tokens):
            n = len(tags) if isinstance(tags, list) else "no"
            return problem("tags", tags, f"one tag per token: {len(tokens)} tokens but {n} tags")
        for i, (token, tag) in enumerate(zip(tokens, tags, strict=True)):
            if not isinstance(token, str) or not token.strip():
                return problem(f"tokens[{i}]", token, f"non-empty text (token {i + 1} of the sentence)")
            if not isinstance(tag, str) or not tag or (label_set is not None and tag not in label_set):
                wanted = expected if label_set is not None else "a tag name"
                return problem(f"tags[{i}]", tag, f"{wanted} (token {i + 1} of the sentence)")
        return None

    def infer_label_names(self, train):
        return sorted({t for r in train if isinstance(r.get("tags"), list) for t in r["tags"] if isinstance(t, str) and t})

    def check_data(self, spec, splits, label_names, origins) -> list[str]:
        """Every sentence obeys the spec's ``tag_scheme``; with ``repair_tags`` a sentence that does not is
        rewritten into the scheme's spelling of the same entities, and each repair is reported."""
        if spec.tag_scheme is None:
            return []
        repairs = []
        for rows in splits.values():
            for row in rows:
                problem = tag_schemes.first_violation(row["tags"], spec.tag_scheme)
                if problem is None:
                    continue
                i, why = problem
                where = f"{row['_source']}: field 'tags[{i}]' (token {i + 1} of the sentence, {show(row['tokens'][i])})"
                if not spec.repair_tags or why.startswith("tag "):  # a tag the scheme cannot hold has no repair
                    raise DataError(f"{where}: {why}; fix the file, set the spec's tag_scheme to the one the file "
                                    "uses, or set repair_tags: true to rewrite such sentences")
                fixed = tag_schemes.repair(row["tags"], spec.tag_scheme)
                new = sorted(set(fixed) - set(label_names))
                if new:
                    raise DataError(f"{where}: {why}; the repair needs tag(s) {new}, which are not among the labels")
                row["tags"] = fixed
                repairs.append(f"{where}: {why}; repaired")
        return repairs

    def describe_labels(self, rows) -> str:
        counts = Counter(tag for row in rows for tag in row["tags"]).most_common()
        total = sum(n for _, n in counts)
        shown = [f"{name} {n / total:.1%}" for name, n in counts[:6]]
        return ", ".join(shown) + (f", +{len(counts) - 6} more" if len(counts) > 6 else "")


def build_tagger(encoder: BertEncoder, label_names: list[str] | None) -> nn.Module:
    if not label_names:
        raise ValueError("token tagging needs the tag names")
    return TokenTagger(encoder, len(label_names))


class TagFeatures(FeatureBuilder):
    """Word-aligned features: the tag of each word on its first sub-token (module docstring)."""

    def build(self, rows, tokenizer: BertTokenizer, label_names: list[str] | None, settings: dict) -> list[dict]:
        rows = as_rows(rows)
        encodings = tokenizer.encode_batch(
            [list(row["tokens"]) for row in rows], max_length=settings["max_seq_length"], is_pretokenized=True
        )
        tagged = _is_tagged(rows)
        index = {tag: i for i, tag in enumerate(label_names or [])}
        features = []
        for i, (row, enc) in enumerate(zip(rows, encodings, strict=True)):
            word_ids = [SPECIAL if w is None else w for w in enc.word_ids]
            feature = {
                "input_ids": enc.input_ids,
                "token_type_ids": enc.token_type_ids,
                "word_ids": word_ids,
                "words_truncated": len(row["tokens"]) - len(set(word_ids) - {SPECIAL}),
                "example_index": i,
            }
            if tagged:
                feature["labels"] = first_subtoken_labels(word_ids, _tag_ids(row, index))
            features.append(feature)
        truncated = sum(f["words_truncated"] for f in features)
        if truncated:
            rows_hit = sum(f["words_truncated"] > 0 for f in features)
            log.warning(
                "%d words in %d of %d rows have no token within max_seq_length=%d; they get the fallback tag",
                truncated, rows_hit, len(rows), settings["max_seq_length"],
            )
        return features

    def token_lengths(self, rows, tokenizer: BertTokenizer) -> list[int]:
        words = [list(row["tokens"]) for row in as_rows(rows)]
        return [len(enc) for enc in tokenizer.encode_batch(words, max_length=None, is_pretokenized=True)]

    def stats(self, features) -> dict:
        return {"words_truncated": sum(f["words_truncated"] for f in features)}


class TagPredictions(Predictions):
    """The argmax tag of each word's first sub-token; token accuracy and entity scores."""

    metrics = TAGGING_METRICS
    response = {"tags": "tags"}

    def postprocess(self, logits, features, rows, label_names, settings: dict) -> list[dict]:
        """logits[k]: (T, C) -> {"tokens", "tags", "words_truncated"}: the first sub-token's argmax tag for
        every word, the fallback tag for words without a token (counted in ``words_truncated``)."""
        rows = as_rows(rows)
        fallback = fallback_tag(label_names)
        predictions: list[dict | None] = [None] * len(rows)
        for logit, feature in zip(logits, features, strict=True):
            words = list(rows[feature["example_index"]]["tokens"])
            word_ids = feature["word_ids"]
            best = np.asarray(logit)[: len(word_ids)].argmax(-1)  # (T,)
            tags: list[str | None] = [None] * len(words)
            for position, word in enumerate(word_ids):
                if word != SPECIAL and tags[word] is None:
                    tags[word] = label_names[best[position]]
            missing = sum(tag is None for tag in tags)
            predictions[feature["example_index"]] = {
                "tokens": words,
                "tags": [fallback if tag is None else tag for tag in tags],
                "words_truncated": missing,
            }
        if any(p is None for p in predictions):
            raise ValueError("postprocess: some rows have no feature/logits; features and rows do not match")
        return predictions

    def compute_metrics(self, predictions, rows, metric_names, label_names=None, settings=None) -> dict[str, float]:
        """Token accuracy over words; entity scores in seqeval's strict mode for ``settings["tag_scheme"]``
        (conlleval's IOB reading when no scheme is given)."""
        self.check_metric_names(metric_names)
        rows = as_rows(rows)
        if not _is_tagged(rows):
            raise ValueError("compute_metrics: the rows carry no gold tags")
        gold = [list(row["tags"]) for row in rows]
        pred = [list(p["tags"]) for p in predictions]
        # Plain tags (POS) spell no entities, so entity_prf runs only when an entity metric is asked for.
        scheme = (settings or {}).get("tag_scheme")
        entities = metrics.entity_prf(pred, gold, scheme) if any(n.startswith("entity_") for n in metric_names) else {}
        return {
            name: metrics.token_accuracy(pred, gold) if name == "token_accuracy" else entities[name.removeprefix("entity_")]
            for name in metric_names
        }

    def weighted_metric(self, predictions, rows, metric, label_names=None, settings=None):
        """Per-sentence counts (words right and in all; entities right, predicted, gold), summed by weight:
        token accuracy and micro entity scores are ratios of those sums."""
        gold = [list(row["tags"]) for row in as_rows(rows)]
        pred = [list(p["tags"]) for p in predictions]
        if metric == "token_accuracy":
            counts = np.array([(sum(p == g for p, g in zip(ps, gs, strict=True)), len(gs))
                               for ps, gs in zip(pred, gold, strict=True)], dtype=np.float64)
            return lambda weights: float(weights @ counts[:, 0] / (weights @ counts[:, 1]))
        counts = metrics.entity_counts(pred, gold, (settings or {}).get("tag_scheme"))
        which = metric.removeprefix("entity_")
        return lambda weights: metrics.prf_from_counts(*(weights @ counts))[which]

    def per_class_report(self, rows, predictions, label_names, spec) -> dict:
        """Entity precision, recall and F1 per type, counted as the entity metrics count (a tag scheme);
        plain tags (POS): scikit-learn's report per tag over words."""
        gold, pred = [list(r["tags"]) for r in rows], [list(p["tags"]) for p in predictions]
        if spec.tag_scheme is not None:
            return metrics.entity_prf(pred, gold, spec.tag_scheme)
        flat_gold = [t for sentence in gold for t in sentence]
        flat_pred = [t for sentence in pred for t in sentence]
        return classification_report(flat_gold, flat_pred, labels=label_names, output_dict=True, zero_division=0)

    def input_limit(self, spec, max_seq_length, label_names) -> str:
        return (f"a sentence longer than {max_seq_length} word pieces is cut: the words past the cut get the tag "
                f"{fallback_tag(label_names or ['O'])!r}")


NAME = "token_tagging"
TOKEN_TAGGING = Family(NAME, rows=TagRows(), features=TagFeatures(), build_model=build_tagger,
                       predictions=TagPredictions(NAME))
