"""bert_core.drift: PSI on worked examples computed by hand, the bins a reference fixes, and a profile's items."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bert_core import BertTokenizer, get_family
from bert_core.drift import (
    EPSILON,
    answered,
    binned,
    categories,
    compare_profiles,
    drifted_items,
    input_profile,
    noise_p_values,
    psi,
)
from tests.tiny_models import VOCAB


def test_psi_by_hand():
    # (0.5-0.4) ln(0.5/0.4) + (0.3-0.4) ln(0.3/0.4) + 0 = 0.1 * 0.223144 + 0.1 * 0.287682
    assert psi([0.5, 0.3, 0.2], [0.4, 0.4, 0.2]) == pytest.approx(0.0510826, abs=1e-7)
    assert psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0
    # An empty reference bin counts as EPSILON = 1e-4: (0.9-1) ln(0.9) + (0.1-1e-4) ln(0.1/1e-4)
    assert EPSILON == 1e-4
    assert psi([0.9, 0.1], [1.0, 0.0]) == pytest.approx(0.1 * 0.1053605 + 0.0999 * 6.9077553, abs=1e-6)


def test_shares_compare_as_two_bins_and_categories_by_name():
    reference = {"rows": 10, "items": {"unk_rate": {"kind": "share", "value": 0.02},
                                       "predicted_label": {"kind": "categories", "shares": {"neg": 0.5, "pos": 0.5}}}}
    profile = {"rows": 10, "items": {"unk_rate": {"kind": "share", "value": 0.10},
                                     "predicted_label": {"kind": "categories", "shares": {"pos": 0.9, "neg": 0.1}}}}
    psis = compare_profiles(profile, reference)
    assert psis["unk_rate"] == pytest.approx(0.08 * math.log(5) + (-0.08) * math.log(0.9 / 0.98), abs=1e-9)
    assert psis["predicted_label"] == pytest.approx(0.4 * math.log(1.8) - 0.4 * math.log(0.2), abs=1e-9)
    assert drifted_items(psis, 0.25) == ["predicted_label"]
    assert drifted_items(psis, 0.1) == ["unk_rate", "predicted_label"]


def test_bins_are_the_references_and_longer_than_its_longest_is_a_bin_of_its_own():
    reference = binned(list(range(1, 11)), with_max=True)  # deciles 1.9 .. 9.1, then the longest, 10
    assert reference["edges"][-1] == 10 and len(reference["shares"]) == len(reference["edges"]) + 1
    assert reference["shares"][-1] == 0.0
    longer = binned([11, 12, 50, 10], reference)
    assert longer["shares"][-1] == 0.75 and longer["shares"][-2] == 0.25  # (9.1, 10] holds the 10
    # A category the reference never saw is "(other)".
    assert categories(["a", "b", "zzz"], categories(["a", "b"]))["shares"] == pytest.approx(
        {"a": 1 / 3, "b": 1 / 3, "(other)": 1 / 3})


def test_a_profile_of_texts_and_classifications(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer.from_vocab(tmp_path / "vocab.txt")
    family = get_family("single_classification")
    rows = [{"text_a": "the movie was good"}, {"text_a": "zebra quantum the film " * 10}]
    responses = [{"label": "pos", "label_value": "pos", "score": 0.75}, {"label": "neg", "label_value": "neg", "score": 0.25}]
    profile = input_profile(rows, responses, tokenizer, family, {"max_seq_length": 16}, label_names=["neg", "pos", "mid"])
    items = profile["items"]
    assert items["cut_share"]["value"] == 0.5  # 42 tokens > 16; 6 are not
    assert items["unk_rate"]["count"] == 20 and items["unk_rate"]["total"] == 4 + 40  # zebra, quantum: [UNK]
    assert items["predicted_label"]["shares"] == {"mid": 0.0, "neg": 0.5, "pos": 0.5}
    assert profile["mean_top_score"] == 0.5
    assert compare_profiles(input_profile(rows, responses, tokenizer, family, {"max_seq_length": 16}, profile),
                            profile) == dict.fromkeys(items, 0.0)


def test_what_a_model_answered_comes_from_its_response_columns():
    assert answered([{"labels": ["a", "b"], "probabilities": {}}, {"labels": [], "probabilities": {}}]) == (
        "predicted_label", ["a", "b", "(none)"], False)
    assert answered([{"tags": ["O", "B-PER"]}])[0:2] == ("predicted_tag", ["O", "B-PER"])
    assert answered([{"answer": "", "score": 1.0}, {"answer": "in paris", "score": 2.0}])[1] == ["no answer", "2"]
    assert answered([{"score": 3.5}]) == ("predicted_score", [3.5], True)


WHAT_IT_ANSWERED = {"single_classification": "predicted_label", "pair_classification": "predicted_label",
                    "pair_regression": "predicted_score", "token_tagging": "predicted_tag",
                    "extractive_qa": "answer_length"}


@pytest.mark.parametrize("family", list(WHAT_IT_ANSWERED))
def test_every_familys_dev_profile_is_written_and_compares_to_itself_as_zero(family, tmp_path):
    """What tasks/evaluate.py does for each family: its rows and people-ready predictions -> the model folder's
    profile; the same rows answered the same way again are no drift."""
    from bert_core import BertConfig, BertEncoder, save_finetuned
    from bert_core.drift import PROFILE_FILE, profile_model_dir, read_profile
    from bert_core.predict import Predictor
    from tests.tiny_models import TINY
    from tests.tracking.test_pyfunc import EXAMPLE_ROWS, LABELS

    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = get_family(family).build_model(BertEncoder(BertConfig(**TINY)), LABELS[family]).eval()
    meta = {"family": family, "label_names": LABELS[family], "task": "demo", "max_seq_length": 128,
            "doc_stride": 32, "max_answer_length": 10}
    folder = save_finetuned(model, BertTokenizer.from_vocab(tmp_path / "vocab.txt"), tmp_path / "m", meta)
    rows = EXAMPLE_ROWS[family] * 3
    profile_model_dir(folder, rows, Predictor(folder).predict(rows))
    profile = read_profile(folder)
    assert (folder / PROFILE_FILE).is_file() and profile["rows"] == 3
    assert WHAT_IT_ANSWERED[family] in profile["items"]
    assert ("top_score" in profile["items"]) == (family not in ("pair_regression", "token_tagging"))
    assert set(compare_profiles(profile, profile).values()) == {0.0}


def lengths_profile(lengths, reference=None) -> dict:
    item = binned([float(n) for n in lengths], reference and reference["items"]["token_length"], with_max=not reference)
    return {"rows": len(lengths), "items": {"token_length": item}}


def test_a_few_rows_pass_the_threshold_by_chance_and_do_not_drift():
    """A file of 5 rows of dev's own kind has a PSI far over 0.25 (most bins empty): within sampling noise, so no
    drift; 5 rows all longer than anything in dev do drift. The p-value is the same on every call."""
    rng = np.random.default_rng(1)
    reference = lengths_profile(rng.integers(3, 31, 400))
    few = lengths_profile([4, 12, 17, 23, 29], reference)
    psis, p_values = compare_profiles(few, reference), noise_p_values(few, reference)
    assert psis["token_length"] > 1 and p_values["token_length"] > 0.05
    assert drifted_items(psis, 0.25) == ["token_length"] and drifted_items(psis, 0.25, p_values) == []
    assert noise_p_values(few, reference) == p_values
    longer = lengths_profile([40, 45, 50, 60, 70], reference)
    assert drifted_items(compare_profiles(longer, reference), 0.25, noise_p_values(longer, reference)) == ["token_length"]


@pytest.mark.parametrize("rows", [5, 20, 300])
def test_samples_of_the_references_own_distribution_rarely_drift(rows):
    """Over 200 files drawn from dev's distribution, at most 5% are called drifted (SIGNIFICANCE is 1%; small files'
    discrete PSIs give a little more), whatever their size; shifted by 3 tokens, 300 rows always drift."""
    rng = np.random.default_rng(rows)
    reference = lengths_profile(rng.integers(3, 31, 400))
    called = 0
    for _ in range(200):
        sample = lengths_profile(rng.integers(3, 31, rows), reference)
        called += bool(drifted_items(compare_profiles(sample, reference), 0.25, noise_p_values(sample, reference)))
    assert called <= 10, called
    if rows == 300:
        shifted = lengths_profile(rng.integers(6, 34, rows), reference)
        assert drifted_items(compare_profiles(shifted, reference), 0.1, noise_p_values(shifted, reference))


def test_the_unk_rate_is_judged_on_its_word_pieces_not_its_rows():
    """3% [UNK] pieces against dev's 1%: over 10 rows of 10 pieces (100 pieces, 3 unknown) that is noise; over
    10 rows of 100 pieces (1,000 pieces, 30 unknown), it is not."""
    def unk(rows: int, count: int, total: int) -> dict:
        return {"rows": rows, "items": {"unk_rate": {"kind": "share", "value": count / total, "count": count,
                                                     "total": total}}}

    reference = unk(400, 400, 40_000)
    assert noise_p_values(unk(10, 3, 100), reference)["unk_rate"] > 0.05
    assert noise_p_values(unk(10, 30, 1000), reference)["unk_rate"] < 0.01
