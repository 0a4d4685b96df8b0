"""`bertflow check`'s dry run (bert_core/dry_run.py) is the recipe's own set-up and training step, timed, and
writes nothing; its report (flows/check_report.py) says what people read. The command itself runs as a real
process in tests/flows/test_run_state.py."""

from __future__ import annotations

import pytest

from bert_core import dry_run as dry_run_module
from bert_core.dry_run import TIMED_STEPS, dry_run
from bert_core.spec import load_spec
from bert_core.training import TrainConfig
from bert_core.training.recipe import FitContext
from flows.check_report import report
from tests.tiny_models import write_tiny_checkpoint
from tests.toy_task import write_toy_task


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("dry_run")
    return {"spec": write_toy_task(root / "data"), "data": root / "data",
            "tiny": write_tiny_checkpoint(root / "tiny", seed=0)}


def test_the_estimate_times_the_recipes_own_training_step(toy, tmp_path, monkeypatch):
    """The timed steps are `train_step` on the FitContext `setup` built: gradient accumulation (and DDP, under
    torchrun) included. Each picked batch runs twice, the second timed; nothing goes to the feature cache."""
    monkeypatch.setenv("BERTFLOW_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    real_step = dry_run_module.train_step

    def spy(run, state, batch_indices, lr):
        calls.append((run, list(batch_indices)))
        return real_step(run, state, batch_indices, lr)

    monkeypatch.setattr(dry_run_module, "train_step", spy)
    spec = load_spec(toy["spec"])
    cfg = TrainConfig(batch_size=8, grad_accum_steps=2, epochs=2, precision="fp32").with_defaults(spec.defaults)
    done = dry_run(spec, cfg, toy["data"], str(toy["tiny"]))

    assert len(calls) == 2 * TIMED_STEPS and all(isinstance(run, FitContext) for run, _ in calls)
    run = calls[0][0]
    assert run.cfg.grad_accum_steps == 2 and [len(b) for _, b in calls] == [8] * (2 * TIMED_STEPS)
    assert [b for _, b in calls[::2]] == [b for _, b in calls[1::2]], "each batch untimed first, then timed"
    assert not (tmp_path / "cache").exists(), "a dry run writes no feature-cache entry"
    e = done.estimate
    assert (e.rows, e.steps, e.batch_size, e.timed_steps) == (64, 16, 8, TIMED_STEPS)
    assert e.seconds == pytest.approx(e.seconds_per_step * 16) and e.precision == "fp32"
    assert [(s.name, s.rows, s.used, s.features) for s in done.splits] == [("train", 64, 64, 64), ("eval", 32, 32, 32)]


def test_the_report_shows_the_splits_the_estimate_and_the_verdict(toy):
    spec = load_spec(toy["spec"])
    cfg = TrainConfig(batch_size=16, epochs=1, max_eval_samples=20).with_defaults(spec.defaults)
    text = report(dry_run(spec, cfg, toy["data"], str(toy["tiny"])))
    lines = text.splitlines()
    assert lines[0].startswith("toy_sentiment (single_classification): local:") and lines[2] == "labels: neg, pos"
    train = next(line for line in lines if line.startswith("train "))
    evaluation = next(line for line in lines if line.startswith("eval "))
    assert "toy/train.tsv" in train and " 64 " in train and "0 (0.0%)" in train, train
    assert " 32 " in evaluation and " 20 " in evaluation, "rows in the split, rows a run uses"
    assert "training: 64 rows, 4 steps of 16 (1 epoch(s)); " in text and f"measured over {TIMED_STEPS} steps" in text
    assert lines[-1] == "all checks passed: the data, the spec and the settings are ready for `bertflow run`"
