"""Official evaluation metrics, as the benchmarks define them.

- GLUE (Wang et al., 2018, "GLUE: A Multi-Task Benchmark and Analysis Platform for NLU"):
  accuracy, Matthews correlation (CoLA), F1 of the positive class (MRPC, QQP: ``positive_class_f1``),
  Pearson / Spearman correlation (STS-B). Thin wrappers over scikit-learn and scipy.
- Multi-class: macro / micro / weighted F1, macro precision and recall (scikit-learn's definitions).
- Tagging: token accuracy (POS) and entity-level precision / recall / F1: seqeval's strict mode for
  the task's tag scheme, or, with no scheme given, exactly as CoNLL's `conlleval.pl` (version
  2004-01-26) counts IOB tags, via seqeval's default (non-strict) mode.
- Extractive QA: exact match and token F1 (the overlap of answer words) exactly as the official SQuAD v1.1
  `evaluate-v1.1.py`; with unanswerable questions, as SQuAD 2.0's `evaluate-v2.0.py` (EM/F1, HasAns_*/NoAns_*,
  best_* over no-answer thresholds, whose search differs from the script's in three documented corner cases).

Each metric has one name here. The names a spec uses are each family's (bert_core/families/): a spec's ``f1`` is
``positive_class_f1`` in a classification spec and SQuAD's token F1 (the ``f1`` of ``squad_em_f1`` and
``squad_v2``, named as the SQuAD scripts name it) in a QA spec.

Every score is a fraction in [0, 1], never a percentage (conlleval and the SQuAD script print
percentages; multiply by 100 to compare with them).

Arguments are always `(preds, labels)` / `(predictions, gold)`: model output first.
"""

import dataclasses
import math
import re
import string
from collections import Counter
from collections.abc import Sequence

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


