"""Fine-tuning engine: ``TrainConfig``, ``fit`` (the recipe), evaluation, one-call ``finetune``.

The names are imported on first use, not with the package (``bert_core/lazy_exports.py`` says why).
"""

from bert_core.lazy_exports import lazy_exports

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

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
