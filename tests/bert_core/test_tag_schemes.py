"""Tag schemes: every scheme a spec may declare loads from a hand-written CoNLL file, is scored in seqeval's
strict mode with entity counts worked by hand, and a sentence that breaks the scheme is an error naming
file, line and tag (or is repaired, when the spec asks)."""

from __future__ import annotations

import textwrap

import pytest

from bert_core import tag_schemes
from bert_core.families import get_family
from bert_core.loading import load_task_data
from bert_core.metrics import entity_prf
from bert_core.validation import DataError

WORDS = [["Ann", "Lee", "visited", "New", "York", "City", "."], ["Bob", "Carl", "met", "in", "Paris"]]
# Gold: PER "Ann Lee" (0-1), LOC "New York City" (3-5); PER "Bob" (0), PER "Carl" (1), LOC "Paris" (4).
# Predicted: PER "Ann Lee" (right), LOC "New York" (3-4, wrong end); PER "Bob Carl" (0-1, one entity where
# gold has two: wrong), LOC "Paris" (right). 5 gold, 4 predicted, 2 right:
# P = 2/4, R = 2/5, F1 = 2PR / (P + R) = 0.4 / 0.9. PER: 3 gold, 2 predicted, 1 right; LOC: 2, 2, 1.
SCHEMES = {
    "IOB1": (["I-PER I-PER O I-LOC I-LOC I-LOC O", "I-PER B-PER O O I-LOC"],
             ["I-PER I-PER O I-LOC I-LOC O O", "I-PER I-PER O O I-LOC"]),
    "IOB2": (["B-PER I-PER O B-LOC I-LOC I-LOC O", "B-PER B-PER O O B-LOC"],
             ["B-PER I-PER O B-LOC I-LOC O O", "B-PER I-PER O O B-LOC"]),
    "IOE1": (["I-PER I-PER O I-LOC I-LOC I-LOC O", "E-PER I-PER O O I-LOC"],
             ["I-PER I-PER O I-LOC I-LOC O O", "I-PER I-PER O O I-LOC"]),
    "IOE2": (["I-PER E-PER O I-LOC I-LOC E-LOC O", "E-PER E-PER O O E-LOC"],
             ["I-PER E-PER O I-LOC E-LOC O O", "I-PER E-PER O O E-LOC"]),
    "IOBES": (["B-PER E-PER O B-LOC I-LOC E-LOC O", "S-PER S-PER O O S-LOC"],
              ["B-PER E-PER O B-LOC E-LOC O O", "B-PER E-PER O O S-LOC"]),
    "BILOU": (["B-PER L-PER O B-LOC I-LOC L-LOC O", "U-PER U-PER O O U-LOC"],
              ["B-PER L-PER O B-LOC L-LOC O O", "B-PER L-PER O O U-LOC"]),
}
# One sentence per scheme that breaks it, the index of the first bad word, and the repaired spelling.
BROKEN = {
    "IOB1": ("O B-PER I-PER", 1, "O I-PER I-PER"),
    "IOB2": ("O I-PER I-PER", 1, "O B-PER I-PER"),
    "IOE1": ("I-PER E-PER O", 1, "I-PER I-PER O"),
    "IOE2": ("I-PER I-PER O", 1, "I-PER E-PER O"),
    "IOBES": ("B-PER O S-LOC", 0, "S-PER O S-LOC"),
    "BILOU": ("U-PER L-PER O", 1, "U-PER U-PER O"),
}


def conll(sentences: list[list[str]], tags: list[str]) -> str:
    blocks = ["-DOCSTART- O"]
    blocks += ["\n".join(f"{w} {t}" for w, t in zip(words, line.split(), strict=True))
               for words, line in zip(sentences, tags, strict=True)]
    return "\n\n".join(blocks) + "\n"


