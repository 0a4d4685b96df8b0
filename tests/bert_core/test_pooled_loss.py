"""``long_text.train_on: document`` (bert_core/spec.py LongText): a training step takes whole rows, all their windows
through the encoder, and the loss is the family's on each row's pooled window logits, once per row. Checked
against a hand computation on a tiny random BERT, against the per-window loss it replaces, through accumulation
and forwards split to bound the windows per forward, end to end with a resume, and as spec errors."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from bert_core.spec import SpecError, TaskSpec, load_spec
from bert_core.training import TrainConfig, fit
from bert_core.training import recipe as recipe_module
from bert_core.training.batching import row_features, row_forwards
from bert_core.training.recipe import TrainState, epoch_batches, setup, step_forwards, train_step
from bert_core.training.state import list_checkpoints

REPO = Path(__file__).resolve().parents[2]
BASE = dict(name="toy_long", family="single_classification", labels=["neg", "pos"],
            local={"format": "tsv", "files": {"train": "toy/train.tsv", "eval": "toy/dev.tsv"}},
            columns={"text_a": "sentence", "label": "label"}, metrics=["accuracy"], primary_metric="accuracy",
            max_seq_length=16)
POS, NEG, FILL = ["good", "great", "fun"], ["bad", "terrible", "boring"], ["the", "movie", "film", "plot", "was", "very"]


def documents(n: int, seed: int) -> list[dict]:
    """Filler of 4 to 40 words (1 to 10 windows of 14 tokens, stride 4), then the word that gives the label."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = rng.choice(["neg", "pos"])
        fill = [rng.choice(FILL) for _ in range(rng.randint(4, 40))]
        rows.append({"text_a": " ".join([*fill, rng.choice(POS if label == "pos" else NEG)]), "text_b": None,
                     "label": label, "_source": f"toy:{i}"})
    return rows


def spec(train_on: str = "document", pooling: str = "mean", **fields) -> TaskSpec:
    return TaskSpec(**{**BASE, "long_text": {"stride": 4, "pooling": pooling, "train_on": train_on}, **fields})


def context(tmp_path, pretrained, task: TaskSpec, rows: list[dict], **overrides):
    cfg = TrainConfig(**{"learning_rate": 1e-3, "batch_size": 4, "epochs": 1, "seed": 3, "precision": "fp32",
                         "progress_bar": False, **overrides})
    return setup(task, cfg, tmp_path / "run", rows, rows[:4], ["neg", "pos"], pretrained, "pooled-v1", None, None,
                 cached=False)


def window_logits(ctx, feature: dict) -> torch.Tensor:
    """One window's logits (C,), alone in its forward (no padding)."""
    ids = torch.tensor([feature["input_ids"]])
    with torch.no_grad():
        return ctx.model(ids, torch.tensor([feature["token_type_ids"]]), torch.ones_like(ids)).logits[0]


def hand_pooled_loss(ctx, rows: list[int], pooling: str, weight: torch.Tensor | None = None) -> float:
    """Each row's window logits pooled by hand, cross-entropy per row (weighted as F.cross_entropy weighs), mean."""
    pooled, labels = [], []
    for r in rows:
        windows = [f for f in ctx.train_features if f["example_index"] == r]
        stacked = torch.stack([window_logits(ctx, f) for f in windows])
        pooled.append(stacked.mean(0) if pooling == "mean" else stacked.max(0).values)
        labels.append(windows[0]["labels"])
    return F.cross_entropy(torch.stack(pooled), torch.tensor(labels), weight=weight).item()


