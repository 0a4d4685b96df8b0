"""The label audit: which training rows' given labels a model that never saw them finds least likely.

Confident learning (Northcutt et al. 2021) on out-of-fold probabilities:

    assign_folds        k folds of the training rows, stratified by label, seeded
    fold_probabilities  per fold: `fit` on the other k-1 folds (selecting on the task's eval split, never on the
                        held-out rows), then the saved model's probabilities on the held-out fold
                        (`evaluate_model_dir`, with the temperature it calibrated)
    rank_suspects       cleanlab's `find_label_issues` over the out-of-fold probabilities: the rows it flags,
                        ranked by self-confidence (the probability of the given label, lowest first)
    agreement           how often the fold models' suggestion is the given label: the flags' worth (with weak
                        fold models most flags are the models' errors)

Why cleanlab rather than our own few lines: its filter (`prune_by_noise_rate`, per-class confident thresholds)
decides how many rows to flag from the estimated noise rates, which a fixed cut-off would not; it is well kept and
light here (numpy, scikit-learn, pandas and tqdm, already dependencies, and termcolor, pure Python with no
dependencies of its own).

Families with one label per row (single-text and pair classification) and label sets (multi-label, cleanlab's
``multi_label``); the others (regression, tagging, QA) are refused with a clear error, for now.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
from cleanlab.filter import find_label_issues
from cleanlab.multilabel_classification.rank import get_label_quality_scores as multi_label_quality
from cleanlab.rank import get_label_quality_scores
from sklearn.model_selection import KFold, StratifiedKFold

from bert_core.families import Family
from bert_core.families.classification import LabelPredictions
from bert_core.families.multi_label import LabelSetPredictions
from bert_core.spec import TaskSpec
from bert_core.training.config import TrainConfig
from bert_core.training.inference import evaluate_model_dir
from bert_core.training.recipe import fit

# One suspect row, as the CSV and the MLflow table show it.
SUSPECT_COLUMNS = ("rank", "row", "source", "text_a", "text_b", "given_label", "suggested_label",
                   "given_label_probability", "label_quality")
LABEL_SET_SEPARATOR = "|"  # a label set in the CSV's label columns
# Benchmarks' labels are wrong in a few percent of rows (Northcutt et al. 2021, "Pervasive label errors in test
# sets": 3.3% on average over 10 datasets, 10% at most); past a fifth of all rows flagged, the fold models are the
# likelier cause.
FLAGGED_SHARE_WARNING = 0.2


def is_multi_label(family: Family) -> bool:
    """Whether the audit reads a row's label set (True) or its one label (False); other families are refused."""
    if isinstance(family.predictions, LabelSetPredictions):
        return True
    if isinstance(family.predictions, LabelPredictions):
        return False
    raise ValueError(f"bertflow audit supports classification (one label per row, one text or a pair) and "
                     f"multi-label classification; family {family.name} is not supported yet")


def assign_folds(rows: list[dict], k: int, seed: int, multi_label: bool = False) -> np.ndarray:
    """(N,) int: each row's fold in 0..k-1. Stratified by label (every fold keeps the label shares); label sets
    are split at random, as scikit-learn has no stratified split of label sets."""
    if k < 2 or k > len(rows):
        raise ValueError(f"k must be between 2 and the number of rows ({len(rows)}), got {k}")
    folds = np.zeros(len(rows), dtype=np.int64)
    if multi_label:
        splits = KFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(rows)))
    else:
        labels = [row["label"] for row in rows]
        smallest = min(Counter(labels).values())
        if smallest < k:
            raise ValueError(f"k={k} folds need every label at least k times; the rarest has {smallest} row(s)")
        splits = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(rows)), labels)
    for fold, (_, held) in enumerate(splits):
        folds[held] = fold
    return folds


def folds_fingerprint(data_fingerprint: str, folds: np.ndarray) -> str:
    """The data fingerprint of the audit's rows and folds: the feature cache keys each fold's rows on it."""
    return f"{data_fingerprint}:audit-{hashlib.sha256(folds.tobytes()).hexdigest()[:16]}"


def fold_probabilities(spec: TaskSpec, cfg: TrainConfig, output_dir: str | Path, rows: list[dict], folds: np.ndarray,
                       fold: int, eval_rows: list[dict], label_names: list[str], *, pretrained=None,
                       data_fingerprint: str = "", cache_dir=None) -> np.ndarray:
    """(n_held, C) probabilities of the rows of `fold` (in row order), each label's in `label_names` order, from a
    model fine-tuned on the other folds' rows; `eval_rows` (the task's eval split) choose its best checkpoint.
    ``spec`` and ``cfg`` as `fit` takes them (the spec's defaults and the effective spec already applied)."""
    held = [row for row, f in zip(rows, folds, strict=True) if f == fold]
    train = [row for row, f in zip(rows, folds, strict=True) if f != fold]
    fingerprint = f"{folds_fingerprint(data_fingerprint, folds)}-fold{fold}"
    result = fit(spec, cfg, output_dir, train, eval_rows, label_names, pretrained=pretrained,
                 data_fingerprint=fingerprint, cache_dir=cache_dir, extra_meta={"audit_fold": fold})
    _, predictions = evaluate_model_dir(result.model_dir, spec, held, fingerprint, split=f"audit-fold{fold}",
                                        batch_size=cfg.eval_batch_size, cache_dir=cache_dir)
    return np.array([[p["probabilities"][name] for name in label_names] for p in predictions], dtype=np.float64)


