"""flows/run_folder.py without a flow: which folder a run claims, and when the checkpoints of a taken-over
folder are set aside (the end-to-end cases, with real `bertflow` processes, are in test_run_state.py)."""

from __future__ import annotations

import json

from bert_core.spec import load_spec
from flows import run_folder
from flows.params import FinetuneParams


def claim(tmp_path, **params):
    params = FinetuneParams(task="sst2", data_dir=str(tmp_path / "data"), run_root=str(tmp_path / "runs"), **params)
    spec = load_spec(params.task)
    return run_folder.claim(params, spec, params.training.with_defaults(spec.defaults))


def test_a_taken_over_folder_keeps_its_checkpoints_unless_the_data_or_the_code_changed(tmp_path):
    with claim(tmp_path) as first:
        assert not first.taken_over and first.set_aside_if_changed("fp-1", "code-1") is None
        (first.path / "training" / "checkpoints").mkdir(parents=True)
        first.update(status=run_folder.FAILED)
    assert run_folder.read_record(first.path)["identity"]["data_fingerprint"] == "fp-1"

    with claim(tmp_path) as same:  # same parameters, data and code: resume
        assert same.taken_over and same.path == first.path
        assert same.set_aside_if_changed("fp-1", "code-1") is None and (same.path / "training").is_dir()
        same.update(status=run_folder.FAILED)

    with claim(tmp_path) as changed:
        assert changed.path == first.path
        warning = changed.set_aside_if_changed("fp-2", "code-1")
        (stale,) = changed.path.glob("training.stale-*")
        assert warning == (f"the data changed (fp-1 -> fp-2) since this folder's earlier run: its checkpoints "
                           f"moved to {stale}, training starts over")
        assert not (changed.path / "training").exists() and (stale / "checkpoints").is_dir()
        assert changed.record["set_aside"][0]["why"] == "the data changed (fp-1 -> fp-2)"
        assert changed.identity.data_fingerprint == "fp-2"

    with claim(tmp_path, drop_bad_rows=True) as other:  # another identity: a new folder
        assert not other.taken_over and other.path != first.path


def test_records_of_an_older_bertflow_are_never_taken_over(tmp_path):
    """Their identity key is of another kind: the run starts a new folder, no crash."""
    with claim(tmp_path) as first:
        first.update(status=run_folder.FAILED)
    record = run_folder.read_record(first.path)
    old = {**record, "identity_key": "0123456789abcdef", "identity": {"task": "sst2", "training": {}}}
    (first.path / run_folder.RECORD).write_text(json.dumps(old), encoding="utf-8")
    with claim(tmp_path) as second:
        assert not second.taken_over and second.path != first.path
    # Its own folder back (a retry across an upgrade): checkpoints set aside, training starts over.
    folder = run_folder.RunFolder(first.path, old, second.identity, taken_over=False, _lock=None)
    (first.path / "training").mkdir()
    warning = folder.set_aside_if_changed("fp-1", "code-1")
    assert warning.startswith("this folder's run.json was written by an older bertflow: its checkpoints moved to")