@pytest.mark.parametrize("pooling, class_weights", [("mean", None), ("max", None), ("mean", "balanced")])
def test_a_step_on_documents_has_the_loss_of_their_pooled_windows(tmp_path, tiny_no_dropout, pooling, class_weights):
    rows = documents(12, 1)
    ctx = context(tmp_path, tiny_no_dropout, spec(pooling=pooling, class_weights=class_weights), rows)
    assert ctx.train_documents == row_features(ctx.train_features) and len(ctx.train_documents) == 12
    assert ctx.steps_per_epoch == 3, "batch_size counts rows: 12 rows / 4"
    assert max(map(len, ctx.train_documents)) > 1, "some rows are read in several windows"
    weight = None
    if class_weights == "balanced":  # scikit-learn's n_rows / (n_labels * the label's rows): rows, not windows
        counts = np.bincount([ctx.train_features[d[0]]["labels"] for d in ctx.train_documents], minlength=2)
        weight = torch.tensor(12 / (2 * counts), dtype=torch.float32)
        assert ctx.meta["class_weights"] == pytest.approx({"neg": weight[0].item(), "pos": weight[1].item()})
    batch = epoch_batches(ctx, 0)[0]
    expected = hand_pooled_loss(ctx, batch, pooling, weight)
    assert train_step(ctx, TrainState(), batch, 1e-3) == pytest.approx(expected, abs=2e-6)


def test_windows_as_examples_is_another_loss(tmp_path, tiny_no_dropout):
    """One step on every row: the pooled loss (document) is not the mean of the windows' losses (windows)."""
    rows = documents(8, 2)
    on_rows = context(tmp_path, tiny_no_dropout, spec("document"), rows, batch_size=64)
    on_windows = context(tmp_path, tiny_no_dropout, spec("windows"), rows, batch_size=64)
    assert on_windows.train_documents is None and len(on_windows.train_features) > 8
    every_window = F.cross_entropy(torch.stack([window_logits(on_windows, f) for f in on_windows.train_features]),
                                   torch.tensor([f["labels"] for f in on_windows.train_features])).item()
    pooled = hand_pooled_loss(on_rows, list(range(8)), "mean")
    assert abs(pooled - every_window) > 1e-4, "a random tiny model's logits are near 0: the losses are near too"
    assert train_step(on_rows, TrainState(), epoch_batches(on_rows, 0)[0], 1e-3) == pytest.approx(pooled, abs=2e-6)
    assert train_step(on_windows, TrainState(), epoch_batches(on_windows, 0)[0], 1e-3) == pytest.approx(
        every_window, abs=2e-6)


def test_accumulation_and_bounded_forwards_keep_the_mean_over_documents(tmp_path, tiny_no_dropout, monkeypatch):
    rows = documents(12, 3)
    whole = context(tmp_path, tiny_no_dropout, spec(), rows, batch_size=8)
    batch = epoch_batches(whole, 0)[0]
    expected = hand_pooled_loss(whole, batch, "mean")
    monkeypatch.setattr(recipe_module, "MAX_WINDOWS", 4)
    split = context(tmp_path, tiny_no_dropout, spec(), rows, batch_size=8, grad_accum_steps=2)
    forwards = step_forwards(split, batch)
    assert len(forwards) > 2, "2 micro-batches, each in forwards of at most 4 windows"
    assert all(len(ids) <= 4 or len(sizes) == 1 for ids, sizes in forwards), "a longer row has a forward of its own"
    assert sorted(i for ids, _ in forwards for i in ids) == sorted(i for r in batch for i in split.train_documents[r])
    assert train_step(split, TrainState(), batch, 1e-3) == pytest.approx(expected, abs=2e-6)


def test_row_forwards_pack_whole_rows_in_order():
    assert row_forwards([[0, 1], [2], [3, 4, 5], [6, 7, 8, 9, 10], [11]], 4) == [
        ([0, 1, 2], [2, 1]), ([3, 4, 5], [3]), ([6, 7, 8, 9, 10], [5]), ([11], [1])]
    assert row_features([{"example_index": e} for e in (0, 0, 1, 2, 2, 2)]) == [[0, 1], [2], [3, 4, 5]]


