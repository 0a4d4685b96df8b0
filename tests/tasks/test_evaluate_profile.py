"""The evaluate task saves the eval split's input profile in the model's folder (so it is logged with the model,
the reference of scoring's drift): on the per-label tests' tiny multi-label model."""

from __future__ import annotations

from pathlib import Path

from bert_core.drift import PROFILE_FILE, read_profile
from tests.tracking.test_per_label import evaluated  # noqa: F401 (the fixture)


def test_evaluate_writes_the_eval_splits_profile_into_the_model_folder(evaluated):  # noqa: F811
    _, _, trained, evaluation = evaluated
    assert evaluation.files["input_profile"] == str(Path(trained.model_dir) / PROFILE_FILE)
    profile = read_profile(trained.model_dir)
    assert profile["rows"] == 30 and profile["max_seq_length"] == 32
    assert {"token_length", "cut_share", "unk_rate", "predicted_label", "top_score"} <= set(profile["items"])
    assert abs(sum(profile["items"]["token_length"]["shares"]) - 1) < 1e-9
