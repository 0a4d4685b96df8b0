"""The fine-tuning recipe: one readable function composing small, separately tested pieces.

    features (cached) -> model = pretrained encoder + family head -> AdamW + warmup/decay ->
    steps of accumulated micro-batches -> evaluation on the primary metric -> best model kept ->
    resumable checkpoints every N steps.

Runs as one process, or under ``torchrun --nproc-per-node N`` with DistributedDataParallel; rank 0
alone evaluates, saves and reports. Plain PyTorch: progress goes out through ``Callback`` objects,
so the pipeline layer can log to MLflow and Prefect without this module importing either.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from bert_core.checkpoint import OFFLINE_DEFAULT, load_finetuned, load_pretrained, save_finetuned
from bert_core.families import get_family
from bert_core.families.base import MODEL_INPUTS, Family
from bert_core.feature_cache import cached_features
from bert_core.spec import TaskSpec
from bert_core.training import distributed
from bert_core.training.batching import make_batch, micro_batches, step_batches
from bert_core.training.config import TrainConfig
from bert_core.training.evaluate import autocast, evaluate_features
from bert_core.training.optim import build_optimizer, lr_at, set_lr
from bert_core.training.state import list_checkpoints, load_checkpoint, save_checkpoint
from bert_core.training.threads import default_threads

# Metrics where lower is better; everything else a spec can name is higher-is-better.
LOWER_IS_BETTER: frozenset[str] = frozenset()


class Callback(Protocol):
    """Receives progress; every method is optional (see ``_notify``)."""

    def on_train_start(self, info: dict) -> None: ...
    def on_step(self, step: int, metrics: dict[str, float]) -> None: ...
    def on_evaluate(self, step: int, metrics: dict[str, float]) -> None: ...
    def on_checkpoint(self, step: int, path: Path) -> None: ...
    def on_train_end(self, result: FitResult) -> None: ...


@dataclasses.dataclass
class FitResult:
    model_dir: Path  # the best model, loadable with ``load_finetuned``
    primary_metric: str
    best_metric: float
    best_step: int
    eval_metrics: dict[str, float]  # all metrics of the best model
    final_step: int
    history: list[dict]  # one entry per log/eval event: {"step", "loss"/"lr"/..., or metric names}
    train_seconds: float
    examples_per_second: float
    tokens_per_second: float
    resumed_from_step: int | None
    precision: str
    stopped_early: bool
    train_rows: int
    eval_rows: int
    feature_stats: dict[str, Any]
    threads: int = 1  # intra-op threads the steps ran with


class TrainingDiverged(FloatingPointError):
    """Loss became NaN or infinite."""


# The task settings a fine-tuned model keeps in its meta (save_finetuned), so predicting and scoring with it
# later work as they did in training.
TASK_SETTINGS = ("max_seq_length", "doc_stride", "max_answer_length", "tag_scheme", "display_names")


def feature_settings(spec: TaskSpec, cfg: TrainConfig) -> dict:
    """What the feature builders, postprocessing and metrics need from the spec and the config."""
    settings = {"max_seq_length": cfg.max_seq_length or spec.max_seq_length}
    if spec.family == "extractive_qa":
        settings.update(doc_stride=spec.doc_stride, max_answer_length=spec.max_answer_length)
    settings.update(spec.metric_settings())  # saved with the model, so its metrics read tags the same way
    if spec.display_names:
        settings["display_names"] = spec.display_names
    return settings


def check_fits_checkpoint(settings: dict, config, pretrained) -> None:
    """Features longer than the checkpoint's position table would fail deep inside the embedding lookup."""
    if settings["max_seq_length"] > config.max_position_embeddings:
        raise ValueError(f"max_seq_length {settings['max_seq_length']} is longer than the {config.max_position_embeddings} "
                         f"positions of the pretrained checkpoint {pretrained or OFFLINE_DEFAULT}; set max_seq_length "
                         f"(in the spec or the training config) to at most {config.max_position_embeddings}")


