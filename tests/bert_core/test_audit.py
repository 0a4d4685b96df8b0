"""The label audit's pieces (bert_core/audit.py): folds, out-of-fold probabilities from real fine-tunes of a tiny
random model on a learnable toy task, and cleanlab's ranking. The flipped-labels test is the one that fails when
the audit is switched off (a model that saw the held-out labels, or a ranking that ignores the probabilities)."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from bert_core.audit import (
    SUSPECT_COLUMNS,
    agreement,
    assign_folds,
    fold_probabilities,
    is_multi_label,
    rank_suspects,
    suspect_counts,
    weak_folds_warning,
)
from bert_core.families import get_family
from bert_core.training import TrainConfig
from tests.tiny_models import write_tiny_checkpoint
from tests.toy_task import SPEC, toy_rows

FLIPPED_SHARE = 0.1


def flip(rows: list[dict], share: float, seed: int) -> tuple[list[dict], set[int]]:
    """A copy of `rows` with a seeded `share` of the labels swapped (neg <-> pos), and the flipped rows' indices."""
    flipped = set(random.Random(seed).sample(range(len(rows)), round(share * len(rows))))
    other = {"neg": "pos", "pos": "neg"}
    return [{**row, "label": other[row["label"]]} if i in flipped else row for i, row in enumerate(rows)], flipped


def test_folds_are_seeded_stratified_and_cover_every_row_once():
    rows = toy_rows(90, 3)
    folds = assign_folds(rows, 3, seed=5)
    assert sorted(Counter(folds.tolist()).values()) == [30, 30, 30]
    assert (assign_folds(rows, 3, seed=5) == folds).all() and not (assign_folds(rows, 3, seed=6) == folds).all()
    share = Counter(r["label"] for r in rows)["pos"] / len(rows)
    for fold in range(3):
        held = [r for r, f in zip(rows, folds, strict=True) if f == fold]
        assert abs(Counter(r["label"] for r in held)["pos"] / len(held) - share) < 0.05
    with pytest.raises(ValueError, match="k must be"):
        assign_folds(rows, 1, seed=0)


def test_ranking_columns_order_and_suggested_label_from_given_probabilities():
    rows = [{"text_a": f"t{i}", "text_b": None, "label": label, "_source": f"f.tsv:{i + 2}"}
            for i, label in enumerate(["neg"] * 10 + ["pos"] * 10)]
    probabilities = np.array([[0.9, 0.1]] * 10 + [[0.1, 0.9]] * 10)
    probabilities[3] = [0.02, 0.98]  # a "neg" row the models call "pos": the worst
    probabilities[14] = [0.95, 0.05]  # a "pos" row they call "neg"
    suspects = rank_suspects(rows, ["neg", "pos"], probabilities)
    assert [s["row"] for s in suspects] == [3, 14]  # lowest probability of the given label first
    first = suspects[0]
    assert tuple(first) == SUSPECT_COLUMNS
    assert first == {"rank": 1, "row": 3, "source": "f.tsv:5", "text_a": "t3", "text_b": None, "given_label": "neg",
                     "suggested_label": "pos", "given_label_probability": 0.02, "label_quality": pytest.approx(0.02)}
    assert suspect_counts(suspects) == {"by_given_label": {"neg": 1, "pos": 1},
                                        "given_to_suggested": {"neg -> pos": 1, "pos -> neg": 1}}


def test_label_sets_are_ranked_with_cleanlabs_multi_label_mode():
    names = ["a", "b", "c"]
    rows = [{"text_a": f"t{i}", "text_b": None, "labels": labels, "_source": f"x:{i}"}
            for i, labels in enumerate([["a"], ["b"], ["a", "c"], ["c"]] * 6)]
    probabilities = np.array([[0.9 if n in row["labels"] else 0.1 for n in names] for row in rows])
    probabilities[5] = [0.1, 0.1, 0.9]  # given ["b"], the models say ["c"]
    suspects = rank_suspects(rows, names, probabilities, multi_label=True)
    assert suspects and suspects[0]["row"] == 5
    assert suspects[0]["given_label"] == "b" and suspects[0]["suggested_label"] == "c"
    assert suspects[0]["given_label_probability"] == pytest.approx(0.9 * 0.1 * 0.1)


def test_families_without_a_label_per_row_are_refused():
    assert is_multi_label(get_family("single_classification")) is False
    assert is_multi_label(get_family("multi_label_classification")) is True
    for family in ("pair_regression", "token_tagging", "extractive_qa"):
        with pytest.raises(ValueError, match="not supported yet"):
            is_multi_label(get_family(family))


def test_flipped_labels_are_found_far_above_chance(tmp_path):
    """120 toy rows, 10% of their labels flipped, k=3 fine-tunes of a tiny random BERT: the audit flags most
    flipped rows, and most flagged rows are flipped (chance: 10%)."""
    pretrained = write_tiny_checkpoint(tmp_path / "ckpt", seed=0)
    rows, flipped = flip(toy_rows(120, 11), FLIPPED_SHARE, seed=1)
    cfg = TrainConfig(learning_rate=3e-3, batch_size=16, epochs=10, seed=7, precision="fp32", progress_bar=False,
                      log_every=50)
    folds = assign_folds(rows, 3, seed=0)
    probabilities = np.zeros((len(rows), 2))
    for fold in range(3):
        probabilities[folds == fold] = fold_probabilities(
            SPEC, cfg, tmp_path / f"fold-{fold}", rows, folds, fold, toy_rows(48, 2), ["neg", "pos"],
            pretrained=pretrained, data_fingerprint="toy-flipped", cache_dir=tmp_path / "cache")
    flagged = {s["row"] for s in rank_suspects(rows, ["neg", "pos"], probabilities)}
    recall, precision = len(flagged & flipped) / len(flipped), len(flagged & flipped) / max(len(flagged), 1)
    assert recall >= 0.8 and precision >= 0.7, (sorted(flagged), sorted(flipped))


def test_agreement_is_how_often_the_suggestion_is_the_given_label_and_low_agreement_warns():
    names = ["neg", "pos"]
    rows = [{"label": label} for label in ["neg", "pos", "pos", "neg"]]
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.6, 0.4]])
    assert agreement(rows, names, probabilities) == 0.75
    sets = [{"labels": labels} for labels in (["a"], ["a", "b"], [])]
    assert agreement(sets, ["a", "b"], np.array([[0.9, 0.1], [0.9, 0.2], [0.1, 0.1]]), multi_label=True) == 2 / 3
    assert weak_folds_warning(10, 100, 0.9) is None  # 10% flagged: as noisy labels go
    warning = weak_folds_warning(60, 100, 0.45)
    assert warning.startswith("60% of the rows flagged") and "45%" in warning and "--epochs" in warning
