"""Features built per second, first run (empty cache) vs cached run, for SST-2 train and SQuAD train.

    python bench/features_speed.py [--repeats 3] [--tasks sst2,squad]

Data: the shared files (BERTFLOW_DATA_DIR, default ../shared/datasets): SST-2 train (67,349 rows) and
the SQuAD train split carved out of dev-v1.1.json by the spec's title rule. Settings: the specs'
(max_seq_length 128 for SST-2; 384 with doc_stride 128 for SQuAD).

For each task, timed separately (loading the rows and the tokenizer are not timed):
  tokenize only   ``family.features.build`` (no cache): the work a cache hit saves;
  first run       ``bert_core.feature_cache.cached_features`` into an empty temporary cache folder
                  (tokenize, write the Arrow entry, memory-map it back);
  cached run      the same call again: a hit, the memory-mapped ``datasets.Dataset``;
  and the same two through ``bert_core.training.build_split_features``, which is what ``fit`` calls and
  also turns the Dataset into a list of feature dicts (``Dataset.to_list``).
Each first run gets a fresh empty cache folder. Every figure is the median of --repeats runs (best in
brackets), in features per second (a SQuAD row gives one feature per 384-token window).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    return Path(os.environ.get("BERTFLOW_DATA_DIR") or REPO_ROOT.parent / "shared" / "datasets")


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def first_then_cached(times: dict[str, list[float]], label: str, build, count: int) -> None:
    """Time `build` (which returns (features, cache hit)) into an empty cache, then again from it."""
    for run, expect_hit in (("first run", False), ("cached run", True)):
        seconds, (features, hit) = timed(build)
        assert hit == expect_hit and len(features) == count
        times.setdefault(f"{label}: {run}", []).append(seconds)


def bench_task(name: str, repeats: int) -> list[tuple[str, list[float], int]]:
    """(what, seconds per repeat, number of features) rows for one task."""
    from bert_core.checkpoint import resolve_source
    from bert_core.families import get_family
    from bert_core.feature_cache import cached_features
    from bert_core.loading import load_task_data
    from bert_core.spec import load_spec
    from bert_core.tokenizer import BertTokenizer
    from bert_core.training import TrainConfig, build_split_features, feature_settings

    spec = load_spec(name)
    data = load_task_data(spec, data_dir())
    rows = data.splits["train"].to_list()  # fit receives a list of row dicts
    family = get_family(spec.family)
    tokenizer = BertTokenizer.from_folder(resolve_source(None))
    settings = feature_settings(spec, TrainConfig())
    labels = data.label_names

    def build():
        return family.features.build(rows, tokenizer, labels, settings)

    times: dict[str, list[float]] = {}
    count = 0
    for _ in range(repeats):
        seconds, features = timed(build)
        count = len(features)
        times.setdefault("tokenize only (no cache)", []).append(seconds)
        with tempfile.TemporaryDirectory() as cache:
            def via_cache(cache=cache):
                return cached_features(family, data.fingerprint, tokenizer, labels, settings, "train", build, cache)

            first_then_cached(times, "cached_features", via_cache, count)
        with tempfile.TemporaryDirectory() as cache:
            def via_fit(cache=cache):
                return build_split_features(family, tokenizer, rows, labels, settings, data.fingerprint, "train", cache)

            first_then_cached(times, "build_split_features", via_fit, count)
    print(f"{name}: {len(rows)} train rows -> {count} features; settings {settings}", flush=True)
    return [(what, secs, count) for what, secs in times.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="sst2,squad")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import datasets
    import tokenizers

    datasets.disable_progress_bars()  # save_to_disk's bars would bury the table

    print(f"tokenizers {tokenizers.__version__}, cpus {os.cpu_count()}, "
          f"RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'unset')}, repeats {args.repeats} (median [best])")
    table = []
    for name in args.tasks.split(","):
        table += [(name, *row) for row in bench_task(name, args.repeats)]
    print()
    print(f"{'task':<7}{'path':<36}{'seconds':>17}{'features/s':>22}")
    for name, what, secs, count in table:
        med, best = statistics.median(secs), min(secs)
        print(f"{name:<7}{what:<36}{f'{med:.3f} [{best:.3f}]':>17}{f'{count / med:,.0f} [{count / best:,.0f}]':>22}")
    for name in dict.fromkeys(t[0] for t in table):
        rows = {what: statistics.median(secs) for n, what, secs, _ in table if n == name}
        print(f"{name}: cached run {rows['cached_features: first run'] / rows['cached_features: cached run']:.0f}x faster "
              f"than the first (cached_features), {rows['build_split_features: first run'] / rows['build_split_features: cached run']:.1f}x "
              f"through build_split_features")


if __name__ == "__main__":
    main()