def build_split_features(family: Family, tokenizer, rows, label_names, settings: dict, fingerprint: str,
                         split: str, cache_dir=None) -> tuple[list[dict], bool]:
    """Features of one split through the on-disk cache: (feature rows, whether it was a cache hit)."""
    features, hit = cached_features(
        family, fingerprint, tokenizer, label_names, settings, split,
        build=lambda: family.build_features(rows, tokenizer, label_names, settings), cache_dir=cache_dir,
    )
    return features.to_list(), hit


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _notify(callbacks, event: str, *args) -> None:
    for cb in callbacks:
        method = getattr(cb, event, None)
        if method is not None:
            method(*args)


def _is_better(value: float, best: float | None, metric: str) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None:
        return True
    return value < best if metric in LOWER_IS_BETTER else value > best


# TrainConfig fields that may change between an interrupted run and its resumption.
RESUME_INDIFFERENT = {"checkpoint_every", "keep_checkpoints", "log_every", "progress_bar", "num_threads",
                      "eval_batch_size"}


def _check_resumable(checkpoint: Path, resume_key: dict) -> None:
    """Refuse to resume a checkpoint written for other data or another recipe: the result would match
    neither run."""
    saved = json.loads((checkpoint / "state.json").read_text(encoding="utf-8")).get("resume_key")
    if saved is None:  # written before checkpoints recorded what they belong to
        return
    differs = sorted(k for k in resume_key.keys() | saved.keys() if resume_key.get(k) != saved.get(k))
    if differs:
        raise ValueError(f"{checkpoint.parent} holds checkpoints of another fine-tune (it differs in "
                         f"{', '.join(differs)}); use another output folder, or move that folder away to start over")


