"""The on-disk feature cache: hits skip building, any changed input misses, torn writes are ignored."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest

from bert_core.checkpoint import resolve_source
from bert_core.families import get_family
from bert_core.feature_cache import cached_features, default_cache_dir, feature_key
from bert_core.tokenizer import BertTokenizer

FAMILY = get_family("single_classification")
LABELS = ["neg", "pos"]
ROWS = [
    {"text_a": "a fine film", "text_b": None, "label": "pos", "_source": "SST-2/dev.tsv:2"},
    {"text_a": "dull", "text_b": None, "label": "neg", "_source": "SST-2/dev.tsv:3"},
]
SETTINGS = {"max_seq_length": 16}


@pytest.fixture(scope="module")
def tok() -> BertTokenizer:
    return BertTokenizer.from_folder(resolve_source(None))


class CountingBuild:
    """``build`` callable that records how often the cache had to run it."""

    def __init__(self, tok, settings=SETTINGS):
        self.tok, self.settings, self.calls = tok, settings, 0

    def __call__(self) -> list[dict]:
        self.calls += 1
        return FAMILY.features.build(ROWS, self.tok, LABELS, self.settings)


def _get(tok, tmp_path, build, settings=SETTINGS, tokenizer=None, split="eval"):
    return cached_features(FAMILY, "data-fp-1", tokenizer or tok, LABELS, settings, split, build, tmp_path)


def test_second_call_is_a_hit_and_does_not_build(tok, tmp_path):
    build = CountingBuild(tok)
    first, hit = _get(tok, tmp_path, build)
    assert not hit and build.calls == 1
    second, hit = _get(tok, tmp_path, build)
    assert hit and build.calls == 1
    assert isinstance(second, datasets.Dataset)
    assert second.to_list() == first.to_list() == build()


def test_changed_settings_tokenizer_or_split_miss(tok, tmp_path):
    build = CountingBuild(tok)
    _get(tok, tmp_path, build)
    _, hit = _get(tok, tmp_path, CountingBuild(tok, {"max_seq_length": 8}), settings={"max_seq_length": 8})
    assert not hit
    _, hit = _get(tok, tmp_path, build, split="train")
    assert not hit
    from_vocab = BertTokenizer.from_vocab(resolve_source(None) / "vocab.txt")
    assert from_vocab.fingerprint() != tok.fingerprint()
    _, hit = _get(tok, tmp_path, build, tokenizer=from_vocab)
    assert not hit


def test_settings_key_ignores_dict_order(tok):
    a = feature_key(FAMILY, "fp", tok, LABELS, {"max_seq_length": 16, "doc_stride": 4}, "eval")
    b = feature_key(FAMILY, "fp", tok, LABELS, {"doc_stride": 4, "max_seq_length": 16}, "eval")
    assert a == b != feature_key(FAMILY, "fp", tok, ["pos", "neg"], {"max_seq_length": 16}, "eval")


def test_torn_write_is_ignored(tok, tmp_path):
    # A writer that died mid-save leaves a half-written temporary folder next to where the entry goes.
    key = feature_key(FAMILY, "data-fp-1", tok, LABELS, SETTINGS, "eval")
    torn = tmp_path / f".tmp-{key}-deadbeef"
    torn.mkdir()
    (torn / "data-00000-of-00001.arrow").write_bytes(b"\x00garbage")
    build = CountingBuild(tok)
    features, hit = _get(tok, tmp_path, build)
    assert not hit and build.calls == 1 and len(features) == 2
    assert _get(tok, tmp_path, build)[1]


def test_unreadable_entry_is_rebuilt(tok, tmp_path):
    key = feature_key(FAMILY, "data-fp-1", tok, LABELS, SETTINGS, "eval")
    (tmp_path / key).mkdir()  # e.g. emptied by hand or by a disk-cleaning tool
    build = CountingBuild(tok)
    features, hit = _get(tok, tmp_path, build)
    assert not hit and build.calls == 1 and len(features) == 2


def test_failed_save_leaves_no_entry(tok, tmp_path, monkeypatch):
    def crash(self, path, *args, **kwargs):
        Path(path).mkdir(parents=True)  # got as far as creating the folder
        raise OSError("disk full")

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", crash)
    with pytest.raises(OSError, match="disk full"):
        _get(tok, tmp_path, CountingBuild(tok))
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == [], "neither an entry nor the temporary folder is left"
    build = CountingBuild(tok)
    assert not _get(tok, tmp_path, build)[1] and build.calls == 1


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BERTFLOW_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("BERTFLOW_CACHE_DIR")
    monkeypatch.setenv("BERTFLOW_HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / "cache" / "features"
