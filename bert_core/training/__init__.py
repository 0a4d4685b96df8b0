"""Fine-tuning engine: ``TrainConfig``, ``fit`` (the recipe), evaluation, one-call ``finetune``.

The names are imported on first use (PEP 562): ``python -m bert_core.training`` imports this package before its
``__main__`` chooses the malloc, which must happen before torch is imported.
"""

import importlib

_EXPORTS = {
    "TrainConfig": "bert_core.training.config",
    "evaluate_and_tune": "bert_core.training.evaluate", "evaluate_features": "bert_core.training.evaluate",
    "predict_logits": "bert_core.training.evaluate",
    "build_split_features": "bert_core.training.features", "feature_settings": "bert_core.training.features",
    "features_fingerprint": "bert_core.training.features", "rows_name": "bert_core.training.features",
    "Callback": "bert_core.training.recipe", "FitResult": "bert_core.training.recipe",
    "TrainingDiverged": "bert_core.training.recipe", "fit": "bert_core.training.recipe",
    "evaluate_model_dir": "bert_core.training.run", "finetune": "bert_core.training.run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'bert_core.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
