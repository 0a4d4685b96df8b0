"""The family registry: a spec's ``family`` name -> the object that knows its head, features,
postprocessing and metrics. Adding a dataset of a known family needs only a spec file."""

from __future__ import annotations

from bert_core.families.base import IGNORE_INDEX, Family, Output, collate
from bert_core.families.classification import ClassificationFamily, RegressionFamily, SequenceClassifier
from bert_core.families.qa import QAFamily, SpanQA, best_span
from bert_core.families.tagging import TaggingFamily, TokenTagger

FAMILIES: dict[str, Family] = {
    "single_classification": ClassificationFamily(),
    "pair_classification": ClassificationFamily(),
    "pair_regression": RegressionFamily(),
    "token_tagging": TaggingFamily(),
    "extractive_qa": QAFamily(),
}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown family {name!r}; expected one of {sorted(FAMILIES)}") from None


__all__ = [
    "FAMILIES", "IGNORE_INDEX", "ClassificationFamily", "Family", "Output", "QAFamily", "RegressionFamily",
    "SequenceClassifier", "SpanQA", "TaggingFamily", "TokenTagger", "best_span", "collate", "get_family",
]
