"""The family registry: a spec's ``family`` name -> the ``Family`` that knows everything about that application
family (its parts: bert_core/families/base.py). Adding a family: its module, and one line here. Adding a dataset
of a known family needs only a spec file."""

from __future__ import annotations

from bert_core.families.base import (
    IGNORE_INDEX,
    Family,
    FeatureBuilder,
    Output,
    Predictions,
    Rows,
    as_rows,
    collate,
)
from bert_core.families.classification import PAIR_CLASSIFICATION, SINGLE_CLASSIFICATION
from bert_core.families.cls_head import SequenceClassifier
from bert_core.families.multi_label import MULTI_LABEL_CLASSIFICATION, PAIR_MULTI_LABEL_CLASSIFICATION
from bert_core.families.qa import EXTRACTIVE_QA, SpanQA, best_span
from bert_core.families.qa_no_answer import EXTRACTIVE_QA_WITH_NO_ANSWER
from bert_core.families.regression import PAIR_REGRESSION
from bert_core.families.tagging import TOKEN_TAGGING, TokenTagger

FAMILIES: dict[str, Family] = {family.name: family for family in (
    SINGLE_CLASSIFICATION,
    PAIR_CLASSIFICATION,
    PAIR_REGRESSION,
    TOKEN_TAGGING,
    EXTRACTIVE_QA,
    # SQuAD 2.0: extractive QA whose questions may have no answer; a family, not a spec flag (why: its module).
    EXTRACTIVE_QA_WITH_NO_ANSWER,
    MULTI_LABEL_CLASSIFICATION,  # any number of labels per text (pair), or none
    PAIR_MULTI_LABEL_CLASSIFICATION,
)}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown family {name!r}; expected one of {sorted(FAMILIES)}") from None


__all__ = [
    "FAMILIES", "IGNORE_INDEX", "Family", "FeatureBuilder", "Output", "Predictions", "Rows", "SequenceClassifier",
    "SpanQA", "TokenTagger", "as_rows", "best_span", "collate", "get_family",
]
