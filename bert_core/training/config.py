"""The one typed training config. The same object is the Prefect flow's hyperparameter model, so the
UI form, the CLI and the code agree on names, defaults and bounds."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import ConfigDict, Field, model_validator

from bert_core.cpu import cpuinfo
from bert_core.families.imbalance import ImbalanceFields


class TrainConfig(ImbalanceFields):
    """How to fine-tune. Defaults follow the BERT paper's GLUE recipe (Appendix A.3)."""

    model_config = ConfigDict(extra="forbid")

    learning_rate: float = Field(5e-5, gt=0, le=1, description="Peak AdamW learning rate, reached after warmup.")
    batch_size: int = Field(32, ge=1, description="Examples per optimizer step, over all processes and accumulation steps.")
    epochs: float = Field(3.0, gt=0, description="Passes over the training set (fractions allowed); max_steps wins if set.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of steps with linear warmup from 0; then linear decay to 0.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW decoupled weight decay; never on biases and LayerNorm weights.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the global gradient norm to this; None = no clipping.")
    grad_accum_steps: int = Field(1, ge=1, description="Split each step's batch into this many sequential micro-batches.")
    max_seq_length: int | None = Field(None, gt=8, le=512, description="Max tokens per feature; None = the task spec's value.")
    seed: int = Field(42, description="Seeds init, shuffling and dropout; the same seed gives the same metrics on one machine.")
    eval_every: int | None = Field(None, ge=1, description="Evaluate every N optimizer steps; None = at the end of each epoch.")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many evaluations without a better primary metric; None = never.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="bf16 autocast or plain fp32; auto = bf16 where the CPU/GPU supports it natively.")
    embedding_update: Literal["dense", "sparse"] = Field(
        "dense", description="dense: AdamW on every word-embedding row each step (the BERT recipe); sparse: a sparse "
        "gradient and AdamW on the rows of the batch's tokens only (faster on CPU; other rows keep their moments "
        "and skip weight decay, so not the same math; one process only; docs/benchmarks.md).")
    max_train_samples: int | None = Field(None, ge=1, description="Use only the first N training rows.")
    max_eval_samples: int | None = Field(None, ge=1, description="Use only the first N evaluation rows.")
    eval_batch_size: int = Field(64, ge=1, description="Examples per forward pass during evaluation.")
    checkpoint_every: int | None = Field(
        None, ge=1, description="Save a resumable checkpoint every N optimizer steps; None = by time only.")
    checkpoint_minutes: float | None = Field(
        10.0, gt=0, description="Save a resumable checkpoint when this many minutes have passed since the last one; "
        "None = by steps only. The last step always gets one.")
    keep_checkpoints: int = Field(2, ge=1, description="How many of the newest resumable checkpoints to keep.")
    group_by_length: bool = Field(True, description="Batch examples of similar length together (less padding).")
    log_every: int = Field(10, ge=1, description="Report loss, learning rate and throughput every N steps.")
    num_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads; None = $OMP_NUM_THREADS if set, else the cores free of "
        "other processes' work, re-checked as training runs (a busy core slows every thread of a step).")
    progress_bar: bool = Field(True, description="Show a progress bar (rank 0 only); in a log file, a "
                                  "plain line every 30 s (bert_core/training/progress.py).")
    # Task choices a sweep may search; set, they replace the task spec's field of the same name.
    class_weights: Literal["balanced"] | dict[str, float] | None = Field(
        None, description="Weigh each label in the training loss (classification; multi-label: its positive rows): "
        "'balanced' (inverse frequency) or {label: weight}, on the command line balanced or JSON such as "
        "'{\"1\": 5}'; None = the task spec's class_weights.")
    decision_threshold: float | Literal["tune"] | None = Field(
        None, description="Binary classification: answer the second label when its probability is at least this, "
        "in (0, 1), or 'tune' it on the eval split for the primary metric; None = the task spec's (default 0.5).")

    @model_validator(mode="after")
    def _accumulation_divides_batch(self) -> TrainConfig:
        if self.batch_size % self.grad_accum_steps:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of grad_accum_steps {self.grad_accum_steps}")
        return self

    def with_defaults(self, defaults: dict) -> TrainConfig:
        """Fill the fields the user did not set from a task spec's ``defaults`` (e.g. its learning rate)."""
        unknown = sorted(set(defaults) - set(type(self).model_fields))
        if unknown:
            raise ValueError(f"spec defaults name unknown training fields {unknown}")
        filled = {k: v for k, v in defaults.items() if k not in self.model_fields_set}
        return self.model_validate({**self.model_dump(exclude_unset=True), **filled})

    def resolved_precision(self, device: torch.device) -> str:
        if self.precision != "auto":
            return self.precision
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        # Without native bf16 (AVX512-BF16 / AMX) CPU autocast is emulated and slower than fp32.
        return "bf16" if cpu_has_native_bf16() else "fp32"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU does bf16 math natively (AVX512-BF16 or AMX): training's and serving's `auto` ask this."""
    if torch.backends.cpu.get_cpu_capability() in ("AVX512_BF16", "AMX"):
        return True
    flags = cpuinfo()
    return "avx512_bf16" in flags or "amx_bf16" in flags
