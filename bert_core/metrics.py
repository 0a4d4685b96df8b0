"""Official evaluation metrics, as the benchmarks define them.

- GLUE (Wang et al., 2018, "GLUE: A Multi-Task Benchmark and Analysis Platform for NLU"):
  accuracy, Matthews correlation (CoLA), F1 of the positive class (MRPC, QQP),
  Pearson / Spearman correlation (STS-B). Thin wrappers over scikit-learn and scipy.
- Multi-class: macro / micro / weighted F1, macro precision and recall (scikit-learn's definitions).
- Tagging: token accuracy (POS) and entity-level precision / recall / F1: seqeval's strict mode for
  the task's tag scheme, or, with no scheme given, exactly as CoNLL's `conlleval.pl` (version
  2004-01-26) counts IOB tags, via seqeval's default (non-strict) mode.
- Extractive QA: exact match and token F1 exactly as the official SQuAD v1.1 `evaluate-v1.1.py`.

Every score is a fraction in [0, 1], never a percentage (conlleval and the SQuAD script print
percentages; multiply by 100 to compare with them).

Arguments are always `(preds, labels)` / `(predictions, gold)`: model output first.
"""

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from seqeval.metrics import v1 as strict
from seqeval.metrics.sequence_labeling import get_entities, precision_recall_fscore_support
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, precision_score, recall_score

from bert_core import tag_schemes

# ---------------------------------------------------------------- classification / regression


# `sample_weight`: how many times each example counts (a bootstrap resample draws rows several times);
# an integer weight gives exactly the score of the examples repeated that often.


def accuracy(preds, labels, sample_weight=None) -> float:
    """Fraction of examples whose predicted label equals the gold label."""
    return float(accuracy_score(labels, preds, sample_weight=sample_weight))


def matthews_corr(preds, labels, sample_weight=None) -> float:
    """Matthews correlation coefficient in [-1, 1] (CoLA's official metric)."""
    return float(matthews_corrcoef(labels, preds, sample_weight=sample_weight))


def f1_binary(preds, labels, positive=1, sample_weight=None) -> float:
    """F1 of the `positive` class only (MRPC / QQP), not an average over classes."""
    return float(f1_score(labels, preds, pos_label=positive, average="binary", zero_division=0,
                          sample_weight=sample_weight))


def f1_macro(preds, labels, sample_weight=None) -> float:
    """Unweighted mean over classes of per-class F1: every class counts the same, however rare."""
    return float(f1_score(labels, preds, average="macro", zero_division=0, sample_weight=sample_weight))


def f1_micro(preds, labels, sample_weight=None) -> float:
    """F1 of the pooled counts of all classes; equals accuracy when every example has exactly one label."""
    return float(f1_score(labels, preds, average="micro", zero_division=0, sample_weight=sample_weight))


def f1_weighted(preds, labels, sample_weight=None) -> float:
    """Mean over classes of per-class F1, weighted by each class's number of gold examples."""
    return float(f1_score(labels, preds, average="weighted", zero_division=0, sample_weight=sample_weight))


def precision_macro(preds, labels, sample_weight=None) -> float:
    """Unweighted mean over classes of per-class precision."""
    return float(precision_score(labels, preds, average="macro", zero_division=0, sample_weight=sample_weight))


def recall_macro(preds, labels, sample_weight=None) -> float:
    """Unweighted mean over classes of per-class recall (balanced accuracy)."""
    return float(recall_score(labels, preds, average="macro", zero_division=0, sample_weight=sample_weight))


def pearson(preds, labels) -> float:
    """Pearson correlation of real-valued scores (STS-B); nan if either side is constant."""
    return float(pearsonr(preds, labels).statistic)


def spearman(preds, labels) -> float:
    """Spearman rank correlation of real-valued scores (STS-B); ties get average ranks."""
    return float(spearmanr(preds, labels).statistic)


