"""The fine-tuning recipe, written the way torchtune and litgpt write one: ``fit`` reads top to bottom,

    setup    features (cached) -> model = pretrained encoder + family head (starting_model.py: a fine-tuned
             model's encoder, and its head when the labels are the same) -> AdamW -> schedule -> resume
    loop     train_step (accumulated micro-batches, clipping, AdamW) per batch; at their cadence: a log
             event, an evaluation keeping the best model, a resumable checkpoint
    result   a FitResult: the best model's folder and metrics, the history, the speed

and each piece is a small function tested on its own. Runs as one process, or under ``torchrun
--nproc-per-node N`` with DistributedDataParallel; rank 0 alone evaluates, saves and reports. Plain PyTorch:
progress goes out through ``Callback`` objects, so the pipeline layer can log to MLflow and Prefect without
this module importing either.
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

from bert_core.checkpoint import save_finetuned
from bert_core.dropout import mask_source
from bert_core.families import Family, get_family
from bert_core.families.base import MODEL_INPUTS
from bert_core.families.text_encoding import MAX_WINDOWS, trains_on_documents, window_pooling
from bert_core.spec import TaskSpec
from bert_core.tokenizer import BertTokenizer
from bert_core.training import distributed
from bert_core.training.batching import make_batch, micro_batches, row_features, row_forwards, step_batches
from bert_core.training.config import TrainConfig
from bert_core.training.features import (
    build_split_features,
    check_fits_checkpoint,
    feature_settings,
    features_fingerprint,
    spec_columns,
)
from bert_core.training.identity import FinetuneIdentity
from bert_core.training.inference import autocast, evaluate_and_tune
from bert_core.training.optim import build_optimizer, clipped_step, lr_at, set_lr
from bert_core.training.progress import progress_bar
from bert_core.training.starting_model import starting_model
from bert_core.training.state import list_checkpoints, load_checkpoint, save_checkpoint
from bert_core.training.threads import ThreadController, default_threads
from bert_core.training.word_gradient import keep_word_gradient


class Callback(Protocol):
    """Receives progress; every method is optional (see ``_notify``)."""

    def on_train_start(self, info: dict) -> None: ...
    def on_step(self, step: int, metrics: dict[str, float]) -> None: ...
    def on_evaluate(self, step: int, metrics: dict[str, float]) -> bool | None: ...  # True: stop training
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
    threads: int = 1  # intra-op threads the steps ran with (at the end)
    dropout_mask: str = "torch"  # the CPU dropout mask the steps drew (bert_core/dropout.py): "lanes" or "torch"
    threads_used: list[dict] = dataclasses.field(default_factory=list)  # ThreadController.history: the count
    # at the start and at each change, [{"step", "threads"}, ...]


class TrainingDiverged(FloatingPointError):
    """Loss became NaN or infinite."""


@dataclasses.dataclass
class TrainState:
    """What a resumable checkpoint records besides weights, optimizer and RNG (its ``state.json``)."""

    step: int = 0  # optimizer steps done
    best: float | None = None  # the best primary dev metric so far
    best_step: int = 0
    best_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    history: list[dict] = dataclasses.field(default_factory=list)
    bad_evals: int = 0  # evaluations since the best one (early stopping)
    train_seconds: float = 0.0  # the loop's time, evaluations left out
    examples: int = 0
    tokens: int = 0  # real (non-padding) tokens
    identity: dict = dataclasses.field(default_factory=dict)  # FinetuneIdentity.to_json(): what the checkpoints belong to

    @classmethod
    def from_checkpoint(cls, saved: dict) -> TrainState:
        return cls(**{k: v for k, v in saved.items() if k in {f.name for f in dataclasses.fields(cls)}})


@dataclasses.dataclass
class FitContext:
    """Everything a fine-tune works with once it is set up."""

    spec: TaskSpec
    cfg: TrainConfig
    family: Family
    dist: distributed.Dist
    precision: str
    tokenizer: BertTokenizer
    model: torch.nn.Module  # the family head on the encoder
    ddp_model: torch.nn.Module  # the same model, wrapped for DDP when several processes train
    optimizer: torch.optim.Optimizer
    train_rows: list[dict]
    eval_rows: list[dict]
    label_names: list[str] | None
    settings: dict  # feature_settings: what features, postprocessing and metrics need
    train_features: list[dict]
    eval_features: list[dict]
    feature_stats: dict
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    eval_every: int
    output_dir: Path
    meta: dict  # saved with the best model
    train_documents: list[list[int]] | None = None  # long_text.train_on document: each row's feature indices


def fit(spec: TaskSpec, cfg: TrainConfig, output_dir: str | Path, train_rows: list[dict], eval_rows: list[dict],
        label_names: list[str] | None, *, pretrained: str | Path | None = None, data_fingerprint: str = "",
        callbacks=(), cache_dir=None, extra_meta: dict | None = None,
        identity: FinetuneIdentity | None = None, pretrained_name: str | None = None) -> FitResult:
    """Fine-tune the pretrained encoder + the spec's family head; keep the best model in ``output_dir/best``.

    ``pretrained``: a Hugging Face checkpoint (folder or hub id; None: the offline default) or a folder bertflow
    fine-tuned, whose encoder (and head, when its labels are the task's) it starts from (``starting_model.py``).
    Started again with the same ``output_dir``, it resumes from the newest complete checkpoint in
    ``output_dir/checkpoints`` and ends as an uninterrupted run would; checkpoints of another fine-tune are
    refused. ``identity``: what this fine-tune is (``bert_core/training/identity.py``), recorded in every
    checkpoint; None: built from the arguments, as a flow builds it (a given one must agree with them).
    ``pretrained_name``: how the identity names ``pretrained`` when it is a folder resolved from something this
    package cannot read (a registered model: its URI, version and model id); None: the folder itself.
    """
    built = FinetuneIdentity.of(spec, cfg, pretrained_name or pretrained, data_fingerprint=data_fingerprint)
    identity = _checked_identity(identity, built)
    ctx = setup(spec, cfg, Path(output_dir), train_rows, eval_rows, label_names, pretrained, data_fingerprint,
                cache_dir, extra_meta)
    callbacks = list(callbacks) if ctx.dist.is_main else []
    state = resume(ctx, identity)
    resumed_from = state.step or None
    _notify(callbacks, "on_train_start", {
        "total_steps": ctx.total_steps, "steps_per_epoch": ctx.steps_per_epoch, "warmup_steps": ctx.warmup_steps,
        "precision": ctx.precision, "threads": torch.get_num_threads(), "world_size": ctx.dist.world_size,
        "resumed_from_step": resumed_from, "train_rows": len(ctx.train_rows), "eval_rows": len(ctx.eval_rows),
        **ctx.feature_stats})
    # Unless the config, OMP_NUM_THREADS or torchrun fixed it, the thread count follows the load (threads.py).
    threads = ThreadController.for_run(cfg.num_threads, ctx.dist.world_size, state.step)
    kept = keep_word_gradient(ctx.model, ctx.dist.world_size, cfg.embedding_update)  # no 47 MB refill a step
    try:
        stopped_early = train_loop(ctx, state, callbacks, threads)
    finally:
        if kept is not None:
            kept.remove()

    seconds = max(state.train_seconds, 1e-9)
    result = FitResult(
        model_dir=ctx.output_dir / "best", primary_metric=spec.primary_metric,
        best_metric=distributed.broadcast_object(state.best, ctx.dist), best_step=state.best_step,
        eval_metrics=state.best_metrics, final_step=state.step, history=state.history, train_seconds=seconds,
        examples_per_second=state.examples / seconds, tokens_per_second=state.tokens / seconds,
        resumed_from_step=resumed_from, precision=ctx.precision, stopped_early=stopped_early,
        train_rows=len(ctx.train_rows), eval_rows=len(ctx.eval_rows), feature_stats=ctx.feature_stats,
        threads=torch.get_num_threads(), threads_used=threads.history,
        dropout_mask=mask_source() if ctx.dist.device.type == "cpu" else "torch")
    _notify(callbacks, "on_train_end", result)
    return result


# ---- setup ---------------------------------------------------------------------------------------------
def setup(spec: TaskSpec, cfg: TrainConfig, output_dir: Path, train_rows: list[dict], eval_rows: list[dict],
          label_names: list[str] | None, pretrained, data_fingerprint: str, cache_dir, extra_meta: dict | None,
          *, cached: bool = True) -> FitContext:
    """Features (through the cache), the model, AdamW and the schedule's lengths: everything but resume.
    ``cached`` False: the features are built afresh and not stored (a dry run, ``bert_core/dry_run.py``)."""
    d = distributed.setup()
    torch.set_num_threads(cfg.num_threads or default_threads())
    family = get_family(spec.family)
    train_rows = list(train_rows)[: cfg.max_train_samples]
    eval_rows = list(eval_rows)[: cfg.max_eval_samples]
    if not train_rows or not eval_rows:
        raise ValueError(f"task {spec.name}: empty split (train {len(train_rows)} rows, eval {len(eval_rows)} rows)")
    if cfg.embedding_update == "sparse" and d.world_size > 1:
        raise ValueError("embedding_update 'sparse' runs in one process only (DDP would all-reduce a dense copy); "
                         "use 'dense' with torchrun")
    seed_everything(cfg.seed)
    start = starting_model(family, label_names, pretrained)
    tokenizer, settings = start.tokenizer, feature_settings(spec, cfg)
    check_fits_checkpoint(settings, start.model.bert.config, pretrained)
    rows = features_fingerprint(data_fingerprint, cfg, "train")
    train_features, train_hit = build_split_features(family, tokenizer, train_rows, label_names, settings, rows,
                                                     "train", cache_dir, cached)
    eval_features, eval_hit = build_split_features(family, tokenizer, eval_rows, label_names, settings, rows,
                                                   "eval", cache_dir, cached)
    model = start.model.to(d.device).train()
    weighed = family.weigh_loss(model, train_features, settings, label_names)  # e.g. the class weights used
    documents = row_features(train_features) if trains_on_documents(settings) else None  # batches of rows
    examples = len(documents) if documents is not None else len(train_features)
    steps_per_epoch = math.ceil(examples / cfg.batch_size)
    if d.world_size > 1:  # every rank must get a share of every micro-batch: drop the ragged tail
        steps_per_epoch = examples // cfg.batch_size
    total_steps = cfg.max_steps or math.ceil(cfg.epochs * steps_per_epoch)
    return FitContext(
        spec=spec, cfg=cfg, family=family, dist=d, precision=cfg.resolved_precision(d.device), tokenizer=tokenizer,
        model=model, ddp_model=torch.nn.parallel.DistributedDataParallel(model) if d.world_size > 1 else model,
        optimizer=build_optimizer(model, cfg.learning_rate, cfg.weight_decay, cfg.embedding_update),
        train_rows=train_rows,
        eval_rows=eval_rows, label_names=label_names, settings=settings, train_features=train_features,
        eval_features=eval_features,
        feature_stats={"train_features": len(train_features), "eval_features": len(eval_features),
                       "feature_cache_hit": train_hit and eval_hit,
                       **family.features.stats(train_features + eval_features)},
        steps_per_epoch=steps_per_epoch, total_steps=total_steps, warmup_steps=int(cfg.warmup_ratio * total_steps),
        eval_every=cfg.eval_every or steps_per_epoch, output_dir=output_dir,
        meta={"family": spec.family, "task": spec.name, "label_names": label_names, **settings, **weighed,
              "primary_metric": spec.primary_metric, "metrics": list(spec.metrics),
              "spec_columns": spec_columns(spec), **({"parent": start.parent} if start.parent else {}),
              **(extra_meta or {})},
        train_documents=documents)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resume(ctx: FitContext, identity: FinetuneIdentity) -> TrainState:
    """The newest complete checkpoint's state (weights and optimizer restored in place), else a fresh one."""
    done = list_checkpoints(ctx.output_dir / "checkpoints")
    state = TrainState()
    if done:
        _check_resumable(done[-1], identity)
        state = TrainState.from_checkpoint(load_checkpoint(done[-1], ctx.model, ctx.optimizer))
    state.identity = identity.to_json()
    return state


def _checked_identity(given: FinetuneIdentity | None, built: FinetuneIdentity) -> FinetuneIdentity:
    """``given`` (it may know more: the data root, the code version) if it names the fine-tune ``fit``'s
    arguments make, else a ValueError; ``built`` when none is given."""
    if given is None:
        return built
    if differs := given.differences(built):
        raise ValueError(f"fit was given the identity of another fine-tune than its arguments: {'; '.join(differs)}")
    return given


def _check_resumable(checkpoint: Path, identity: FinetuneIdentity) -> None:
    """Refuse to resume a checkpoint written for another fine-tune (other data, another recipe, another
    pretrained checkpoint): the result would match neither run."""
    saved = json.loads((checkpoint / "state.json").read_text(encoding="utf-8")).get("identity")
    move_away = "use another output folder, or move that folder away to start over"
    try:
        earlier = FinetuneIdentity.from_json(saved)
    except ValueError:  # written before checkpoints recorded a FinetuneIdentity
        raise ValueError(f"{checkpoint.parent} holds checkpoints that do not say which fine-tune they belong to "
                         f"(written by an older bertflow); {move_away}") from None
    if changes := earlier.changes(identity):
        raise ValueError(f"{checkpoint.parent} holds checkpoints of another fine-tune (it differs in "
                         f"{', '.join(c.name for c in changes)}): {'; '.join(map(str, changes))}; {move_away}")


# ---- the loop ------------------------------------------------------------------------------------------
def train_loop(ctx: FitContext, state: TrainState, callbacks, threads: ThreadController | None = None) -> bool:
    """Steps from ``state.step`` to the end, with log events, evaluations and checkpoints at their cadence;
    returns whether early stopping ended it. ``threads``: re-decides the thread count after each step."""
    cfg, d = ctx.cfg, ctx.dist
    bar = progress_bar(ctx.total_steps, state.step, f"fine-tune {ctx.spec.name}", d.is_main and cfg.progress_bar)
    stopped_early = False
    # A log window's throughput counts its training time only: an evaluation inside it is left out.
    window_start, window_examples, window_seconds = time.perf_counter(), state.examples, 0.0
    last_checkpoint = time.monotonic()
    while state.step < ctx.total_steps and not stopped_early:
        epoch, index_in_epoch = divmod(state.step, ctx.steps_per_epoch)
        batches = epoch_batches(ctx, epoch)
        for batch_indices in batches[index_in_epoch:]:
            lr = lr_at(state.step, ctx.total_steps, ctx.warmup_steps, cfg.learning_rate)
            loss = train_step(ctx, state, batch_indices, lr)
            state.step += 1
            if threads is not None:
                threads.after_step(state.step)
            bar.update(1)
            if state.step % cfg.log_every == 0 or state.step == ctx.total_steps:
                now = time.perf_counter()
                state.train_seconds += now - window_start
                window_seconds += now - window_start
                rate = (state.examples - window_examples) / max(window_seconds, 1e-9)
                logged = {"loss": loss, "lr": lr, "examples_per_second": rate, "epoch": state.step / ctx.steps_per_epoch,
                          "threads": torch.get_num_threads()}
                state.history.append({"step": state.step, **logged})
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", ex_s=f"{rate:.1f}", refresh=False)
                _notify(callbacks, "on_step", state.step, logged)
                window_start, window_examples, window_seconds = time.perf_counter(), state.examples, 0.0
            if state.step % ctx.eval_every == 0 or state.step == ctx.total_steps:
                now = time.perf_counter()
                state.train_seconds += now - window_start
                window_seconds += now - window_start
                stopped_early = evaluate_and_select(ctx, state, callbacks)
                window_start = time.perf_counter()
            last = state.step >= ctx.total_steps or stopped_early
            if d.is_main and (_checkpoint_due(cfg, state.step, last_checkpoint) or last):
                path = save_checkpoint(ctx.output_dir / "checkpoints", state.step, ctx.model, ctx.optimizer,
                                       dataclasses.asdict(state), cfg.keep_checkpoints)
                last_checkpoint = time.monotonic()
                _notify(callbacks, "on_checkpoint", state.step, path)
            distributed.barrier(d)
            if last:
                break
    bar.close()
    return stopped_early


def _checkpoint_due(cfg: TrainConfig, step: int, last: float) -> bool:
    by_steps = cfg.checkpoint_every is not None and step % cfg.checkpoint_every == 0
    by_time = cfg.checkpoint_minutes is not None and time.monotonic() - last >= cfg.checkpoint_minutes * 60
    return by_steps or by_time


def epoch_batches(ctx: FitContext, epoch: int) -> list[list[int]]:
    """The epoch's steps (``step_batches``): feature indices, or row indices with ``train_on: document``."""
    lengths = [len(f["input_ids"]) for f in ctx.train_features]
    if ctx.train_documents is not None:  # a row's length: its windows' tokens
        lengths = [sum(lengths[i] for i in row) for row in ctx.train_documents]
    return step_batches(lengths, ctx.cfg.batch_size, ctx.cfg.seed, epoch, ctx.cfg.group_by_length)[:ctx.steps_per_epoch]


def step_forwards(ctx: FitContext, batch_indices: list[int]) -> list[tuple[list[int], list[int] | None]]:
    """This process's forwards of one step: (feature indices, None) per accumulation micro-batch; with
    ``train_on: document`` (batch_indices are rows) each micro-batch's rows packed whole into forwards of at most
    MAX_WINDOWS windows: (their windows' feature indices, windows per row)."""
    micro = micro_batches(batch_indices, ctx.cfg.grad_accum_steps, ctx.dist.rank, ctx.dist.world_size)
    if ctx.train_documents is None:
        return [(indices, None) for indices in micro]
    return [f for rows in micro for f in row_forwards([ctx.train_documents[r] for r in rows], MAX_WINDOWS)]


def train_step(ctx: FitContext, state: TrainState, batch_indices: list[int], lr: float) -> float:
    """One optimizer step on one batch: this process's share of each accumulation micro-batch, forward and
    backward with every forward's mean loss weighted by its share of the batch (so the gradient is the
    whole batch's mean loss's), clipping, AdamW. Returns the batch's mean loss. With ``train_on: document`` the
    batch is rows and the loss each row's, on its pooled windows (``SequenceClassifier``)."""
    cfg, d = ctx.cfg, ctx.dist
    set_lr(ctx.optimizer, lr)
    loss_sum = 0.0
    forwards = step_forwards(ctx, batch_indices)
    for k, (indices, rows) in enumerate(forwards):
        batch = {n: t.to(d.device) for n, t in make_batch(ctx.train_features, indices, ctx.tokenizer.pad_id,
                                                           MODEL_INPUTS + tuple(ctx.family.features.label_keys)).items()}
        pooled = {} if rows is None else {"windows_per_row": rows, "pooling": window_pooling(ctx.settings)}
        weight = len(rows or indices) * d.world_size / len(batch_indices)
        sync = d.world_size == 1 or k == len(forwards) - 1
        sync_scope = contextlib.nullcontext() if sync else ctx.ddp_model.no_sync()  # all-reduce once per step
        with sync_scope, autocast(ctx.precision, d.device):
            loss = ctx.ddp_model(**batch, **pooled).loss
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"loss is {loss.item()} at step {state.step + 1} (lr {lr:.3g}); lower the learning "
                                   "rate, use fp32 precision, or check the data for extreme labels")
        (loss * weight).backward()
        loss_sum += loss.item() * weight
        state.examples += len(indices) * d.world_size
        state.tokens += int(batch["attention_mask"].sum()) * d.world_size
    clipped_step(ctx.optimizer, ctx.model, cfg.max_grad_norm)
    ctx.optimizer.zero_grad(set_to_none=True)
    return loss_sum