def rank_suspects(rows: list[dict], label_names: list[str], probabilities: np.ndarray,
                  multi_label: bool = False) -> list[dict]:
    """The rows cleanlab flags, most suspect first, as dicts of `SUSPECT_COLUMNS`. `probabilities`: (N, C)
    out-of-fold, row order. `given_label_probability`: the probability of the given label (a label set's: the
    product over labels of p or 1 - p); `label_quality`: cleanlab's score, lower = more likely wrong (one label:
    the normalized margin, p(given) - max p(other); label sets: its aggregated self-confidence)."""
    index = {name: i for i, name in enumerate(label_names)}
    if multi_label:
        labels = [[index[name] for name in row["labels"]] for row in rows]
        on = np.zeros_like(probabilities, dtype=bool)
        for i, given in enumerate(labels):
            on[i, given] = True
        given_p = np.where(on, probabilities, 1 - probabilities).prod(axis=1)
        quality = multi_label_quality(labels, probabilities)
    else:
        labels = np.array([index[row["label"]] for row in rows])
        given_p = probabilities[np.arange(len(rows)), labels]
        quality = get_label_quality_scores(labels, probabilities, method="normalized_margin")
    # n_jobs=1: cleanlab's default forks a multiprocessing pool, and a fork of a process already running threads
    # (torch's, Prefect's) can deadlock on a lock one of them held; one process ranks 100k rows in seconds anyway.
    ranked = find_label_issues(labels, probabilities, multi_label=multi_label,
                               return_indices_ranked_by="self_confidence", n_jobs=1)
    return [{"rank": rank, "row": int(i), "source": rows[i].get("_source", ""), "text_a": rows[i].get("text_a"),
             "text_b": rows[i].get("text_b"), "given_label": _label_text(rows[i], multi_label),
             "suggested_label": _suggested(probabilities[i], label_names, multi_label),
             "given_label_probability": round(float(given_p[i]), 6), "label_quality": round(float(quality[i]), 6)}
            for rank, i in enumerate(ranked, start=1)]


def agreement(rows: list[dict], label_names: list[str], probabilities: np.ndarray, multi_label: bool = False) -> float:
    """The share of rows whose out-of-fold suggestion (``_suggested``) is their given label (a label set: the same
    set). Low, the fold models are weak, and most of what cleanlab flags is their errors, not the labels'."""
    same = [_suggested(p, label_names, multi_label) == _label_text(row, multi_label)
            for row, p in zip(rows, probabilities, strict=True)]
    return float(np.mean(same)) if same else 0.0


def weak_folds_warning(flagged: int, audited: int, agreement_share: float) -> str | None:
    """A warning when more rows are flagged than labels are usually wrong (``FLAGGED_SHARE_WARNING``): then the
    fold models are the likelier culprit."""
    if not audited or flagged / audited <= FLAGGED_SHARE_WARNING:
        return None
    return (f"{flagged / audited:.0%} of the rows flagged is more than labels are usually wrong, and the fold models "
            f"agree with the given labels on {agreement_share:.0%} of rows: they are likely too weak to judge the "
            f"labels, so most flags are their own errors. Train them longer (--epochs) or on more rows "
            f"(--max-train-samples).")


def suspect_counts(suspects: list[dict]) -> dict[str, dict[str, int]]:
    """{"by_given_label": {label: suspects}, "given_to_suggested": {"given -> suggested": suspects}}, most first."""
    by_label = Counter(s["given_label"] for s in suspects)
    pairs = Counter(f"{s['given_label']} -> {s['suggested_label']}" for s in suspects)
    return {"by_given_label": dict(by_label.most_common()), "given_to_suggested": dict(pairs.most_common())}


def _label_text(row: dict, multi_label: bool) -> str:
    return LABEL_SET_SEPARATOR.join(row["labels"]) if multi_label else str(row["label"])


def _suggested(probabilities: np.ndarray, label_names: list[str], multi_label: bool) -> str:
    """The label the out-of-fold model finds likeliest (its argmax); a label set's: every label above 0.5."""
    if multi_label:
        return LABEL_SET_SEPARATOR.join(n for n, p in zip(label_names, probabilities, strict=True) if p > 0.5)
    return label_names[int(np.argmax(probabilities))]
