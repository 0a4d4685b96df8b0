"""Fine-tuning engine: ``TrainConfig``, ``fit`` (the recipe), evaluation, one-call ``finetune``."""

from bert_core.training.config import TrainConfig
from bert_core.training.evaluate import evaluate_and_tune, evaluate_features, predict_logits
from bert_core.training.features import (
    build_split_features,
    feature_settings,
    features_fingerprint,
    rows_name,
)
from bert_core.training.fit import Callback, FitResult, TrainingDiverged, fit
from bert_core.training.run import evaluate_model_dir, finetune

__all__ = [
    "Callback", "FitResult", "TrainConfig", "TrainingDiverged", "build_split_features", "evaluate_and_tune",
    "evaluate_features", "evaluate_model_dir", "feature_settings", "features_fingerprint", "finetune", "fit",
    "predict_logits", "rows_name",
]
