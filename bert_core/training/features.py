"""A task's features as a run builds them: the settings they depend on, the names of the rows they come from
(so the on-disk cache and the registry agree on what "the same rows" means), and the cached build itself."""

from __future__ import annotations

from bert_core.checkpoint import OFFLINE_DEFAULT
from bert_core.families import Family, get_family
from bert_core.feature_cache import cached_features
from bert_core.spec import TaskSpec, replaced
from bert_core.training.config import TrainConfig

# The task settings a fine-tuned model keeps in its meta (save_finetuned), so predicting and scoring with it
# later work as they did in training. Some are learnt on the eval split, not read from the spec: ``Predictions.tune``'s
# thresholds, ``Predictions.calibrate``'s temperature. ``long_text`` (the spec's, a dict) makes predicting read long
# texts in the windows training read. ``class_weights`` (what the loss used, ``Family.weigh_loss``) and
# ``decision_threshold_tuned_for`` are kept for the model card; ``decision_threshold`` is applied
# (bert_core/families/imbalance.py).
TASK_SETTINGS = ("max_seq_length", "doc_stride", "max_answer_length", "tag_scheme", "display_names",
                 "no_answer_threshold", "label_thresholds", "class_weights", "decision_threshold_tuned_for",
                 "decision_threshold", "temperature", "long_text")
# TrainConfig fields that, when set, replace the task spec's field of the same name (so a sweep can search them).
SPEC_CHOICES = ("class_weights", "decision_threshold")


def spec_columns(spec: TaskSpec) -> dict[str, list[str]]:
    """Canonical field -> the column names the spec reads it from, its own `columns` first, then its hub's:
    kept in a fine-tuned model's meta (``spec_columns``), so scoring and serving take requests in the spec's own
    format (SST-2's ``sentence``). Integer columns (CoNLL positions) name no column."""
    found: dict[str, list[str]] = {}
    for columns in (spec.columns or {}, (spec.hub.columns if spec.hub else None) or {}):
        for field, column in columns.items():
            if isinstance(column, str) and column != field and column not in found.setdefault(field, []):
                found[field].append(column)
    return {field: names for field, names in found.items() if names}


def effective_spec(spec: TaskSpec, cfg: TrainConfig) -> TaskSpec:
    """``spec`` with the ``SPEC_CHOICES`` the training config sets in place of its own (the config wins), checked as
    the spec's own fields are (SpecError naming the field); ``spec`` itself when the config sets none. Class weights
    replace multi-label's ``pos_weight`` too (both weigh its positive rows)."""
    chosen = {name: getattr(cfg, name) for name in SPEC_CHOICES if getattr(cfg, name) is not None}
    where = f"task spec {spec.name!r} with the training config's {', '.join(chosen)}"
    if "class_weights" in chosen:
        chosen["pos_weight"] = False
    if all(getattr(spec, name) == value for name, value in chosen.items()):
        return spec
    return replaced(spec, chosen, where)


def feature_settings(spec: TaskSpec, cfg: TrainConfig) -> dict:
    """What the feature builders, postprocessing and metrics need from the spec and the config."""
    spec = effective_spec(spec, cfg)
    return {"max_seq_length": cfg.max_seq_length or spec.max_seq_length, **get_family(spec.family).rows.task_settings(spec)}


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
                         split: str, cache_dir=None, cached: bool = True) -> tuple[list[dict], bool]:
    """Features of one split through the on-disk cache: (feature rows, whether it was a cache hit).
    ``cached`` False: built afresh and stored nowhere (a dry run writes nothing)."""
    def build():
        return family.features.build(rows, tokenizer, label_names, settings)

    if not cached:
        return build(), False
    features, hit = cached_features(family, fingerprint, tokenizer, label_names, settings, split, build=build,
                                    cache_dir=cache_dir)
    return features.to_list(), hit