def test_training_on_documents_learns_and_resumes_exactly(tmp_path, tiny_no_dropout):
    cfg = dict(learning_rate=3e-3, batch_size=4, epochs=10, seed=7, precision="fp32", progress_bar=False,
               checkpoint_every=10, log_every=1, num_threads=1)  # one thread: the same sums in both runs
    task = spec()

    def run(name, callbacks=()):
        return fit(task, TrainConfig(**cfg), tmp_path / name, documents(96, 4), documents(32, 5), ["neg", "pos"],
                   pretrained=tiny_no_dropout, data_fingerprint="pooled-v1", callbacks=callbacks, cache_dir=tmp_path / "cache")

    whole = run("whole")
    assert whole.final_step == 10 * 24, "96 rows / 4 a step, 10 epochs"
    assert whole.best_metric >= 0.9, whole.eval_metrics

    class Crash:
        def on_step(self, step, metrics):
            if step == 15:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run("cut", [Crash()])
    resumed = run("cut")
    assert resumed.resumed_from_step == 10
    a, b = (load_file(str(list_checkpoints(r.model_dir.parent / "checkpoints")[-1] / "model.safetensors"))
            for r in (whole, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("fields, problem", [
    ({"long_text": {"strategy": "head_tail", "train_on": "document"}},
     "train_on 'document' pools a row's windows; strategy 'head_tail' reads one feature per row"),
    ({"long_text": {"train_on": "rows"}}, "long_text.train_on': Input should be 'windows' or 'document'"),
    ({"family": "multi_label_classification", "metrics": ["f1_macro"], "primary_metric": "f1_macro", "columns": None,
      "long_text": {"stride": 4, "train_on": "document"}},
     "long_text.train_on 'document' (a loss on each row's pooled windows) is for single and pair classification, "
     "not 'multi_label_classification'"),
    ({"family": "pair_regression", "metrics": ["pearson"], "primary_metric": "pearson", "columns": None,
      "labels": None, "long_text": {"stride": 4, "train_on": "document"}}, "is for single and pair classification, not 'pair_regression'"),
])
def test_train_on_spec_errors(tmp_path, fields, problem):
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps({**BASE, **fields}), encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert problem in str(info.value), str(info.value)


def test_train_on_windows_is_the_default_and_left_out_of_what_is_saved():
    """Left out: specs written before train_on keep their settings, feature cache keys and checkpoint identity."""
    windows = TaskSpec(**{**BASE, "long_text": {"stride": 4}})
    assert windows.long_text.train_on == "windows" and "train_on" not in windows.long_text.model_dump()
    assert "train_on" not in windows.model_dump_json()
    assert spec().long_text.model_dump()["train_on"] == "document"
    pair = TaskSpec(**{**BASE, "family": "pair_classification", "long_text": {"stride": 4, "train_on": "document"}})
    assert pair.long_text.train_on == "document"


@pytest.mark.slow
def test_two_process_ddp_on_documents_matches_one_process(tmp_path, tiny_no_dropout):
    """Ranks get different numbers of forwards (rows of other lengths): the step all-reduces once all the same."""
    root = tmp_path / "data"
    (root / "toy").mkdir(parents=True)
    for name, rows in (("train.tsv", documents(32, 6)), ("dev.tsv", documents(16, 7))):
        lines = ["sentence\tlabel"] + [f"{r['text_a']}\t{r['label']}" for r in rows]
        (root / "toy" / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "toy.yaml").write_text(spec().model_dump_json(exclude_none=True), encoding="utf-8")  # JSON is YAML
    config = json.dumps({"batch_size": 8, "epochs": 2, "learning_rate": 3e-3, "precision": "fp32",
                         "progress_bar": False, "seed": 3, "checkpoint_every": 4})
    env = {**os.environ, "BERTFLOW_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}

    def launch(nproc: int, out: str) -> None:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "bert_core.training", str(root / "toy.yaml"), "--output-dir", str(tmp_path / out),
               "--pretrained", str(tiny_no_dropout), "--data-dir", str(root), "--config", config]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]

    launch(1, "one")
    launch(2, "two")
    a, b = (load_file(str(list_checkpoints(tmp_path / out / "checkpoints")[-1] / "model.safetensors"))
            for out in ("one", "two"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def test_the_model_card_says_the_loss_was_the_pooled_one():
    from bert_core.families import get_family

    limit = get_family("single_classification").predictions.input_limit
    assert "mean of the windows' scores, as in training" in limit(spec(), 16, ["neg", "pos"])
    assert "as in training" not in limit(spec("windows"), 16, ["neg", "pos"])