def write_task(tmp_path, scheme: str, train: str, repair: bool = False):
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "train.txt").write_text(train, encoding="utf-8")
    (tmp_path / "data" / "dev.txt").write_text(train, encoding="utf-8")
    (tmp_path / "spec.yaml").write_text(textwrap.dedent(f"""
        name: ner_{scheme.lower()}
        family: token_tagging
        local:
          format: conll
          files: {{train: data/train.txt, eval: data/dev.txt}}
        columns: {{tokens: 0, tags: 1}}
        tag_scheme: {scheme}
        repair_tags: {str(repair).lower()}
        metrics: [entity_f1, entity_precision, entity_recall, token_accuracy]
        primary_metric: entity_f1
    """), encoding="utf-8")
    return load_task_data(tmp_path / "spec.yaml", tmp_path)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_each_scheme_loads_and_scores_entities_as_counted_by_hand(tmp_path, scheme):
    gold, pred = SCHEMES[scheme]
    data = write_task(tmp_path, scheme, conll(WORDS, gold))
    rows = data.splits["eval"].to_list()
    assert [r["tags"] for r in rows] == [line.split() for line in gold] and data.warnings == []
    predictions = [{"tokens": r["tokens"], "tags": line.split()} for r, line in zip(rows, pred, strict=True)]
    scores = get_family("token_tagging").predictions.compute_metrics(
        predictions, rows, ["entity_precision", "entity_recall", "entity_f1"], data.label_names, {"tag_scheme": scheme})
    assert scores == pytest.approx({"entity_precision": 0.5, "entity_recall": 0.4, "entity_f1": 0.4 / 0.9})
    per_type = entity_prf([p["tags"] for p in predictions], [r["tags"] for r in rows], scheme)["per_type"]
    assert per_type["PER"] == pytest.approx({"precision": 0.5, "recall": 1 / 3, "f1": 0.4, "support": 3})
    assert per_type["LOC"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})


def test_strict_mode_counts_only_entities_spelled_as_the_scheme_spells_them():
    gold, pred = [["O", "B-PER", "O"]], [["O", "I-PER", "O"]]
    # conlleval reads the I-PER after O as an entity start: the one gold entity, found.
    assert entity_prf(pred, gold)["f1"] == 1.0
    # In IOB2 an entity starts with B-: the prediction spells no entity, so nothing is found.
    strict = entity_prf(pred, gold, "IOB2")
    assert (strict["precision"], strict["recall"], strict["f1"]) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("scheme", sorted(BROKEN))
def test_a_sentence_breaking_the_scheme_is_an_error_naming_file_line_and_tag(tmp_path, scheme):
    tags, bad, _ = BROKEN[scheme]
    good = SCHEMES[scheme][0]
    text = conll([*WORDS, ["Ann", "met", "Rome"]], [*good, tags])
    with pytest.raises(DataError) as info:
        write_task(tmp_path, scheme, text)
    message = str(info.value)
    # The third sentence starts on line 17 (DOCSTART, blank, 7 words, blank, 5 words, blank).
    assert "data/train.txt:17" in message and f"field 'tags[{bad}]'" in message, message
    assert f"breaks tag_scheme {scheme}" in message and repr(tags.split()[bad]) in message
    assert "repair_tags: true" in message


@pytest.mark.parametrize("scheme", sorted(BROKEN))
def test_repair_rewrites_the_sentence_in_the_scheme_and_reports_it(tmp_path, scheme):
    tags, _, repaired = BROKEN[scheme]
    text = conll([*WORDS, ["Ann", "met", "Rome"]], [*SCHEMES[scheme][0], tags])
    data = write_task(tmp_path, scheme, text, repair=True)
    assert data.splits["train"][2]["tags"] == repaired.split()
    assert data.splits["train"][0]["tags"] == SCHEMES[scheme][0][0].split(), "valid sentences stay as they are"
    assert len(data.warnings) == 2 and all("repaired" in w for w in data.warnings), data.warnings  # train, dev


def test_a_tag_the_scheme_cannot_hold_has_no_repair(tmp_path):
    text = conll([["Ann", "sings"]], ["NNP VBZ"])
    with pytest.raises(DataError, match=r"tag 'NNP' is not O, B-TYPE, I-TYPE \(tag_scheme IOB2\)"):
        write_task(tmp_path, "IOB2", text, repair=True)


def test_aliases_and_unknown_schemes():
    assert tag_schemes.canonical("bio") == "IOB2" and tag_schemes.canonical("BIOES") == "IOBES"
    with pytest.raises(ValueError, match="unknown tag scheme 'IOX'"):
        tag_schemes.canonical("IOX")
