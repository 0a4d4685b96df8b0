"""On-disk cache of tokenized features, so a re-run (or a second flow on the same data) skips tokenizing.

The key is a sha256 over everything the features depend on: the data fingerprint, the split, the
family, the tokenizer (``BertTokenizer.fingerprint()``, a hash of its ``tokenizer.json``), the label
names, the settings and ``FEATURES_VERSION``. Each entry is a ``datasets.Dataset.save_to_disk``
folder ``<cache_dir>/<key>``, written to a temporary folder first and renamed into place, so a
reader never sees half an entry: a crash leaves only a ``.tmp-*`` folder, which lookups ignore.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from datasets import Dataset, load_from_disk

from bert_core.home import bertflow_home

log = logging.getLogger(__name__)

# Bump whenever a family's feature builder changes what it writes: old entries then stop matching.
FEATURES_VERSION = 1


def default_cache_dir() -> Path:
    """``$BERTFLOW_CACHE_DIR``, else ``$BERTFLOW_HOME/cache/features``."""
    return Path(os.environ.get("BERTFLOW_CACHE_DIR") or bertflow_home() / "cache" / "features")


def feature_key(family, rows_fingerprint: str, tokenizer, label_names, settings: dict, split_name: str) -> str:
    """sha256 hex digest naming the cache entry for these inputs."""
    parts = {
        "data": rows_fingerprint,
        "split": split_name,
        "family": getattr(family, "name", str(family)),
        "tokenizer": tokenizer.fingerprint(),
        "label_names": list(label_names) if label_names is not None else None,
        "settings": settings,
        "version": FEATURES_VERSION,
    }
    # sort_keys: the same settings in another dict order are the same entry.
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def cached_features(
    family,
    rows_fingerprint: str,
    tokenizer,
    label_names: list[str] | None,
    settings: dict,
    split_name: str,
    build: Callable[[], list[dict]],
    cache_dir: str | Path | None = None,
) -> tuple[Dataset, bool]:
    """The features for these inputs and whether they came from the cache.

    ``family``: a ``Family`` (its ``name`` goes into the key) or a family name. ``build()`` makes the
    feature rows (list of dicts) and runs only on a miss. Both paths return the same thing: the
    ``datasets.Dataset`` loaded (memory-mapped) from the cache entry.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = feature_key(family, rows_fingerprint, tokenizer, label_names, settings, split_name)
    entry = root / key
    if entry.is_dir():
        try:
            return load_from_disk(str(entry)), True
        except Exception as err:  # unreadable (disk trouble, datasets version change): rebuild it
            log.warning("feature cache entry %s is unreadable (%s: %s); rebuilding it", entry, type(err).__name__, err)
            shutil.rmtree(entry, ignore_errors=True)

    features = Dataset.from_list(build())
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{key}-{uuid.uuid4().hex}"
    try:
        features.save_to_disk(str(tmp))
        os.rename(tmp, entry)  # atomic on one file system
    except OSError:
        if not entry.is_dir():  # not a lost race with a concurrent writer of the same entry
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return load_from_disk(str(entry)), False
