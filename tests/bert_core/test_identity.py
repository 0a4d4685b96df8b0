"""bert_core/training/identity.py: what makes a fine-tune the same one, its key, its JSON form and the
differences people read."""

from __future__ import annotations

import json

import pytest

from bert_core.checkpoint import OFFLINE_DEFAULT
from bert_core.spec import load_spec
from bert_core.training import TrainConfig
from bert_core.training.identity import RESUME_INDIFFERENT, FinetuneIdentity, data_root

SPEC = load_spec("sst2")
CFG = TrainConfig(learning_rate=3e-3, epochs=2).with_defaults(SPEC.defaults)
FP1, FP2 = "3f2a9c01b7d4e5f6" * 4, "8e1d0c55aa29b3c4" * 4  # sha256-like data fingerprints


def identity(cfg: TrainConfig = CFG, **fields) -> FinetuneIdentity:
    return FinetuneIdentity.of(SPEC, cfg, fields.pop("pretrained", None), **fields)


def test_the_same_arguments_give_the_same_key_and_any_change_another():
    base = identity(data_root="/data")
    assert base.key() == identity(data_root="/data").key() and len(base.key()) == 16
    changed = [identity(TrainConfig(learning_rate=1e-3, epochs=2).with_defaults(SPEC.defaults), data_root="/data"),
               identity(data_root="/other"), identity(data_root="/data", drop_bad_rows=True),
               identity(data_root="/data", pretrained="some/hub-model"), base.with_data(FP1)]
    assert len({base.key(), *(c.key() for c in changed)}) == 1 + len(changed)
    assert base.pretrained == OFFLINE_DEFAULT


def test_fields_that_may_change_on_resumption_are_not_part_of_it():
    """Logging, checkpoint cadence, threads, evaluation batch size: a resumed run may change them."""
    other = CFG.model_copy(update={"log_every": 1, "checkpoint_every": 3, "num_threads": 2, "eval_batch_size": 8,
                                   "progress_bar": False, "keep_checkpoints": 5, "checkpoint_minutes": 1.0})
    assert {"log_every", "num_threads"} <= RESUME_INDIFFERENT
    assert identity(other).key() == identity().key() and identity().differences(identity(other)) == []


def test_json_round_trip_and_records_of_older_bertflow():
    full = identity(data_root="/data").with_data(FP1, "abc123" * 7 + "+dirty")
    saved = json.loads(json.dumps(full.to_json()))  # as in state.json and run.json
    assert FinetuneIdentity.from_json(saved) == full and FinetuneIdentity.from_json(saved).key() == full.key()
    assert saved["data_root"] == "/data" and saved["recipe"]["learning_rate"] == 3e-3
    old_run_json = {"task": "sst2", "spec_sha256": "x", "pretrained": "p", "training": {}, "data_root": None,
                    "drop_bad_rows": False}
    old_state_json = {"data": "fp|train[:None]|eval[:None]", "pretrained": "", "settings": {}, "learning_rate": 3e-3}
    for old in (old_run_json, old_state_json, None, "x"):
        with pytest.raises(ValueError, match="not a fine-tune identity"):
            FinetuneIdentity.from_json(old)


def test_the_first_part_matches_run_folders_before_any_data_is_read():
    asked = identity(data_root="/data")
    found = asked.with_data(FP1, "c0ffee")
    assert found.before_data() == asked and found.before_data().key() == asked.key()
    assert (found.data_fingerprint, found.code_version) == (FP1, "c0ffee")


def test_differences_in_peoples_words():
    earlier = identity(data_root="/data").with_data(FP1, "a" * 40)
    assert earlier.differences(earlier) == []
    assert earlier.differences(identity(data_root="/data").with_data(FP2, "a" * 40)) == [
        "the data changed (3f2a9c01b7d4 -> 8e1d0c55aa29)"]
    assert earlier.differences(identity(data_root="/data").with_data(FP1, "b" * 40 + "+dirty")) == [
        "the code changed (aaaaaaaaaaaa -> bbbbbbbbbbbb+dirty)"]
    lr = TrainConfig(learning_rate=1e-3, epochs=2).with_defaults(SPEC.defaults)
    changes = earlier.changes(identity(lr, data_root="/data").with_data(FP1, "a" * 40))
    assert [(c.name, str(c)) for c in changes] == [("learning_rate", "learning_rate changed (0.003 -> 0.001)")]
    moved = identity(pretrained="other/model", data_root="/data").with_data(FP1)
    assert earlier.differences(moved) == [f"the pretrained checkpoint changed ({OFFLINE_DEFAULT} -> other/model)"]


def test_the_data_is_compared_by_fingerprint_when_both_sides_know_it():
    """The same bytes in another folder are the same data; before the data is read, the folder decides.
    The code version counts only when both sides recorded one (plain-Python runs record none)."""
    here = identity(data_root="/data").with_data(FP1, "c1")
    assert here.differences(identity(data_root="/moved").with_data(FP1, "c1")) == []
    assert identity(data_root="/data").differences(identity(data_root="/moved")) == [
        "the data folder changed (/data -> /moved)"]
    assert identity().differences(identity(drop_bad_rows=True)) == ["drop_bad_rows changed (false -> true)"]
    assert here.differences(identity(data_root="/data").with_data(FP1)) == []


def test_folders_resolve_to_absolute_paths(tmp_path, monkeypatch):
    (tmp_path / "ckpt").mkdir()
    monkeypatch.chdir(tmp_path)
    assert identity(pretrained="ckpt").pretrained == str(tmp_path / "ckpt")
    monkeypatch.setenv("BERTFLOW_DATA_DIR", "data")
    assert data_root(None) == str(tmp_path / "data") and data_root(tmp_path / "x") == str(tmp_path / "x")
    monkeypatch.delenv("BERTFLOW_DATA_DIR")
    assert data_root(None) is None
