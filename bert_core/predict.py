"""People-ready predictions from a saved fine-tuned model, for any family.

    Predictor(model_dir).predict([{"text_a": "a gripping film"}])
    -> [{"label": "1", "label_name": "positive", "score": 0.97, "probabilities": {...}}]

Input rows use the canonical fields of docs/design.md without gold labels: ``text_a``/``text_b``
(classification, regression), ``tokens`` (tagging), ``question``/``context`` (+ optional ``id``, QA).
"""

from __future__ import annotations

from pathlib import Path

import torch

from bert_core.checkpoint import load_finetuned
from bert_core.families import get_family
from bert_core.serving_precision import prepare, resolve
from bert_core.training.features import TASK_SETTINGS
from bert_core.training.inference import predict_logits


class Predictor:
    """Loads a ``save_finetuned`` folder once; ``predict`` maps rows to prediction dicts. ``precision``: auto, fp32,
    bf16 or int8 (``bert_core.serving_precision``); ``self.precision`` is the one it resolved to."""

    def __init__(self, model_dir: str | Path, batch_size: int = 32, precision: str = "fp32"):
        self.model, self.tokenizer, self.meta = load_finetuned(model_dir)
        self.precision = resolve(precision)
        self.model = prepare(self.model, self.precision)
        self.family_name = self.meta["family"]
        self.family = get_family(self.family_name)
        self.label_names = self.meta.get("label_names")
        self.settings = {k: self.meta[k] for k in TASK_SETTINGS if k in self.meta}
        self.batch_size = batch_size

    def check_rows(self, rows: list[dict]) -> None:
        """Raise ValueError naming the row and field of the first malformed input (the fields the family's
        served model takes, ``Family.rows.request``), before any tokenization."""
        for i, row in enumerate(rows):
            for field in self.family.rows.request:
                value = row.get(field)
                if field == "tokens":
                    ok = isinstance(value, (list, tuple)) and value and all(isinstance(w, str) and w.strip() for w in value)
                    expected = "a non-empty list of non-empty words"
                else:
                    ok = isinstance(value, str) and value.strip() != ""
                    expected = "a non-empty string"
                if not ok:
                    raise ValueError(f"row {i}: field {field!r} is {value!r}; expected {expected}")

    @torch.no_grad()
    def predict(self, rows: list[dict]) -> list[dict]:
        rows = [dict(r) for r in rows]
        if not rows:
            return []
        self.check_rows(rows)
        if "id" in self.family.rows.fields:  # QA predictions come back keyed by it
            for i, row in enumerate(rows):
                row.setdefault("id", str(i))
        features = self.family.features.build(rows, self.tokenizer, self.label_names, self.settings)
        logits = predict_logits(self.model, features, self.tokenizer.pad_id, self.batch_size, self.precision)
        return self.family.predictions.postprocess(logits, features, rows, self.label_names, self.settings)