# Spec metric name -> function(preds, labels) -> float, for the classification / regression family.
# Tagging specs name "token_accuracy", "entity_f1", "entity_precision", "entity_recall" and QA specs
# name "exact_match", "f1": those families compute them over whole sentences / question sets with
# `token_accuracy`, `entity_prf` and `squad_em_f1` below, not through this table (note QA's "f1" is
# SQuAD token F1, not the `f1_binary` registered here).
METRICS: dict[str, Callable[..., float]] = {
    "accuracy": accuracy,
    "matthews_corr": matthews_corr,
    "f1": f1_binary,
    "f1_macro": f1_macro,
    "f1_micro": f1_micro,
    "f1_weighted": f1_weighted,
    "precision_macro": precision_macro,
    "recall_macro": recall_macro,
    "pearson": pearson,
    "spearman": spearman,
}

# ---------------------------------------------------------------- token tagging


def token_accuracy(pred_tags: Sequence[Sequence[str]], gold_tags: Sequence[Sequence[str]]) -> float:
    """Fraction of words (over all sentences) whose predicted tag equals the gold tag."""
    _check_same_shape(pred_tags, gold_tags)
    flat_pred = [tag for sentence in pred_tags for tag in sentence]
    flat_gold = [tag for sentence in gold_tags for tag in sentence]
    return float(accuracy_score(flat_gold, flat_pred))


# conlleval's chunk rules and seqeval's (default mode) agree exactly when every tag is O, B-TYPE or
# I-TYPE (checked against conlleval.pl on thousands of random IOB1/IOB2 files). They differ on E-/S-
# (IOBES) tags and on tags without a type, so those are rejected rather than scored subtly wrong.
_IOB_TAG = re.compile(r"O|[BI]-.+")


def entity_prf(pred_tags: Sequence[Sequence[str]], gold_tags: Sequence[Sequence[str]], scheme: str | None = None) -> dict:
    """Entity-level micro precision / recall / F1. A predicted entity is correct only when type, first
    word and last word all match a gold entity.

    With ``scheme`` (a task's ``tag_scheme``: IOB1, IOB2, IOE1, IOE2, IOBES, BILOU): seqeval's strict
    mode for that scheme, where an entity counts only when it is spelled the way the scheme spells
    entities (in IOB2 a predicted ``O I-PER`` is no entity). Without: conlleval.pl's reading
    (seqeval's default mode), IOB1 or IOB2 only: a chunk starts at every B-, and at an I- that follows
    O, the sentence start or another type, so both IOB encodings of the same entities score the same.

    Returns `{"precision", "recall", "f1", "per_type": {TYPE: {"precision", "recall", "f1",
    "support"}}}`, fractions in [0, 1]; `support` is the number of gold entities of that type.
    Precision (recall) is 0 when nothing was predicted (nothing is gold), F1 is 0 when both are 0.
    """
    _check_same_shape(pred_tags, gold_tags)
    # seqeval wants list-of-lists (tuples are silently read as one flat sentence).
    pred = [list(sentence) for sentence in pred_tags]
    gold = [list(sentence) for sentence in gold_tags]
    if scheme is not None:
        return _entity_prf_strict(pred, gold, tag_schemes.SEQEVAL[tag_schemes.canonical(scheme)])
    for tag in {tag for sentences in (pred_tags, gold_tags) for sentence in sentences for tag in sentence}:
        if not _IOB_TAG.fullmatch(tag):
            raise ValueError(f"entity_prf: tag {tag!r} is not O, B-TYPE or I-TYPE (IOB1/IOB2 only)")

    # Same type-name order seqeval uses for its per-type arrays.
    types = sorted({t for t, _, _ in get_entities(gold)} | {t for t, _, _ in get_entities(pred)})
    p, r, f, support = precision_recall_fscore_support(gold, pred, average=None, zero_division=0)
    per_type = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
        for i, name in enumerate(types)
    }
    # micro average = conlleval's overall line: correct chunks / found guessed, / found correct.
    micro_p, micro_r, micro_f, _ = precision_recall_fscore_support(
        gold, pred, average="micro", zero_division=0
    )
    return {"precision": float(micro_p), "recall": float(micro_r), "f1": float(micro_f), "per_type": per_type}


