"""Golden tests for bert_core.metrics: every expected number is worked out by hand in a comment."""

import ast
from pathlib import Path

import pytest

from bert_core import metrics
from bert_core.families import classification, regression
from bert_core.metrics import (
    accuracy,
    entity_prf,
    f1_macro,
    f1_micro,
    f1_weighted,
    matthews_corr,
    normalize_answer,
    pearson,
    positive_class_f1,
    precision_macro,
    recall_macro,
    spearman,
    squad_em_f1,
    token_accuracy,
)

approx = pytest.approx

# ---------------------------------------------------------------- GLUE


def test_accuracy():
    # hits at positions 0, 1, 3; miss at 2 -> 3/4
    assert accuracy([1, 0, 1, 1], [1, 0, 0, 1]) == approx(0.75)


def test_matthews_corr():
    preds = [1, 1, 0, 0, 1, 0]
    labels = [1, 1, 0, 0, 0, 1]
    # TP=2 (0,1) TN=2 (2,3) FP=1 (4) FN=1 (5)
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (4 - 1) / sqrt(3*3*3*3) = 3/9
    assert matthews_corr(preds, labels) == approx(1 / 3)
    # every prediction wrong -> perfectly anti-correlated
    assert matthews_corr([0, 0, 1, 1], [1, 1, 0, 0]) == approx(-1.0)
    # a collapsed CoLA model (one class only) has a zero denominator; defined as 0, not nan
    assert matthews_corr([1, 1, 1, 1], [1, 0, 1, 0]) == 0.0


def test_positive_class_f1_scores_the_positive_class_only():
    preds = [1, 1, 1, 1, 0, 0]
    labels = [1, 0, 0, 1, 1, 0]
    # class 1: TP=2 (0,3) FP=2 (1,2) FN=1 (4) -> P=1/2, R=2/3, F1 = 2PR/(P+R) = (2/3)/(7/6) = 4/7
    assert positive_class_f1(preds, labels) == approx(4 / 7)
    # class 0: predicted {4,5}, gold {1,2,5}, TP=1 -> P=1/2, R=1/3, F1 = (1/3)/(5/6) = 2/5
    assert positive_class_f1(preds, labels, positive=0) == approx(2 / 5)