def evaluate_and_select(ctx: FitContext, state: TrainState, callbacks) -> bool:
    """Score the eval split on rank 0 (with the settings the family tunes on it, saved with the model) and keep
    the model if it is the best so far; returns whether to stop early (the same answer on every rank)."""
    stop = False
    if ctx.dist.is_main:
        metrics, _, learnt = evaluate_and_tune(ctx.model, ctx.family, ctx.eval_features, ctx.eval_rows,
                                               ctx.label_names, ctx.settings, list(ctx.spec.metrics),
                                               ctx.tokenizer.pad_id, ctx.cfg.eval_batch_size, ctx.precision,
                                               ctx.dist.device)
        state.history.append({"step": state.step, **{f"eval_{k}": v for k, v in metrics.items()}})
        if _is_better(metrics[ctx.spec.primary_metric], state.best):
            state.best, state.best_step, state.best_metrics, state.bad_evals = (
                metrics[ctx.spec.primary_metric], state.step, metrics, 0)
            save_best(ctx, {**ctx.meta, **learnt, "step": state.step, "eval_metrics": metrics})
        else:
            state.bad_evals += 1
        # A callback may stop training too, e.g. a sweep's pruner (bert_core/search.py).
        asked_to_stop = any(_notify(callbacks, "on_evaluate", state.step, metrics))
        patience = ctx.cfg.early_stopping_patience
        stop = asked_to_stop or (patience is not None and state.bad_evals >= patience)
    return distributed.broadcast_object(stop, ctx.dist)


def _is_better(value: float | None, best: float | None) -> bool:
    """Every metric a spec can name is higher-is-better; NaN (e.g. a correlation of constant predictions) never is."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return best is None or value > best


def save_best(ctx: FitContext, meta: dict) -> None:
    """Replace ``best/`` atomically: write ``best.tmp/`` then swap, so a kill never leaves no best model."""
    tmp, best, old = ctx.output_dir / "best.tmp", ctx.output_dir / "best", ctx.output_dir / "best.old"
    shutil.rmtree(tmp, ignore_errors=True)
    save_finetuned(ctx.model, ctx.tokenizer, tmp, meta)
    if best.exists():
        shutil.rmtree(old, ignore_errors=True)
        best.rename(old)
    tmp.rename(best)
    shutil.rmtree(old, ignore_errors=True)


def _notify(callbacks, event: str, *args) -> list:
    """Call `event` on every callback that has it; their answers."""
    return [method(*args) for cb in callbacks if (method := getattr(cb, event, None)) is not None]
