"""A fine-tune without the training: what ``bertflow check`` runs (``flows/check_report.py`` prints it).

``dry_run(spec, cfg)`` does what a run does before its first optimizer step, with the recipe's own pieces, and
writes nothing (no checkpoint, no feature-cache entry, no MLflow record):
- loads every split and runs every data check (``bert_core.loading``: rows, then the family's checks);
- the recipe's ``setup``: the settings checked against the pretrained checkpoint (``max_seq_length`` vs its
  positions), the features of the train and eval splits, the model, AdamW and the schedule's length; then the
  features of every other split, with the same settings (``fit`` and the evaluation would fail there otherwise);
- times a few of the recipe's own training steps (``train_step``: accumulation, DDP, clipping, AdamW) on this
  machine to estimate the training time.
It returns a ``DryRun``: rows per split, label / tag / score distribution, token lengths before truncation and how
many rows ``max_seq_length`` cuts (QA: windows per question), the estimate, the data's warnings, and suggestions
(``long_text`` when many rows are cut).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from bert_core.checkpoint import OFFLINE_DEFAULT
from bert_core.families.text_encoding import suggested_stride
from bert_core.loading import TaskData, load_task_data
from bert_core.spec import TaskSpec
from bert_core.training.config import TrainConfig
from bert_core.training.features import build_split_features, effective_spec
from bert_core.training.recipe import FitContext, TrainState, epoch_batches, setup, train_step

TIMED_STEPS = 3  # each after an untimed step on the same batch
# Suggest `long_text` when more than this share of a split's rows is cut at max_seq_length: a tenth of the rows
# losing their end is a tenth of the data the model never reads (the reviews, tickets, articles).
LONG_TEXT_SUGGESTED_ABOVE = 0.10


@dataclasses.dataclass
class SplitSummary:
    name: str
    origin: str  # file (or hub split)
    rows: int  # rows in the split, after validation
    used: int  # rows a run uses (max_train_samples / max_eval_samples)
    features: int  # model inputs built from the used rows (QA: one per passage window)
    labels: str  # the label (tag) or score distribution, in a few words (the family's `describe_labels`)
    tokens: dict[str, int]  # p50, p90, p99, max tokens per used row before truncation
    over_max: int  # used rows longer than max_seq_length (QA: split into several windows)


@dataclasses.dataclass
class TrainingEstimate:
    rows: int
    steps: int
    batch_size: int
    epochs: float
    seconds_per_step: float  # median of the timed steps
    seconds: float
    precision: str
    threads: int
    timed_steps: int  # steps measured (TIMED_STEPS, fewer when an epoch has fewer batches)


@dataclasses.dataclass
class DryRun:
    task: str
    family: str
    source: str
    fingerprint: str
    pretrained: str
    label_names: list[str] | None
    display_names: dict[str, str]  # label value -> the name people read (the spec's display_names)
    max_seq_length: int
    splits: list[SplitSummary]
    warnings: list[str]
    dropped: list[str]
    estimate: TrainingEstimate
    suggestions: list[str] = dataclasses.field(default_factory=list)  # spec changes worth making, for people


def dry_run(spec: TaskSpec, cfg: TrainConfig, data_dir: str | Path | None = None, pretrained: str | None = None,
            drop_bad_rows: bool = False) -> DryRun:
    """Everything a fine-tune of ``spec`` checks and builds before training; raises what the run would raise.
    ``cfg`` must already hold the spec's defaults (``TrainConfig.with_defaults``)."""
    spec = effective_spec(spec, cfg)  # the config's class weights and threshold, checked with the data as the spec's
    data = load_task_data(spec, data_dir, drop_bad_rows=drop_bad_rows)
    # Nothing is written under the output folder: a dry run never reaches the recipe's resume or loop.
    ctx = setup(spec, cfg, Path(os.devnull), data.splits["train"].to_list(), data.splits["eval"].to_list(),
                data.label_names, pretrained, data.fingerprint, None, None, cached=False)
    summaries = [_summarise(ctx, data, split) for split in data.splits]
    return DryRun(spec.name, spec.family, data.source, data.fingerprint, pretrained or OFFLINE_DEFAULT, data.label_names,
                  spec.display_names or {}, ctx.settings["max_seq_length"], summaries, data.warnings, data.dropped,
                  _estimate(ctx), long_text_suggestion(ctx, summaries))


def _summarise(ctx: FitContext, data: TaskData, split: str) -> SplitSummary:
    """A split's numbers: its rows and the features the run's settings make of the rows a run uses."""
    if split in ("train", "eval"):
        rows, features = (ctx.train_rows, ctx.train_features) if split == "train" else (ctx.eval_rows, ctx.eval_features)
    else:
        rows = data.splits[split].to_list()[: ctx.cfg.max_eval_samples]
        features, _ = build_split_features(ctx.family, ctx.tokenizer, rows, data.label_names, ctx.settings, "", split,
                                           cached=False)
    lengths = ctx.family.features.token_lengths(rows, ctx.tokenizer)
    p50, p90, p99 = (int(v) for v in np.percentile(lengths, [50, 90, 99]))
    return SplitSummary(split, data.origins.get(split, split), len(data.splits[split]), len(rows), len(features),
                        ctx.family.rows.describe_labels(rows), {"p50": p50, "p90": p90, "p99": p99, "max": max(lengths)},
                        sum(n > ctx.settings["max_seq_length"] for n in lengths))


def long_text_suggestion(ctx: FitContext, summaries: list[SplitSummary]) -> list[str]:
    """``long_text`` suggested, when the family reads it, the spec has none and more than
    ``LONG_TEXT_SUGGESTED_ABOVE`` of a split's rows are cut; else []."""
    if ctx.spec.long_text is not None or "long_text" not in ctx.family.rows.spec_fields:
        return []
    cut = [s for s in summaries if s.over_max > LONG_TEXT_SUGGESTED_ABOVE * s.used]
    if not cut:
        return []
    shares = ", ".join(f"{s.over_max / s.used:.0%} of the {s.name} rows (p90 {s.tokens['p90']} tokens)" for s in cut)
    stride = suggested_stride(ctx.settings["max_seq_length"])
    return [f"{shares} are longer than max_seq_length {ctx.settings['max_seq_length']} and cut there: add "
            f"`long_text: {{stride: {stride}}}` to the spec to read them whole, in overlapping windows whose scores "
            "are pooled, or `long_text: {strategy: head_tail}` to keep their first and last tokens at no extra cost"]


def _estimate(ctx: FitContext) -> TrainingEstimate:
    """Time a few of the recipe's optimizer steps on batches from across the first epoch. Each batch runs once
    untimed first: the first step at a new sequence length pays one-off kernel set-up, which a real run pays once
    per length and then amortises over thousands of steps."""
    cfg = ctx.cfg
    batches = epoch_batches(ctx, 0)
    picked = batches[:: max(1, ctx.steps_per_epoch // TIMED_STEPS)][:TIMED_STEPS]
    state, times = TrainState(), []
    for indices in (i for batch in picked for i in (batch, batch)):
        start = time.perf_counter()
        train_step(ctx, state, indices, cfg.learning_rate)
        times.append(time.perf_counter() - start)
    per_step = statistics.median(times[1::2])
    return TrainingEstimate(len(ctx.train_rows), ctx.total_steps, cfg.batch_size, cfg.epochs, per_step,
                            per_step * ctx.total_steps, ctx.precision, torch.get_num_threads(), len(picked))