def _entity_prf_strict(pred: list[list[str]], gold: list[list[str]], scheme) -> dict:
    types = sorted(strict.unique_labels(gold, pred, scheme))
    p, r, f, support = strict.precision_recall_fscore_support(gold, pred, average=None, zero_division=0,
                                                              scheme=scheme)
    per_type = {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
                for i, name in enumerate(types)}
    micro_p, micro_r, micro_f, _ = strict.precision_recall_fscore_support(gold, pred, average="micro",
                                                                          zero_division=0, scheme=scheme)
    return {"precision": float(micro_p), "recall": float(micro_r), "f1": float(micro_f), "per_type": per_type}


def entity_counts(pred_tags: Sequence[Sequence[str]], gold_tags: Sequence[Sequence[str]],
                  scheme: str | None = None) -> np.ndarray:
    """(S, 3) per sentence: entities right (type, first and last word match), predicted, gold, read as
    ``entity_prf`` reads them. Micro precision = sum(right) / sum(predicted), recall = sum(right) / sum(gold)."""
    _check_same_shape(pred_tags, gold_tags)
    if scheme is not None:
        cls = tag_schemes.SEQEVAL[tag_schemes.canonical(scheme)]
        spans = [[{e.to_tuple()[1:] for e in strict.Entities([list(s)], cls).entities[0]} for s in tags]
                 for tags in (pred_tags, gold_tags)]
    else:
        spans = [[set(get_entities(list(s))) for s in tags] for tags in (pred_tags, gold_tags)]
    return np.array([(len(p & g), len(p), len(g)) for p, g in zip(*spans, strict=True)], dtype=np.float64)


def prf_from_counts(right: float, predicted: float, gold: float) -> dict[str, float]:
    """Precision, recall and F1 from summed entity counts (0 where undefined, as seqeval's zero_division=0)."""
    p = right / predicted if predicted else 0.0
    r = right / gold if gold else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def _check_same_shape(pred_tags, gold_tags) -> None:
    # A length mismatch means misaligned postprocessing; scoring the overlap would hide it.
    same_lengths = len(pred_tags) == len(gold_tags)
    if not same_lengths or any(len(p) != len(g) for p, g in zip(pred_tags, gold_tags, strict=True)):
        raise ValueError("predicted and gold tags differ in number of sentences or words per sentence")


# ---------------------------------------------------------------- extractive QA (SQuAD v1.1)


def normalize_answer(s: str) -> str:
    """SQuAD v1.1 normalisation: lowercase, drop punctuation, drop articles, collapse whitespace.

    The order matters and is the official one: punctuation goes before articles, so "the-end"
    becomes "theend" (no article left), while "a.m." becomes "am".
    """
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _exact_match(prediction: str, ground_truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def _token_f1(prediction: str, ground_truth: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(ground_truth).split()
    num_same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    # v1.1 (unlike v2.0) scores two empty answers 0, not 1: kept for exactness.
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_per_question(predictions: dict[str, str], gold: dict[str, list[str]]) -> np.ndarray:
    """(Q, 2) per gold question: its exact match and token F1 (the best over its gold answers; 0 when it has
    no prediction). ``squad_em_f1`` is their mean."""
    return np.array([(max(_exact_match(predictions[qid], a) for a in answers),
                      max(_token_f1(predictions[qid], a) for a in answers)) if qid in predictions else (0.0, 0.0)
                     for qid, answers in gold.items()], dtype=np.float64).reshape(-1, 2)


def squad_em_f1(predictions: dict[str, str], gold: dict[str, list[str]]) -> dict[str, float]:
    """Official SQuAD v1.1 exact match and token F1, as fractions in [0, 1] (the script prints 0..100).

    `predictions`: question id -> predicted answer text. `gold`: question id -> all gold answer
    texts. Each question scores its best match over the gold answers; the mean is over the gold
    ids, so a question without a prediction scores 0 and predictions for unknown ids are ignored.
    """
    if not gold:
        raise ValueError("squad_em_f1: no gold questions")
    exact_match = f1 = 0.0
    for qid, answers in gold.items():
        if qid not in predictions:
            continue
        exact_match += max(_exact_match(predictions[qid], a) for a in answers)
        f1 += max(_token_f1(predictions[qid], a) for a in answers)
    return {"exact_match": exact_match / len(gold), "f1": f1 / len(gold)}
