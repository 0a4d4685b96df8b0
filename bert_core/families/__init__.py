"""The family registry: a spec's ``family`` name -> the object that knows everything about that application
family (bert_core/families/base.py). Adding a family: its module, and one line here. Adding a dataset of a
known family needs only a spec file."""

from __future__ import annotations

from bert_core.families.base import IGNORE_INDEX, Family, Output, as_rows, collate
from bert_core.families.classification import ClassificationFamily, RegressionFamily, SequenceClassifier
from bert_core.families.qa import QAFamily, SpanQA, best_span
from bert_core.families.qa_no_answer import NoAnswerQAFamily
from bert_core.families.tagging import TaggingFamily, TokenTagger

FAMILIES: dict[str, Family] = {family.name: family for family in (
    ClassificationFamily("single_classification", pair=False),
    ClassificationFamily("pair_classification", pair=True),
    RegressionFamily("pair_regression"),
    TaggingFamily(),
    QAFamily(),
    # SQuAD 2.0: extractive QA whose questions may have no answer; a family, not a spec flag (why: its module).
    NoAnswerQAFamily(),
)}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown family {name!r}; expected one of {sorted(FAMILIES)}") from None


__all__ = [
    "FAMILIES", "IGNORE_INDEX", "ClassificationFamily", "Family", "NoAnswerQAFamily", "Output", "QAFamily",
    "RegressionFamily", "SequenceClassifier", "SpanQA", "TaggingFamily", "TokenTagger", "as_rows", "best_span",
    "collate", "get_family",
]