def fit(spec: TaskSpec, cfg: TrainConfig, output_dir: str | Path, train_rows: list[dict], eval_rows: list[dict],
        label_names: list[str] | None, *, pretrained: str | Path | None = None, data_fingerprint: str = "",
        callbacks=(), cache_dir=None, extra_meta: dict | None = None) -> FitResult:
    """Fine-tune the pretrained encoder + the spec's family head; keep the best model in ``output_dir/best``.

    Started again with the same ``output_dir``, it resumes from the newest complete checkpoint in
    ``output_dir/checkpoints`` and ends as an uninterrupted run would.
    """
    output_dir = Path(output_dir)
    d = distributed.setup()
    torch.set_num_threads(cfg.num_threads or default_threads())
    precision = cfg.resolved_precision(d.device)
    family = get_family(spec.family)
    callbacks = list(callbacks) if d.is_main else []

    # ---- data -> features --------------------------------------------------------------------
    train_rows = list(train_rows)[: cfg.max_train_samples]
    eval_rows = list(eval_rows)[: cfg.max_eval_samples]
    if not train_rows or not eval_rows:
        raise ValueError(f"task {spec.name}: empty split (train {len(train_rows)} rows, eval {len(eval_rows)} rows)")
    seed_everything(cfg.seed)
    encoder, tokenizer = load_pretrained(pretrained)
    settings = feature_settings(spec, cfg)
    check_fits_checkpoint(settings, encoder.config, pretrained)
    subset = f"{data_fingerprint}|train[:{cfg.max_train_samples}]|eval[:{cfg.max_eval_samples}]"
    train_features, train_hit = build_split_features(family, tokenizer, train_rows, label_names, settings, subset, "train", cache_dir)
    eval_features, eval_hit = build_split_features(family, tokenizer, eval_rows, label_names, settings, subset, "eval", cache_dir)
    stats = {"train_features": len(train_features), "eval_features": len(eval_features),
             "feature_cache_hit": train_hit and eval_hit}
    if spec.family == "token_tagging":
        stats["words_truncated"] = sum(f["words_truncated"] for f in train_features + eval_features)

    # ---- model, optimizer, schedule ----------------------------------------------------------
    model = family.build_model(encoder, label_names).to(d.device).train()
    optimizer = build_optimizer(model, cfg.learning_rate, cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_features) / cfg.batch_size)
    if d.world_size > 1:  # every rank must get a share of every micro-batch: drop the ragged tail
        steps_per_epoch = len(train_features) // cfg.batch_size
    total_steps = cfg.max_steps or math.ceil(cfg.epochs * steps_per_epoch)
    warmup_steps = int(cfg.warmup_ratio * total_steps)
    eval_every = cfg.eval_every or steps_per_epoch
    label_keys = tuple(family.label_keys)
    lengths = [len(f["input_ids"]) for f in train_features]
    meta = {"family": spec.family, "task": spec.name, "label_names": label_names, **settings,
            "primary_metric": spec.primary_metric, "metrics": list(spec.metrics), **(extra_meta or {})}

    # ---- resume ------------------------------------------------------------------------------
    ckpt_dir = output_dir / "checkpoints"
    state = {"best": None, "best_step": 0, "best_metrics": {}, "history": [], "bad_evals": 0,
             "train_seconds": 0.0, "examples": 0, "tokens": 0}
    start_step = 0
    resumed_from = None
    resume_key = json.loads(json.dumps({"data": subset, "pretrained": str(pretrained or ""), "settings": settings,
                                        **cfg.model_dump(mode="json", exclude=RESUME_INDIFFERENT)}))  # as saved
    done = list_checkpoints(ckpt_dir)
    if done:
        _check_resumable(done[-1], resume_key)
        state = load_checkpoint(done[-1], model, optimizer)
        start_step = resumed_from = state["step"]
    state["resume_key"] = resume_key
    ddp_model = model
    if d.world_size > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(model)

    info = {"total_steps": total_steps, "steps_per_epoch": steps_per_epoch, "warmup_steps": warmup_steps,
            "precision": precision, "threads": torch.get_num_threads(), "world_size": d.world_size,
            "resumed_from_step": resumed_from,
            "train_rows": len(train_rows), "eval_rows": len(eval_rows), **stats}
    _notify(callbacks, "on_train_start", info)

    def run_eval(step: int) -> bool:
        """Evaluate on rank 0, keep the best model; return whether to stop early (same on all ranks)."""
        stop = False
        if d.is_main:
            metrics, _ = evaluate_features(model, family, eval_features, eval_rows, label_names, settings,
                                           list(spec.metrics), tokenizer.pad_id, cfg.eval_batch_size, precision, d.device)
            value = metrics[spec.primary_metric]
            state["history"].append({"step": step, **{f"eval_{k}": v for k, v in metrics.items()}})
            if _is_better(value, state["best"], spec.primary_metric):
                state.update(best=value, best_step=step, best_metrics=metrics, bad_evals=0)
                _save_best(model, tokenizer, output_dir, {**meta, "step": step, "eval_metrics": metrics})
            else:
                state["bad_evals"] += 1
            _notify(callbacks, "on_evaluate", step, metrics)
            stop = cfg.early_stopping_patience is not None and state["bad_evals"] >= cfg.early_stopping_patience
        return distributed.broadcast_object(stop, d)

    # ---- the loop ----------------------------------------------------------------------------
    bar = tqdm(total=total_steps, initial=start_step, desc=f"fine-tune {spec.name}", unit="step",
               disable=not (d.is_main and cfg.progress_bar), dynamic_ncols=True)
    step, stopped_early = start_step, False
    window_start, window_examples = time.perf_counter(), 0
    while step < total_steps and not stopped_early:
        epoch, index_in_epoch = divmod(step, steps_per_epoch)
        batches = step_batches(lengths, cfg.batch_size, cfg.seed, epoch, cfg.group_by_length)[:steps_per_epoch]
        for batch_indices in batches[index_in_epoch:]:
            lr = lr_at(step, total_steps, warmup_steps, cfg.learning_rate)
            set_lr(optimizer, lr)
            loss_sum = 0.0
            micro = micro_batches(batch_indices, cfg.grad_accum_steps, d.rank, d.world_size)
            for k, indices in enumerate(micro):
                batch = {n: t.to(d.device) for n, t in make_batch(train_features, indices, tokenizer.pad_id, MODEL_INPUTS + label_keys).items()}
                # Each micro-batch's mean loss weighted by its share of the step's examples, so the
                # summed gradient is the mean over the whole step batch whatever the split.
                weight = len(indices) * d.world_size / len(batch_indices)
                sync = d.world_size == 1 or k == len(micro) - 1
                ctx = contextlib.nullcontext() if sync else ddp_model.no_sync()  # all-reduce once per step
                with ctx, autocast(precision, d.device):
                    loss = ddp_model(**batch).loss
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"loss is {loss.item()} at step {step + 1} (lr {lr:.3g}); lower the learning rate, use "
                        "fp32 precision, or check the data for extreme labels")
                (loss * weight).backward()
                loss_sum += loss.item() * weight
                state["examples"] += len(indices) * d.world_size
                state["tokens"] += int(batch["attention_mask"].sum()) * d.world_size
                window_examples += len(indices) * d.world_size
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == total_steps:
                now = time.perf_counter()
                state["train_seconds"] += now - window_start
                rate = window_examples / max(now - window_start, 1e-9)
                logged = {"loss": loss_sum, "lr": lr, "examples_per_second": rate, "epoch": step / steps_per_epoch}
                state["history"].append({"step": step, **logged})
                bar.set_postfix(loss=f"{loss_sum:.4f}", lr=f"{lr:.2e}", ex_s=f"{rate:.1f}")
                _notify(callbacks, "on_step", step, logged)
                window_start, window_examples = time.perf_counter(), 0
            if step % eval_every == 0 or step == total_steps:
                state["train_seconds"] += time.perf_counter() - window_start
                stopped_early = run_eval(step)
                window_start = time.perf_counter()
            if d.is_main and (step % cfg.checkpoint_every == 0 or step == total_steps or stopped_early):
                path = save_checkpoint(ckpt_dir, step, model, optimizer, state, cfg.keep_checkpoints)
                _notify(callbacks, "on_checkpoint", step, path)
            distributed.barrier(d)
            if step >= total_steps or stopped_early:
                break
    bar.close()

    seconds = max(state["train_seconds"], 1e-9)
    result = FitResult(
        model_dir=output_dir / "best", primary_metric=spec.primary_metric,
        best_metric=distributed.broadcast_object(state["best"], d), best_step=state["best_step"],
        eval_metrics=state["best_metrics"], final_step=step, history=state["history"], train_seconds=seconds,
        examples_per_second=state["examples"] / seconds, tokens_per_second=state["tokens"] / seconds,
        resumed_from_step=resumed_from, precision=precision, stopped_early=stopped_early,
        train_rows=len(train_rows), eval_rows=len(eval_rows), feature_stats=stats, threads=torch.get_num_threads(),
    )
    _notify(callbacks, "on_train_end", result)
    return result


def _save_best(model, tokenizer, output_dir: Path, meta: dict) -> None:
    """Replace ``best/`` atomically: write ``best.tmp/`` then swap, so a kill never leaves no best model."""
    tmp, best, old = output_dir / "best.tmp", output_dir / "best", output_dir / "best.old"
    shutil.rmtree(tmp, ignore_errors=True)
    save_finetuned(model, tokenizer, tmp, meta)
    if best.exists():
        shutil.rmtree(old, ignore_errors=True)
        best.rename(old)
    tmp.rename(best)
    shutil.rmtree(old, ignore_errors=True)


def load_best(output_dir: str | Path):
    """(model, tokenizer, meta) of a finished run's best model."""
    return load_finetuned(Path(output_dir) / "best")