def positive_class_f1(preds, labels, positive=1, sample_weight=None) -> float:
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
    # v1.1 (unlike v2.0) scores two empty answers 0, not 1: kept for exactness.
    return _overlap_f1(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def _overlap_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    """Harmonic mean of token precision and recall over the bag of shared tokens; 0 when none is shared."""
    num_same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
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


# ---------------------------------------------------------------- extractive QA with unanswerable questions (SQuAD 2.0)
#
# As the official `evaluate-v2.0.py`: a question without gold answers is answered correctly only by an empty
# prediction; EM and F1 are means over all questions, HasAns_* / NoAns_* over the questions with / without gold
# answers; best_exact / best_f1 (`find_best_thresh`) are the best EM / F1 over no-answer thresholds, walking the
# questions in order of how sure the model is that they have an answer. Deviations, all in the threshold search
# and all so that its threshold gives exactly the score reported: see `best_no_answer_threshold`.

SQUAD_V2_METRICS = ("exact_match", "f1", "has_ans_exact_match", "has_ans_f1", "no_ans_exact_match", "no_ans_f1",
                    "best_exact_match", "best_exact_match_threshold", "best_f1", "best_f1_threshold")
# Thresholds, not scores: a spec cannot select models on them.
SQUAD_V2_THRESHOLDS = ("best_exact_match_threshold", "best_f1_threshold")
# Two candidate scores closer than this (in questions) are equal: summing F1 fractions in another order (a
# bootstrap's weights vs repeated rows) must not change which threshold wins.
_TIE = 1e-9


def squad_v2_gold(answers: Sequence[str]) -> list[str]:
    """The gold texts the v2.0 script scores against: the answers that normalise to some text, else ``[""]`` (no
    answer: only a prediction that normalises to nothing matches it)."""
    return [a for a in answers if normalize_answer(a)] or [""]


def squad_v2_exact(prediction: str, gold: str) -> float:
    """v2.0 exact match is v1.1's (an empty gold matches only a prediction that normalises to nothing)."""
    return _exact_match(prediction, gold)


def squad_v2_f1(prediction: str, gold: str) -> float:
    """v2.0 token F1: v1.1's, except that when either side has no token it is 1 if neither has one, else 0 (v1.1
    scores two empty answers 0)."""
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    return _overlap_f1(pred_tokens, gold_tokens)


def squad_v2_per_question(predictions: Sequence[str], gold: Sequence[Sequence[str]]) -> np.ndarray:
    """(Q, 2): each prediction's exact match and F1, the best over its question's gold texts (``squad_v2_gold``)."""
    rows = []
    for prediction, answers in zip(predictions, gold, strict=True):
        texts = squad_v2_gold(answers)
        rows.append((max(squad_v2_exact(prediction, a) for a in texts), max(squad_v2_f1(prediction, a) for a in texts)))
    return np.array(rows, dtype=np.float64).reshape(-1, 2)


def best_no_answer_threshold(margins, if_answered, if_empty, weights=None) -> tuple[float, float]:
    """(best score, threshold t): answering exactly the questions with margin > t, with their best span, and leaving
    the others empty scores best; the score is a mean over the (weighted) questions. The v2.0 script's
    ``find_best_thresh`` with ``na_prob`` = -margin.

    ``margins``: (Q,) each question's best span score minus its no-answer score (-inf or nan: it has no span and is
    never answered); ``if_answered`` / ``if_empty``: (Q,) its score (exact match or F1) answered with its best span /
    left empty; ``weights``: (Q,) how often each question counts (None: once; 0: absent).

    As the official script, the questions are answered in order of decreasing margin, starting from none, and a
    score replaces the best only when strictly higher (here: by more than 1e-9), so of equal scores the one that
    answers fewest questions wins. Where it differs, so that the threshold gives exactly the score reported, also
    when the same questions are scored again with slightly different logits (another batch size, fp32 instead of
    bf16):
    - questions with equal margins are answered together (the script may stop inside a tie, a score no threshold
      gives, and which one it gets depends on the order of its input);
    - the threshold is halfway between the margins of the last question answered and the first left unanswered
      (the script's is the last answered question's own na_prob, which the least noise flips); one logit above the
      largest margin when answering none is best (the script reports 0.0 there, which may answer some), one below
      the smallest when answering all is;
    - a question's gain from being answered is ``if_answered - if_empty`` (the script subtracts 1 for any non-empty
      prediction to a question without answers, even one that normalises to nothing, like "the", which scores 1).
    """
    margins = np.asarray(margins, dtype=np.float64)
    w = np.ones(len(margins)) if weights is None else np.asarray(weights, dtype=np.float64)
    if not w.sum() > 0:
        raise ValueError("best_no_answer_threshold: no questions")
    total = w.sum()
    base = float(w @ np.asarray(if_empty, dtype=np.float64))
    keep = (w > 0) & np.isfinite(margins)
    if not keep.any():  # nothing can be answered: every threshold gives the same score
        return base / total, 0.0
    gains = (w * (np.asarray(if_answered, dtype=np.float64) - np.asarray(if_empty, dtype=np.float64)))[keep]
    order = np.argsort(-margins[keep], kind="stable")
    sorted_gains = gains[order]
    distinct = margins[keep][order][np.append(True, np.diff(margins[keep][order]) != 0)]  # decreasing
    last = np.flatnonzero(np.append(np.diff(margins[keep][order]) != 0, True))  # the last question of each tie
    cumulative = np.cumsum(sorted_gains)[last]  # score over `base` when answering up to that tie
    edges = np.concatenate([[distinct[0] + 2.0], distinct, [distinct[-1] - 2.0]])
    thresholds = (edges[:-1] + edges[1:]) / 2  # thresholds[g]: answer the first g ties
    best, best_threshold = 0.0, float(thresholds[0])  # answering none
    for gain, threshold in zip(cumulative, thresholds[1:], strict=True):
        if gain > best + _TIE:
            best, best_threshold = float(gain), float(threshold)
    return float((base + best) / total), best_threshold


@dataclasses.dataclass
class SquadV2Questions:
    """What SQuAD 2.0's metrics need per question, scored once, so that the metrics of any weighting of the
    questions (a bootstrap resample) are exact without scoring texts again."""

    scores: np.ndarray  # (Q, 2) exact match, F1 of each prediction
    has_answer: np.ndarray  # (Q,) bool: the question has gold answers (the script's qid_to_has_ans)
    if_answered: np.ndarray  # (Q, 2) exact match, F1 of its best span (what it would answer)
    if_empty: np.ndarray  # (Q, 2) exact match, F1 of an empty prediction
    margins: np.ndarray  # (Q,) best span score - no-answer score; -inf: no span; all nan: not given

    @classmethod
    def score(cls, predictions: Sequence[str], gold: Sequence[Sequence[str]], best_spans: Sequence[str] | None = None,
              margins: Sequence[float | None] | None = None) -> "SquadV2Questions":
        """``predictions``: the answer texts ("" = no answer); ``gold``: each question's gold texts ([] = none);
        ``best_spans``, ``margins``: each question's best span and its margin over the no-answer score, for the
        threshold search (a margin of None: the question has no span; without margins the best_* metrics are nan)."""
        n = len(gold)
        scores = squad_v2_per_question(predictions, gold)
        if_answered = squad_v2_per_question(best_spans, gold) if best_spans is not None else scores
        margins = np.full(n, np.nan) if margins is None else np.array(
            [-np.inf if m is None else m for m in margins], dtype=np.float64)
        return cls(scores, np.array([bool(a) for a in gold], dtype=bool).reshape(n), if_answered,
                   squad_v2_per_question([""] * n, gold), margins)

    def metrics(self, names: Sequence[str], weights=None) -> dict[str, float]:
        """The named metrics (of ``SQUAD_V2_METRICS``) of the questions weighted by ``weights`` ((Q,), None: once
        each); fractions in [0, 1], thresholds in logits; nan where undefined (HasAns_* with no question that has an
        answer: the script leaves those keys out)."""
        w = np.ones(len(self.scores)) if weights is None else np.asarray(weights, dtype=np.float64)
        out: dict[str, float] = {}
        for name in names:
            column = 1 if name.endswith(("f1", "f1_threshold")) else 0
            if name in ("exact_match", "f1"):
                out[name] = _weighted_mean(self.scores[:, column], w)
            elif name.startswith(("has_ans_", "no_ans_")):
                subset = self.has_answer if name.startswith("has_ans_") else ~self.has_answer
                out[name] = _weighted_mean(self.scores[:, column], w * subset)
            elif name.startswith("best_"):
                if np.isnan(self.margins).all():
                    out[name] = math.nan
                    continue
                best, threshold = best_no_answer_threshold(self.margins, self.if_answered[:, column],
                                                           self.if_empty[:, column], w)
                out[name] = threshold if name.endswith("_threshold") else best
            else:
                raise ValueError(f"{name!r} is not a SQuAD 2.0 metric; expected one of {list(SQUAD_V2_METRICS)}")
        return out


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    total = weights.sum()
    return float(weights @ values / total) if total > 0 else math.nan


def squad_v2(predictions: dict[str, str], gold: dict[str, list[str]], best_spans: dict[str, str] | None = None,
             margins: dict[str, float | None] | None = None) -> dict[str, float]:
    """All of ``SQUAD_V2_METRICS`` (fractions in [0, 1]; the script prints 0..100), by question id.

    ``predictions``: id -> answer ("" = no answer), one for every gold id (the script fails on a missing one);
    ``gold``: id -> gold texts ([] = unanswerable); ``best_spans`` / ``margins``: id -> the best span (answered or
    not) and best span score - no-answer score, for best_*: the script run on the best spans with na_prob = -margin.
    """
    if not gold:
        raise ValueError("squad_v2: no gold questions")
    missing = [qid for qid in gold if qid not in predictions]
    if missing:
        raise ValueError(f"squad_v2: {len(missing)} questions have no prediction, e.g. {missing[0]!r}")
    ids = list(gold)
    questions = SquadV2Questions.score(
        [predictions[q] for q in ids], [gold[q] for q in ids],
        None if best_spans is None else [best_spans[q] for q in ids],
        None if margins is None else [margins[q] for q in ids])
    names = SQUAD_V2_METRICS if margins is not None else SQUAD_V2_METRICS[:6]
    return questions.metrics(names)