def test_pearson():
    # deviations from the means (2, 2): x = -1, 0, 1 ; y = -1, 1, 0
    # r = sum(xy) / sqrt(sum(x^2) sum(y^2)) = (1 + 0 + 0) / sqrt(2 * 2) = 1/2
    assert pearson([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == approx(0.5)


def test_spearman_uses_ranks_with_average_ties():
    # ranks 1,2,3,4 vs 1,3,2,4 (the outlier 100 is just rank 4): d^2 = 0+1+1+0 = 2
    # rho = 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 12 / 60 = 0.8
    assert spearman([1.0, 2.0, 3.0, 100.0], [10.0, 30.0, 20.0, 40.0]) == approx(0.8)
    # tie -> average ranks 1, 2.5, 2.5, 4 vs 1, 2, 3, 4; Pearson of the ranks:
    # deviations -1.5, 0, 0, 1.5 and -1.5, -.5, .5, 1.5 -> 4.5 / sqrt(4.5 * 5) = sqrt(0.9)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == approx(0.9**0.5)


def test_the_families_map_spec_names_to_functions():
    # A spec's "f1" is GLUE's positive-class F1 in classification; QA's "f1" (SQuAD token F1) is not in these tables.
    assert classification.METRICS == {
        "accuracy": accuracy,
        "matthews_corr": matthews_corr,
        "f1": positive_class_f1,
        "f1_macro": f1_macro,
        "f1_micro": f1_micro,
        "f1_weighted": f1_weighted,
        "precision_macro": precision_macro,
        "recall_macro": recall_macro,
    }
    assert regression.METRICS == {"pearson": pearson, "spearman": spearman}


def test_multiclass_averages_on_a_worked_example():
    gold = [0, 0, 0, 1, 1, 2]
    pred = [0, 0, 1, 1, 2, 2]
    # class 0: tp 2, fp 0, fn 1 -> P 1, R 2/3, F1 0.8 (support 3)
    # class 1: tp 1, fp 1, fn 1 -> P 1/2, R 1/2, F1 1/2 (support 2)
    # class 2: tp 1, fp 1, fn 0 -> P 1/2, R 1, F1 2/3 (support 1)
    assert f1_macro(pred, gold) == approx((0.8 + 0.5 + 2 / 3) / 3)
    assert f1_weighted(pred, gold) == approx((3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6)
    assert f1_micro(pred, gold) == approx(4 / 6)  # pooled: tp 4, fp 2, fn 2 = accuracy
    assert precision_macro(pred, gold) == approx((1 + 0.5 + 0.5) / 3)
    assert recall_macro(pred, gold) == approx((2 / 3 + 0.5 + 1) / 3)


def test_metrics_module_imports_no_framework():
    # bert_core must stay importable without Prefect / MLflow, and metrics without torch too.
    tree = ast.parse(Path(metrics.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {name.split(".")[0] for name in imported} & {"torch", "prefect", "mlflow"}


# ---------------------------------------------------------------- POS: token accuracy


def test_token_accuracy_counts_words_not_sentences():
    pred = [["DT", "NN", "VBZ"], ["NNP", "."]]
    gold = [["DT", "NN", "VBD"], ["NNP", "."]]
    # 4 of 5 words right -> 0.8 (a mean of per-sentence accuracies would give (2/3 + 1) / 2 = 0.83)
    assert token_accuracy(pred, gold) == approx(0.8)
    with pytest.raises(ValueError):
        token_accuracy([["DT", "NN"]], [["DT"]])


# ---------------------------------------------------------------- NER: conlleval entity P/R/F1

# The same sentences, entities and mistakes in both encodings, as conlleval input ("word gold pred").
# IOB1 (original CoNLL-2003): I- everywhere, B- only for an entity right after one of the same type.
CONLL_IOB1 = """\
EU I-ORG I-ORG
rejects O O
German I-MISC I-MISC
call O O
to O O
boycott O O
British I-MISC I-LOC
lamb O O
. O O

Peter I-PER I-PER
Blackburn I-PER O
visited O O
the O O
Belgium I-LOC I-LOC
Netherlands B-LOC I-LOC
border O O

He O I-PER
flew O O
from O O
Paris I-LOC O
to O O
New I-LOC I-LOC
York I-LOC I-LOC

Washington I-LOC I-LOC
denied O O
meeting O O
Boris I-PER I-PER
Yeltsin I-PER I-LOC
in O O
Kiev I-LOC O
or O O
Moscow I-LOC I-LOC
"""

# IOB2 / BIO: every entity starts with B-.
CONLL_IOB2 = """\
EU B-ORG B-ORG
rejects O O
German B-MISC B-MISC
call O O
to O O
boycott O O
British B-MISC B-LOC
lamb O O
. O O

Peter B-PER B-PER
Blackburn I-PER O
visited O O
the O O
Belgium B-LOC B-LOC
Netherlands B-LOC I-LOC
border O O

He O B-PER
flew O O
from O O
Paris B-LOC O
to O O
New B-LOC B-LOC
York I-LOC I-LOC

Washington B-LOC B-LOC
denied O O
meeting O O
Boris B-PER B-PER
Yeltsin I-PER B-LOC
in O O
Kiev B-LOC O
or O O
Moscow B-LOC B-LOC
"""


def parse_conll(text: str) -> tuple[list[list[str]], list[list[str]]]:
    """conlleval input -> (pred_tags, gold_tags), one list per sentence (blank line = boundary)."""
    pred, gold = [], []
    for block in text.strip().split("\n\n"):
        rows = [line.split() for line in block.splitlines()]
        gold.append([row[-2] for row in rows])
        pred.append([row[-1] for row in rows])
    return pred, gold


# Hand count, following conlleval's chunk rules (a B- starts a chunk; so does an I- after O,
# after the sentence start or after another type):
#   gold chunks (12): EU/ORG, German/MISC, British/MISC, Peter Blackburn/PER, Belgium/LOC,
#     Netherlands/LOC (IOB1: B- after same-type I- = new chunk), Paris/LOC, New York/LOC (ends its
#     sentence), Washington/LOC (the sentence break keeps it apart from "New York"),
#     Boris Yeltsin/PER, Kiev/LOC, Moscow/LOC (ends the file)
#   predicted chunks (11) and their fate:
#     EU/ORG          correct
#     German/MISC     correct
#     British/LOC     wrong type
#     Peter/PER       wrong boundary (gold is Peter Blackburn)
#     Belgium Netherlands/LOC  wrong boundary (two gold chunks merged)
#     He/PER          spurious                      (Paris/LOC: missed)
#     New York/LOC    correct
#     Washington/LOC  correct
#     Boris/PER, Yeltsin/LOC   "I-PER I-LOC": a type change starts a chunk -> two wrong chunks
#                                                   (Kiev/LOC: missed)
#     Moscow/LOC      correct
#   correct = 5 -> P = 5/11, R = 5/12, F1 = 2PR/(P+R) = 2*5/(11+12) = 10/23
#   per type    correct  predicted  gold   P     R     F1 = 2*correct/(predicted+gold)
#     LOC          3         6        7    3/6   3/7   6/13
#     MISC         1         1        2    1     1/2   2/3
#     ORG          1         1        1    1     1     1
#     PER          0         3        2    0     0     0
EXPECTED_PER_TYPE = {
    "LOC": {"precision": 1 / 2, "recall": 3 / 7, "f1": 6 / 13, "support": 7},
    "MISC": {"precision": 1.0, "recall": 1 / 2, "f1": 2 / 3, "support": 2},
    "ORG": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1},
    "PER": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2},
}


@pytest.mark.parametrize("text", [CONLL_IOB1, CONLL_IOB2], ids=["IOB1", "IOB2"])
def test_entity_prf_matches_conlleval_hand_count(text):
    pred, gold = parse_conll(text)
    result = entity_prf(pred, gold)
    assert result["precision"] == approx(5 / 11)
    assert result["recall"] == approx(5 / 12)
    assert result["f1"] == approx(10 / 23)
    assert result["per_type"].keys() == EXPECTED_PER_TYPE.keys()
    for name, expected in EXPECTED_PER_TYPE.items():
        assert result["per_type"][name] == approx(expected), name


def test_entity_prf_same_numbers_for_both_encodings():
    assert entity_prf(*parse_conll(CONLL_IOB1)) == entity_prf(*parse_conll(CONLL_IOB2))


@pytest.mark.parametrize(
    ("sentences", "expected_chunks"),
    [
        ([["I-PER", "B-PER"]], {"PER": 2}),  # IOB1: B- after same-type I- starts a second entity
        ([["I-LOC", "I-PER"]], {"LOC": 1, "PER": 1}),  # I- after another type starts a chunk
        ([["B-LOC", "I-PER"]], {"LOC": 1, "PER": 1}),
        ([["O", "I-PER", "I-PER"]], {"PER": 1}),  # I- after O starts one chunk, I- continues it
        ([["I-LOC"], ["I-LOC"]], {"LOC": 2}),  # a sentence break ends every chunk
    ],
)
def test_conlleval_chunk_boundaries(sentences, expected_chunks):
    per_type = entity_prf(sentences, sentences)["per_type"]
    assert {name: scores["support"] for name, scores in per_type.items()} == expected_chunks


def test_entity_prf_is_zero_without_predictions_or_gold():
    nothing_predicted = entity_prf([["O", "O"]], [["B-PER", "O"]])
    assert (nothing_predicted["precision"], nothing_predicted["recall"], nothing_predicted["f1"]) == (0, 0, 0)
    nothing_gold = entity_prf([["B-PER", "O"]], [["O", "O"]])
    assert (nothing_gold["precision"], nothing_gold["recall"], nothing_gold["f1"]) == (0, 0, 0)


def test_entity_prf_rejects_what_conlleval_would_count_differently():
    with pytest.raises(ValueError, match="S-PER"):  # IOBES: seqeval and conlleval disagree
        entity_prf([["S-PER"]], [["S-PER"]])
    with pytest.raises(ValueError):  # one word short
        entity_prf([["B-PER"]], [["B-PER", "O"]])


# ---------------------------------------------------------------- SQuAD v1.1


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("The Eiffel Tower!", "eiffel tower"),  # case, punctuation, leading article
        ("  an  apple,\ta pear ", "apple pear"),  # articles anywhere; whitespace collapsed
        ("Theatre of the Absurd", "theatre of absurd"),  # "the" only as a whole word
        ("Tom's U.S.A.", "toms usa"),  # punctuation deleted, not replaced by spaces
    ],
)
def test_normalize_answer(raw, normalized):
    assert normalize_answer(raw) == normalized


def test_squad_em_f1_hand_computed():
    gold = {
        "q1": ["Eiffel Tower", "Paris"],
        "q2": ["1889", "March 1889"],
        "q3": ["Gustave Eiffel"],
        "q4": ["Seine"],  # no prediction -> scores 0
    }
    predictions = {
        "q1": "the Eiffel tower!",  # "eiffel tower" == "eiffel tower" -> EM 1, F1 1
        # "in year 1889" (3 tokens): vs "1889" overlap 1, P=1/3 R=1 -> F1 = (2/3)/(4/3) = 1/2;
        # vs "march 1889" overlap 1, P=1/3 R=1/2 -> F1 = (1/3)/(5/6) = 2/5; max = 1/2, EM 0
        "q2": "in the year 1889",
        # Counter overlap: "eiffel" twice in the prediction but once in gold counts once:
        # P=1/3 R=1/2 -> F1 = (1/3)/(5/6) = 2/5, EM 0
        "q3": "Eiffel Eiffel company",
        "q_unknown": "ignored",  # not a gold id: the official script never looks at it
    }
    scores = squad_em_f1(predictions, gold)
    # mean over the 4 gold ids: EM = (1 + 0 + 0 + 0) / 4; F1 = (1 + 1/2 + 2/5 + 0) / 4 = 0.475
    assert scores["exact_match"] == approx(0.25)
    assert scores["f1"] == approx(0.475)


def test_squad_v11_scores_empty_answers_like_the_official_script():
    # Both normalise to "": the strings are equal (EM 1) but share no token (v1.1 F1 0, not 1).
    assert squad_em_f1({"q": "The"}, {"q": ["a"]}) == {"exact_match": 1.0, "f1": 0.0}
