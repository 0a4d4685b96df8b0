"""The fine-tuning engine on a tiny random BERT: learning, resume, NaN guard, early stopping,
gradient accumulation, 2-process DDP; and once on real weights and real SST-2 rows."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bert_core.training import TrainConfig, TrainingDiverged, fit, fit_task
from bert_core.training.state import list_checkpoints
from tests.toy_task import SPEC, fit_toy, toy_rows, write_toy_task

pytest.importorskip("transformers")
REPO = Path(__file__).resolve().parents[2]

def final_weights(result_or_dir) -> dict[str, torch.Tensor]:
    folder = result_or_dir if isinstance(result_or_dir, Path) else result_or_dir.model_dir.parent
    return load_file(str(list_checkpoints(folder / "checkpoints")[-1] / "model.safetensors"))


def test_loss_falls_and_the_task_is_learned(tmp_path, tiny):
    result = fit_toy(tmp_path, tiny, epochs=10)
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert sum(losses[-4:]) / 4 < 0.5 * sum(losses[:4]) / 4
    assert result.best_metric >= 0.9, result.eval_metrics
    assert (result.model_dir / "model.safetensors").is_file()
    assert result.final_step == 10 * 6  # 96 rows / 16 per step, 10 epochs


def test_same_seed_same_metrics(tmp_path, tiny):
    a, b = (fit_toy(tmp_path, tiny, name, epochs=1) for name in "ab")  # fit_toy pins one thread
    assert [h.get("loss") for h in a.history] == [h.get("loss") for h in b.history]
    assert a.eval_metrics == b.eval_metrics


def test_resume_after_interruption_gives_the_same_final_weights(tmp_path, tiny):
    whole = fit_toy(tmp_path, tiny, "whole", epochs=2)

    class Crash:
        def on_step(self, step, metrics):
            if step == 8:  # after the step-5 checkpoint, before the step-10 one
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_toy(tmp_path, tiny, "cut", epochs=2, callbacks=[Crash()])
    assert [p.name for p in list_checkpoints(tmp_path / "cut" / "checkpoints")] == ["step-000005"]
    (tmp_path / "cut" / "checkpoints" / "step-000010.tmp").mkdir()  # a torn write: must be ignored
    resumed = fit_toy(tmp_path, tiny, "cut", epochs=2)
    assert resumed.resumed_from_step == 5
    assert resumed.final_step == whole.final_step
    a, b = final_weights(whole), final_weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.best_metric == whole.best_metric


def test_checkpoints_of_another_fine_tune_are_never_resumed(tmp_path, tiny):
    fit_toy(tmp_path, tiny, max_steps=4, checkpoint_every=2)
    with pytest.raises(ValueError, match=r"another fine-tune \(it differs in learning_rate\)"):
        fit_toy(tmp_path, tiny, max_steps=4, checkpoint_every=2, learning_rate=1e-3)
    cfg = TrainConfig(learning_rate=3e-3, batch_size=16, epochs=4, seed=7, precision="fp32", progress_bar=False,
                      max_steps=4, checkpoint_every=2)
    with pytest.raises(ValueError, match=r"differs in data\)"):
        fit(SPEC, cfg, tmp_path / "run", toy_rows(96, 1), toy_rows(48, 2), ["neg", "pos"], pretrained=tiny,
            data_fingerprint="toy-v2", cache_dir=tmp_path / "cache")
    # What may change between an interrupted run and its resumption: logging, batch size of evaluation, checkpoint cadence.
    assert fit_toy(tmp_path, tiny, max_steps=4, checkpoint_every=3, log_every=2, eval_batch_size=8).resumed_from_step == 4


def test_nan_loss_stops_with_the_step(tmp_path, tiny):
    spec = SPEC.model_copy(update={"family": "pair_regression", "labels": None, "metrics": ["pearson"],
                                   "primary_metric": "pearson"})
    rows = [{"text_a": "good movie", "text_b": "great film", "label": 3e38, "_source": f"x:{i}"} for i in range(16)]
    cfg = TrainConfig(batch_size=8, epochs=1, precision="fp32", progress_bar=False)
    with pytest.raises(TrainingDiverged, match="at step 1"):
        fit(spec, cfg, tmp_path / "nan", rows, rows, None, pretrained=tiny, cache_dir=tmp_path / "cache")


def test_early_stopping(tmp_path, tiny):
    # A learning rate this small cannot change the accuracy: every evaluation after the first is "no better".
    result = fit_toy(tmp_path, tiny, learning_rate=1e-12, eval_every=1, early_stopping_patience=2, epochs=3)
    assert result.stopped_early
    assert result.final_step == 3
    assert result.best_step == 1


def test_gradient_accumulation_equals_the_larger_batch(tmp_path, tiny_no_dropout):
    big = fit_toy(tmp_path, tiny_no_dropout, "big", epochs=1, batch_size=16, grad_accum_steps=1)
    accum = fit_toy(tmp_path, tiny_no_dropout, "accum", epochs=1, batch_size=16, grad_accum_steps=4)
    a, b = final_weights(big), final_weights(accum)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


@pytest.mark.slow
def test_two_process_gloo_ddp_matches_one_process(tmp_path, tiny_no_dropout):
    spec_path = write_toy_task(tmp_path / "data")
    config = json.dumps({"batch_size": 16, "epochs": 2, "learning_rate": 3e-3, "precision": "fp32",
                         "progress_bar": False, "seed": 3, "checkpoint_every": 4})
    env = {**os.environ, "BERTFLOW_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}

    def launch(nproc: int, out: str) -> None:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "bert_core.training", str(spec_path), "--output-dir", str(tmp_path / out),
               "--pretrained", str(tiny_no_dropout), "--data-dir", str(tmp_path / "data"), "--config", config]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"best_metric"')]
        assert len(results) == 1 and results[0]["eval_metrics"], proc.stdout  # rank 0's line alone

    launch(1, "one")
    launch(2, "two")
    a, b = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


@pytest.mark.integration
def test_real_weights_on_real_sst2_beat_chance(tmp_path, data_dir):
    cfg = TrainConfig(max_train_samples=600, max_eval_samples=400, epochs=2, batch_size=16, learning_rate=1e-4,
                      progress_bar=False, checkpoint_every=1000)
    result = fit_task("sst2", cfg, tmp_path / "sst2", data_dir=data_dir, cache_dir=tmp_path / "cache")
    # Chance is ~0.5 (dev is 444 positive / 428 negative); MiniLM reaches ~0.8 on 600 rows.
    assert result.eval_metrics["accuracy"] > 0.7, result.eval_metrics


def test_unset_threads_default_to_the_free_cores_unless_omp_num_threads_says(monkeypatch):
    from bert_core.training import threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(threads.psutil, "cpu_percent", lambda interval, percpu: [97.0, 12.0, 80.0, 3.0])
    assert threads.default_threads() == 2  # cores 1 and 3 are free
    monkeypatch.setattr(threads.psutil, "cpu_percent", lambda interval, percpu: [99.0, 99.0, 99.0, 99.0])
    assert threads.default_threads() == 1, "never fewer than one"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setattr(threads.torch, "get_num_threads", lambda: 3)
    assert threads.default_threads() == 3


@pytest.mark.parametrize("num_threads", [None, 1])
def test_fit_follows_the_load_unless_the_config_fixes_the_threads(tmp_path, tiny, monkeypatch, num_threads):
    """Started at 1 thread after a busy moment, on a machine that is quiet from then on (a scripted sampler,
    sampled after every step): fit moves to both cores once two samples agree, records it and logs the count;
    a config that sets num_threads keeps its count."""
    from bert_core.training import recipe, threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(recipe, "default_threads", lambda: 1)
    monkeypatch.setattr(threads, "usable_cores", lambda: [0, 1])
    monkeypatch.setattr(threads, "OtherProcessesLoad", lambda cores: lambda: 0.0)
    monkeypatch.setattr(threads, "EARLY_EVERY", 0.0)
    before = torch.get_num_threads()
    try:
        result = fit_toy(tmp_path, tiny, epochs=1, num_threads=num_threads)
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    logged = [h["threads"] for h in result.history if "loss" in h]
    if num_threads is None:
        assert result.threads_used == [{"step": 0, "threads": 1}, {"step": 2, "threads": 2, "others_load": 0.0}]
        assert result.threads == after == 2 and logged == [1] + [2] * 5
    else:
        assert result.threads_used == [{"step": 0, "threads": 1}]
        assert result.threads == after == 1 and logged == [1] * 6


def test_a_checkpoint_restores_weights_optimizer_and_state_and_keeps_the_newest(tmp_path):
    from bert_core.training.state import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    for step in (5, 6, 7):
        model(torch.randn(2, 4)).sum().backward()
        optimizer.step()
        path = save_checkpoint(tmp_path / "ckpt", step, model, optimizer, {"best": 0.5, "history": []}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path / "ckpt")] == ["step-000006", "step-000007"]
    restored = torch.nn.Linear(4, 3)
    restored_optimizer = torch.optim.AdamW(restored.parameters(), lr=0.1)
    state = load_checkpoint(path, restored, restored_optimizer)
    assert state["step"] == 7 and state["best"] == 0.5
    assert all(torch.equal(restored.state_dict()[k], v) for k, v in model.state_dict().items())
    assert torch.equal(restored_optimizer.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


def test_a_failed_checkpoint_write_is_raised_and_leaves_no_checkpoint(tmp_path):
    from bert_core.training.state import save_checkpoint

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the checkpoint folder should go")
    model = torch.nn.Linear(2, 2)
    with pytest.raises(OSError):
        save_checkpoint(blocker, 1, model, torch.optim.AdamW(model.parameters()), {}, keep=1)
    assert list_checkpoints(blocker) == []


def test_sparse_embedding_update_moves_only_the_batch_rows_as_adamw_would(tiny_no_dropout):
    """embedding_update="sparse": on its first step a row of the batch gets exactly AdamW's update (both start from
    zero moments, clipping included); rows outside the batch keep their values, where dense AdamW decays them."""
    from bert_core import get_family, load_pretrained
    from bert_core.training.optim import build_optimizer, clip_gradients

    ids = torch.tensor([[2, 7, 9, 7, 3], [2, 11, 5, 3, 0]])  # 0 is [PAD]: no gradient

    def words_after_steps(update: str, steps: int) -> list[torch.Tensor]:
        torch.manual_seed(0)
        encoder, _ = load_pretrained(tiny_no_dropout)
        model = get_family("single_classification").build_model(encoder, ["neg", "pos"]).train()
        opt = build_optimizer(model, 1e-2, 0.1, update)
        words = model.bert.embeddings.word_embeddings.weight
        seen = [words.detach().clone()]
        for _ in range(steps):
            model(ids, attention_mask=(ids != 0).long(), labels=torch.tensor([0, 1])).loss.backward()
            clip_gradients(model, 0.01)  # small enough to clip: the sparse norm must equal the dense one
            opt.step()
            opt.zero_grad(set_to_none=True)
            seen.append(words.detach().clone())
        return seen

    before, dense = words_after_steps("dense", 1)
    _, sparse_first, _, sparse_last = words_after_steps("sparse", 3)
    batch_rows = torch.tensor([2, 3, 5, 7, 9, 11])
    others = torch.ones(len(before), dtype=torch.bool)
    others[batch_rows] = False
    assert torch.allclose(sparse_first[batch_rows], dense[batch_rows], atol=1e-6)
    assert not torch.equal(sparse_first[batch_rows], before[batch_rows])
    assert torch.equal(sparse_last[others], before[others])  # untouched over three sparse steps
    assert not torch.equal(dense[others], before[others])  # dense AdamW's weight decay moved them


@pytest.mark.parametrize("max_norm", [0.01, 100.0])  # clipping, and a norm too large to clip
def test_clipped_step_updates_as_clip_grad_norm_then_adamw(tiny_no_dropout, max_norm):
    """The recipe's step (``clipped_step``: the clip's factor handed to fused AdamW as its grad_scale) moves every
    weight as ``clip_grad_norm_`` followed by AdamW does, over three steps; and clipping does act at 0.01."""
    from bert_core import get_family, load_pretrained
    from bert_core.training.optim import build_optimizer, clipped_step

    ids = torch.tensor([[2, 7, 9, 7, 3], [2, 11, 5, 3, 0]])

    def weights_after(step) -> list[torch.Tensor]:
        torch.manual_seed(0)
        encoder, _ = load_pretrained(tiny_no_dropout)
        model = get_family("single_classification").build_model(encoder, ["neg", "pos"]).train()
        opt = build_optimizer(model, 1e-2, 0.1)
        for _ in range(3):
            model(ids, attention_mask=(ids != 0).long(), labels=torch.tensor([0, 1])).loss.backward()
            step(opt, model)
            opt.zero_grad(set_to_none=True)
        return [p.detach().clone() for p in model.parameters()]

    def reference(opt, model):
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        opt.step()

    ours = weights_after(lambda opt, model: clipped_step(opt, model, max_norm))
    gap = max((a - b).abs().max().item() for a, b in zip(ours, weights_after(reference)))
    unclipped = weights_after(lambda opt, model: opt.step())
    clipping = max((a - b).abs().max().item() for a, b in zip(ours, unclipped))
    assert gap < 5e-6  # rounding (5.8e-7 seen); every update is ~1e-2 (lr) in size, clipping's effect ~2e-2
    assert (clipping > 1e-4) == (max_norm == 0.01)


def test_sparse_embedding_update_learns_and_resumes_exactly(tmp_path, tiny):
    whole = fit_toy(tmp_path, tiny, "whole", epochs=2, embedding_update="sparse")

    class Crash:
        def on_step(self, step, metrics):
            if step == 8:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_toy(tmp_path, tiny, "cut", epochs=2, embedding_update="sparse", callbacks=[Crash()])
    resumed = fit_toy(tmp_path, tiny, "cut", epochs=2, embedding_update="sparse")
    assert resumed.resumed_from_step == 5
    a, b = final_weights(whole), final_weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert fit_toy(tmp_path, tiny, "long", epochs=10, embedding_update="sparse").best_metric >= 0.9  # as dense learns it


@pytest.mark.parametrize("group_by_length", [True, False])
def test_each_epoch_starts_with_its_longest_batch_and_covers_every_row_once(group_by_length):
    """The first step needs the largest activations (an out-of-memory shows at step 1; later batches fit in the
    memory it freed); the rest of the order stays the seeded one."""
    from bert_core.training.batching import step_batches

    lengths = [random.Random(i).randint(3, 120) for i in range(1000)]
    for epoch in range(3):
        batches = step_batches(lengths, 32, 7, epoch, group_by_length)
        assert sorted(i for b in batches for i in b) == list(range(1000))
        assert max(lengths[i] for i in batches[0]) == max(lengths)
        assert batches == step_batches(lengths, 32, 7, epoch, group_by_length)  # seeded: a resume replays it
    assert step_batches(lengths, 32, 7, 0, group_by_length)[1:] != step_batches(lengths, 32, 7, 1, group_by_length)[1:]


def test_the_progress_bar_in_a_log_file_writes_lines_not_redraws(tmp_path, tiny, capsys, monkeypatch):
    """Where stderr is not a terminal (pytest captures it, as a log file would), the bar writes whole lines: no
    carriage returns, the start and the end at least, one line per LOG_SECONDS at most."""
    from bert_core.training import progress

    monkeypatch.setattr(progress, "LOG_SECONDS", 3600.0)
    result = fit_toy(tmp_path, tiny, epochs=2, progress_bar=True)
    lines = [line for line in capsys.readouterr().err.split("\n") if "fine-tune toy" in line]
    assert len(lines) == 2 and not any("\r" in line for line in lines), lines
    assert " 0/12 " in lines[0] and f" {result.final_step}/12 " in lines[-1] and "loss=" in lines[-1], lines
