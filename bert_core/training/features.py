"""A task's features as a run builds them: the settings they depend on, the names of the rows they come from
(so the on-disk cache and the registry agree on what "the same rows" means), and the cached build itself."""

from __future__ import annotations

from bert_core.checkpoint import OFFLINE_DEFAULT
from bert_core.families import Family, get_family
from bert_core.feature_cache import cached_features
from bert_core.spec import TaskSpec
from bert_core.training.config import TrainConfig

# The task settings a fine-tuned model keeps in its meta (save_finetuned), so predicting and scoring with it
# later work as they did in training; the last are learnt on the eval split (``Family.tune``), not read from the spec.
TASK_SETTINGS = ("max_seq_length", "doc_stride", "max_answer_length", "tag_scheme", "display_names",
                 "no_answer_threshold")


def feature_settings(spec: TaskSpec, cfg: TrainConfig) -> dict:
    """What the feature builders, postprocessing and metrics need from the spec and the config."""
    return {"max_seq_length": cfg.max_seq_length or spec.max_seq_length, **get_family(spec.family).task_settings(spec)}


def rows_name(data_fingerprint: str, split: str, limit: int | None) -> str:
    """The rows a run uses of one split: the data's fingerprint and the row cap (None: all)."""
    return f"{data_fingerprint}|{split}[:{limit}]"


def features_fingerprint(data_fingerprint: str, cfg: TrainConfig, split: str) -> str:
    """The rows fingerprint a split's features are cached under. Train and eval share one (`fit` builds both
    for one run), the extra eval splits have their own."""
    if split in ("train", "eval"):
        return f"{data_fingerprint}|train[:{cfg.max_train_samples}]|eval[:{cfg.max_eval_samples}]"
    return rows_name(data_fingerprint, split, cfg.max_eval_samples)


def check_fits_checkpoint(settings: dict, config, pretrained) -> None:
    """Features longer than the checkpoint's position table would fail deep inside the embedding lookup."""
    if settings["max_seq_length"] > config.max_position_embeddings:
        raise ValueError(f"max_seq_length {settings['max_seq_length']} is longer than the {config.max_position_embeddings} "
                         f"positions of the pretrained checkpoint {pretrained or OFFLINE_DEFAULT}; set max_seq_length "
                         f"(in the spec or the training config) to at most {config.max_position_embeddings}")


def build_split_features(family: Family, tokenizer, rows, label_names, settings: dict, fingerprint: str,
                         split: str, cache_dir=None) -> tuple[list[dict], bool]:
    """Features of one split through the on-disk cache: (feature rows, whether it was a cache hit)."""
    features, hit = cached_features(
        family, fingerprint, tokenizer, label_names, settings, split,
        build=lambda: family.build_features(rows, tokenizer, label_names, settings), cache_dir=cache_dir,
    )
    return features.to_list(), hit
