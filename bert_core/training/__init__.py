"""Fine-tuning engine: ``TrainConfig``, ``fit`` (the recipe), evaluation, one-call ``fit_task``."""

from bert_core.training.command import fit_task
from bert_core.training.config import TrainConfig
from bert_core.training.features import (
    build_split_features,
    effective_spec,
    feature_settings,
    features_fingerprint,
    rows_name,
)
from bert_core.training.inference import (
    evaluate_and_tune,
    evaluate_features,
    evaluate_model_dir,
    predict_logits,
)
from bert_core.training.recipe import Callback, FitResult, TrainingDiverged, fit

__all__ = ["Callback", "FitResult", "TrainConfig", "TrainingDiverged", "build_split_features", "effective_spec",
           "evaluate_and_tune", "evaluate_features", "evaluate_model_dir", "feature_settings", "features_fingerprint",
           "fit", "fit_task", "predict_logits", "rows_name"]
