"""The toy sentiment task for tests: one sentiment word among filler words gives the label, so a tiny random
BERT learns it in a few steps. Its spec, its rows, the task written to a data folder, a fine-tune of it, and
the training config that flow tests fine-tune it with."""

from __future__ import annotations

import json
import random
from pathlib import Path

from bert_core.spec import TaskSpec
from bert_core.training import FitResult, TrainConfig, fit

SPEC = TaskSpec(name="toy_sentiment", family="single_classification", labels=["neg", "pos"],
                local={"format": "tsv", "files": {"train": "toy/train.tsv", "eval": "toy/dev.tsv"}},
                columns={"text_a": "sentence", "label": "label"},
                metrics=["accuracy"], primary_metric="accuracy", max_seq_length=32)
POS, NEG, FILL = ["good", "great", "fun"], ["bad", "terrible", "boring"], ["the", "movie", "film", "plot", "was", "very"]
# Two epochs of 8 steps (64 rows, batch 8) with checkpoints on the way: a flow test's fine-tune in seconds.
TRAINING = TrainConfig(batch_size=8, epochs=2, learning_rate=3e-3, precision="fp32", progress_bar=False, seed=3,
                       checkpoint_every=4)


def toy_rows(n: int, seed: int) -> list[dict]:
    """Sentences whose label is given by one sentiment word among filler: learnable in a few steps."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = rng.choice(["neg", "pos"])
        words = rng.sample(FILL, 4) + [rng.choice(POS if label == "pos" else NEG)]
        rng.shuffle(words)
        rows.append({"text_a": " ".join(words), "text_b": None, "label": label, "_source": f"toy:{i}"})
    return rows


def write_toy_task(root: Path) -> Path:
    """The task under ``root``: toy/train.tsv (64 rows), toy/dev.tsv (32 rows) and its spec, toy.yaml (returned)."""
    (root / "toy").mkdir(parents=True)
    for name, rows in (("train.tsv", toy_rows(64, 1)), ("dev.tsv", toy_rows(32, 2))):
        lines = ["sentence\tlabel"] + [f"{r['text_a']}\t{r['label']}" for r in rows]
        (root / "toy" / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    spec_path = root / "toy.yaml"
    spec_path.write_text(json.dumps(SPEC.model_dump(exclude_none=True)), encoding="utf-8")  # JSON is YAML
    return spec_path


def fit_toy(tmp_path: Path, pretrained: str | Path, name: str = "run", rows: tuple[int, int] = (96, 48), callbacks=(),
            **overrides) -> FitResult:
    """``fit`` on toy rows (train, dev counts) into ``tmp_path / name``; ``overrides`` change the TrainConfig.

    One thread unless overridden: left to follow the load (threads.py), two runs that tests compare bit for bit
    (resumed against whole, same seed twice) could get other counts, hence sums in another order."""
    cfg = TrainConfig(**{"learning_rate": 3e-3, "batch_size": 16, "epochs": 4, "seed": 7, "precision": "fp32",
                         "progress_bar": False, "log_every": 1, "checkpoint_every": 5, "num_threads": 1, **overrides})
    return fit(SPEC, cfg, tmp_path / name, toy_rows(rows[0], 1), toy_rows(rows[1], 2), ["neg", "pos"],
               pretrained=pretrained, data_fingerprint="toy-v1", callbacks=callbacks, cache_dir=tmp_path / "cache")
