"""The precision a fine-tuned model is served in: ``resolve`` names it, ``prepare`` readies a loaded model for it.

    model = prepare(model, resolve("auto"))     # fp32 on a CPU without native bf16, else bf16
    predict_logits(model, features, pad_id, precision=resolve("auto"))

- ``fp32``: the weights as saved.
- ``bf16``: the same math as training's bf16 autocast (``bert_core.training.inference.autocast``): matmuls in bf16,
  LayerNorm, softmax and the rest in fp32. The linear layers' weights are cast to bf16 once here, which is exactly
  the rounding autocast applies to them on every call, so predictions are identical and each call skips the casts.
- ``int8``: dynamic quantization of every ``nn.Linear`` (the encoder's and the head's): int8 weights, quantized
  once here, and activations quantized per batch from their own range; the rest (embeddings, LayerNorm,
  attention's softmax) stays fp32. ``torch.ao.quantization.quantize_dynamic`` does it, eagerly, with no extra
  dependency (docs/scoring.md says why this engine, with figures).
- ``auto``: bf16 where the CPU does bf16 natively (AVX512-BF16 / AMX), else fp32: training's ``precision: auto``
  rule, the same function (``bert_core.training.config.cpu_has_native_bf16``).

Weights stay fp32 on disk: a precision is applied when a model is loaded, never saved.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from torch import nn

from bert_core.training import config as training_config

SERVING_PRECISIONS = ("auto", "fp32", "bf16", "int8")
ServingPrecision = Literal["auto", "fp32", "bf16", "int8"]


def resolve(precision: str) -> str:
    """``auto`` -> ``bf16`` or ``fp32`` for this CPU; the others as given. ValueError for an unknown name."""
    if precision not in SERVING_PRECISIONS:
        raise ValueError(f"unknown serving precision {precision!r}; expected one of {SERVING_PRECISIONS}")
    if precision == "auto":
        return "bf16" if training_config.cpu_has_native_bf16() else "fp32"
    return precision


def prepare(model: nn.Module, precision: str) -> nn.Module:
    """``model`` (eval mode, on the CPU) ready to predict in ``resolve(precision)``; changed in place and
    returned. Predict under ``predict_logits(..., precision=resolve(precision))``: bf16 needs its autocast."""
    precision = resolve(precision)
    model.eval()
    if precision == "bf16":
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.to(torch.bfloat16)
    elif precision == "int8":
        with warnings.catch_warnings():
            # torch 2.13 marks torch.ao.quantization deprecated in favour of torchao, whose eager CPU int8 path
            # measured 22x slower than this one (docs/scoring.md): this stays the engine until torchao's is fast.
            # (Its quantized-tensor functions warn the same way.)
            warnings.filterwarnings("ignore", message=".*deprecated")
            torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)
    return model
