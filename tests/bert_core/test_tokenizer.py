"""The tokenizer wrapper: segment ids, truncation, offsets, word ids, vocab.txt vs tokenizer.json."""

from __future__ import annotations

import pytest

from bert_core.checkpoint import resolve_source
from bert_core.tokenizer import BertTokenizer


@pytest.fixture(scope="module")
def tok() -> BertTokenizer:
    return BertTokenizer.from_folder(resolve_source(None))


def test_pair_has_cls_sep_and_segment_ids(tok):
    e = tok.encode("the cat sat", "on the mat")
    assert e.input_ids[0] == tok.cls_id and e.input_ids[-1] == tok.sep_id
    first_sep = e.input_ids.index(tok.sep_id)
    assert e.token_type_ids == [0] * (first_sep + 1) + [1] * (len(e) - first_sep - 1)
    assert e.sequence_ids == [None, 0, 0, 0, None, 1, 1, 1, None]


def test_longest_first_truncation(tok):
    long, short = "word " * 50, "two words"
    e = tok.encode(long, short, max_length=16)
    assert len(e) == 16 and e.overflow > 0
    assert e.sequence_ids.count(1) == 2, "longest-first cuts the long text and keeps the short one"
    assert len(tok.encode(long, short, max_length=None)) > 16
    assert tok.encode("short", max_length=16).overflow == 0


def test_offsets_slice_back_to_the_original_text(tok):
    text = "Café déjà-vu, naïve Zoë's “quotes” — and 3.5% off!"
    e = tok.encode(text)
    pieces = [text[a:b] for (a, b), s in zip(e.offsets, e.sequence_ids) if s == 0]
    assert "".join(pieces) == text.replace(" ", "")
    # lowercase + accent stripping happens in the ids, never in what the offsets point at
    assert pieces[0] == "Café" or text[e.offsets[1][0]:e.offsets[1][1]].startswith("Caf")


def test_word_ids_for_pre_split_words(tok):
    words = ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."]
    e = tok.encode(words, is_pretokenized=True)
    assert e.word_ids[0] is None and e.word_ids[-1] is None
    assert sorted({w for w in e.word_ids if w is not None}) == list(range(len(words)))
    for w, (a, b) in zip(e.word_ids, e.offsets):
        if w is not None:  # offsets of pre-split input index into their own word
            assert words[w][a:b]


def test_batch_encoding_matches_single(tok):
    texts, pairs = ["a first text", "second"], ["its pair", "another pair here"]
    batch = tok.encode_batch(texts, pairs, max_length=32)
    assert [b.input_ids for b in batch] == [tok.encode(t, p, max_length=32).input_ids for t, p in zip(texts, pairs)]


def test_vocab_txt_builds_the_same_wordpiece_as_tokenizer_json(tok):
    folder = resolve_source(None)
    from_vocab = BertTokenizer.from_vocab(folder / "vocab.txt", lowercase=True)
    for text in ["Hello, World! Unbelievably tokenized.", "Naïve café in Zürich", "GPU-accelerated 3.14"]:
        assert from_vocab.encode(text).input_ids == tok.encode(text).input_ids
        assert from_vocab.encode(text).offsets == tok.encode(text).offsets


def test_question_passage_windows_overlap(tok):
    context = " ".join(f"word{i}" for i in range(200))
    windows = tok.encode_windows("which word?", context, max_length=64, stride=16)
    assert len(windows) > 1 and all(len(w) <= 64 for w in windows)
    for a, b in zip(windows, windows[1:]):
        a_ctx = [o for o, s in zip(a.offsets, a.sequence_ids) if s == 1]
        b_ctx = [o for o, s in zip(b.offsets, b.sequence_ids) if s == 1]
        assert a_ctx[-16:] == b_ctx[:16], "consecutive windows share `stride` passage tokens"
