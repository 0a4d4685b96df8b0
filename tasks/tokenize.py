"""The `tokenize` task: features of every split, built once into the on-disk feature cache.

Tokenization is pure, so it is cached twice over:
- the feature cache (bert_core.feature_cache) is keyed on the data fingerprint, tokenizer, labels and
  settings; `fit` and `evaluate_model_dir` read the same entries, so nothing is tokenized twice;
- Prefect caches the task on the same keys (`_features_on_disk`), but only while those entries are
  on disk: a cached Prefect result never vouches for features someone has since deleted. A run that
  has to build features therefore stores no Prefect cache entry; the next identical run (finding the
  features) stores one, and from then on Prefect skips the task.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from prefect import task

from bert_core.checkpoint import resolve_source
from bert_core.families import get_family
from bert_core.feature_cache import default_cache_dir, feature_key
from bert_core.spec import TaskSpec
from bert_core.tokenizer import BertTokenizer
from bert_core.training import TrainConfig, build_split_features, feature_settings, features_fingerprint
from tasks.data import DataInfo, load_split


@dataclasses.dataclass
class SplitFeatures:
    """One split's features."""

    rows: int  # the rows the run uses (its caps applied)
    features: int  # more than rows when long texts are split into windows (QA)
    cache_hit: bool
    stats: dict  # the family's feature stats, e.g. words past max_seq_length (they get a fallback tag)


@dataclasses.dataclass
class FeaturesInfo:
    """What `tokenize` built (or found): features per split, the settings they were built with, where."""

    splits: dict[str, SplitFeatures]
    settings: dict  # feature settings (bert_core.training.feature_settings), logged as params
    cache_dir: str

    @property
    def cache_hit(self) -> bool:
        """Every split's features came from the cache."""
        return all(s.cache_hit for s in self.splits.values())


def row_limit(cfg: TrainConfig, split: str) -> int | None:
    """How many rows of `split` a run uses: the training cap for train, the evaluation cap for the rest."""
    return cfg.max_train_samples if split == "train" else cfg.max_eval_samples


def _entries(spec: TaskSpec, cfg: TrainConfig, data: DataInfo, pretrained, cache_dir) -> list[Path]:
    tokenizer = BertTokenizer.from_folder(resolve_source(pretrained))
    family, settings = get_family(spec.family), feature_settings(spec, cfg)
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    return [root / feature_key(family, features_fingerprint(data.fingerprint, cfg, split), tokenizer,
                               data.label_names, settings, split)
            for split in sorted(data.split_paths)]


def _features_on_disk(context, parameters: dict) -> str | None:
    """Prefect cache key: the feature-cache entries this run needs, when all of them exist; else no key."""
    entries = _entries(**parameters)
    if not all(entry.is_dir() for entry in entries):
        return None
    return "tokenize-" + hashlib.sha256("\n".join(e.name for e in entries).encode()).hexdigest()


@task(cache_key_fn=_features_on_disk)
def tokenize(spec: TaskSpec, cfg: TrainConfig, data: DataInfo, pretrained: str | None = None,
             cache_dir: str | None = None) -> FeaturesInfo:
    """Build (or find) the features of every split; returns what was built and whether it was cached.

    `cfg` must already hold the spec's defaults (`TrainConfig.with_defaults`), as `fit` will see it.
    """
    tokenizer = BertTokenizer.from_folder(resolve_source(pretrained))
    family, settings = get_family(spec.family), feature_settings(spec, cfg)
    splits = {}
    for split in data.split_paths:
        rows = load_split(data, split, row_limit(cfg, split))
        features, hit = build_split_features(family, tokenizer, rows, data.label_names, settings,
                                             features_fingerprint(data.fingerprint, cfg, split), split, cache_dir)
        splits[split] = SplitFeatures(rows=len(rows), features=len(features), cache_hit=hit,
                                      stats=family.features.stats(features))
    return FeaturesInfo(splits=splits, settings=settings, cache_dir=str(cache_dir or default_cache_dir()))
