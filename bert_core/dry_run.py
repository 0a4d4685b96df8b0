"""A fine-tune without the training: what ``bertflow check`` runs and prints.

``dry_run(spec, cfg)`` does what a run does before its first optimizer step, and writes nothing (no
checkpoint, no feature-cache entry, no MLflow record):
- loads every split and runs every data check (``bert_core.loading``: rows, then the family's checks);
- builds the features of every split with the run's settings (``fit`` would fail there otherwise);
- checks the settings against the pretrained checkpoint (``max_seq_length`` vs its positions);
- times a few real training steps on this machine to estimate the training time.
``report(result)`` turns it into the text people read: rows per split, label / tag / score distribution,
token lengths before truncation and how many rows ``max_seq_length`` cuts (QA: windows per question).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from bert_core.checkpoint import OFFLINE_DEFAULT, load_pretrained
from bert_core.families import get_family
from bert_core.families.base import MODEL_INPUTS
from bert_core.loading import TaskData, load_task_data
from bert_core.spec import TaskSpec
from bert_core.training.batching import make_batch, step_batches
from bert_core.training.config import TrainConfig
from bert_core.training.evaluate import CPU, autocast
from bert_core.training.features import check_fits_checkpoint, feature_settings
from bert_core.training.optim import build_optimizer, clip_gradients
from bert_core.training.recipe import seed_everything
from bert_core.training.threads import default_threads

TIMED_STEPS = 3  # each after an untimed step on the same batch


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


def dry_run(spec: TaskSpec, cfg: TrainConfig, data_dir: str | Path | None = None, pretrained: str | None = None,
            drop_bad_rows: bool = False) -> DryRun:
    """Everything a fine-tune of ``spec`` checks and builds before training; raises what the run would raise.
    ``cfg`` must already hold the spec's defaults (``TrainConfig.with_defaults``)."""
    torch.set_num_threads(cfg.num_threads or default_threads())
    data = load_task_data(spec, data_dir, drop_bad_rows=drop_bad_rows)
    family = get_family(spec.family)
    encoder, tokenizer = load_pretrained(pretrained)
    settings = feature_settings(spec, cfg)
    check_fits_checkpoint(settings, encoder.config, pretrained)
    summaries, train_features = [], []
    for split, dataset in data.splits.items():
        limit = cfg.max_train_samples if split == "train" else cfg.max_eval_samples
        rows = dataset.to_list()[:limit]
        features = family.build_features(rows, tokenizer, data.label_names, settings)
        summaries.append(_summarise(split, data, rows, len(dataset), features, family.token_lengths(rows, tokenizer),
                                    settings["max_seq_length"], family.describe_labels(rows)))
        if split == "train":
            train_features = features
    estimate = _estimate(family, encoder, data.label_names, train_features, cfg, tokenizer.pad_id, summaries[0].used)
    return DryRun(spec.name, spec.family, data.source, data.fingerprint, pretrained or OFFLINE_DEFAULT, data.label_names,
                  spec.display_names or {}, settings["max_seq_length"], summaries, data.warnings, data.dropped, estimate)


def _summarise(split: str, data: TaskData, rows: list[dict], total: int, features: list[dict], lengths: list[int],
               max_seq_length: int, labels: str) -> SplitSummary:
    p50, p90, p99 = (int(v) for v in np.percentile(lengths, [50, 90, 99]))
    return SplitSummary(split, data.origins.get(split, split), total, len(rows), len(features), labels,
                        {"p50": p50, "p90": p90, "p99": p99, "max": max(lengths)},
                        sum(n > max_seq_length for n in lengths))


def _estimate(family, encoder, label_names, features: list[dict], cfg: TrainConfig, pad_id: int,
              rows: int) -> TrainingEstimate:
    """Time a few real optimizer steps (forward, backward, clipping, AdamW) on batches from across the epoch.
    Each batch runs once untimed first: the first step at a new sequence length pays one-off kernel set-up,
    which a real run pays once per length and then amortises over thousands of steps."""
    seed_everything(cfg.seed)
    precision = cfg.resolved_precision(CPU)
    model = family.build_model(encoder, label_names).train()
    optimizer = build_optimizer(model, cfg.learning_rate, cfg.weight_decay, cfg.embedding_update)
    lengths = [len(f["input_ids"]) for f in features]
    batches = step_batches(lengths, cfg.batch_size, cfg.seed, 0, cfg.group_by_length)
    steps_per_epoch = len(batches)
    picked = batches[:: max(1, steps_per_epoch // TIMED_STEPS)][:TIMED_STEPS]
    keys = MODEL_INPUTS + tuple(family.label_keys)
    times = []
    for indices in (i for batch in picked for i in (batch, batch)):
        start = time.perf_counter()
        with autocast(precision, CPU):
            loss = model(**make_batch(features, indices, pad_id, keys)).loss
        loss.backward()
        if cfg.max_grad_norm:
            clip_gradients(model, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    per_step = statistics.median(times[1::2])
    steps = cfg.max_steps or math.ceil(cfg.epochs * steps_per_epoch)
    return TrainingEstimate(rows, steps, cfg.batch_size, cfg.epochs, per_step, per_step * steps, precision,
                            torch.get_num_threads())


def report(run: DryRun) -> str:
    """The dry run as text for people: one line per split, then the estimate and every warning."""
    lines = [f"{run.task} ({run.family}): {run.source}, data fingerprint {run.fingerprint[:16]}",
             f"pretrained: {run.pretrained}; max_seq_length {run.max_seq_length}"]
    if run.label_names is not None:
        names = [n + (f" ({run.display_names[n]})" if n in run.display_names else "") for n in run.label_names]
        shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
        lines.append(f"labels: {shown}")
    lines.append("")
    header = ["split", "file", "rows", "used", "features", "tokens p50/p90/p99/max", f"over {run.max_seq_length}",
              "labels / scores"]
    table = [header]
    for s in run.splits:
        over = f"{s.over_max:,} ({s.over_max / max(s.used, 1):.1%})"
        table.append([s.name, s.origin, f"{s.rows:,}", f"{s.used:,}", f"{s.features:,}",
                      "/".join(str(s.tokens[k]) for k in ("p50", "p90", "p99", "max")), over, s.labels])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table]
    if any(s.features != s.used for s in run.splits):
        lines.append("more features than rows: inputs longer than max_seq_length are read in overlapping windows")
    e = run.estimate
    lines += ["", f"training: {e.rows:,} rows, {e.steps:,} steps of {e.batch_size} ({e.epochs:g} epoch(s)); "
                  f"{e.seconds_per_step:.2f} s/step measured over {TIMED_STEPS} steps here ({e.precision}, "
                  f"{e.threads} thread{'s' if e.threads > 1 else ''}) -> about {_duration(e.seconds)}, evaluations not included"]
    if run.dropped:
        lines += ["", f"{len(run.dropped)} bad row(s) would be dropped, e.g. {run.dropped[0]}"]
    if run.warnings:
        lines += ["", f"{len(run.warnings)} warning(s):", *(f"  {w}" for w in run.warnings[:20])]
        if len(run.warnings) > 20:
            lines.append(f"  ... and {len(run.warnings) - 20} more")
    lines += ["", "all checks passed: the data, the spec and the settings are ready for `bertflow run`"]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
