"""Quality of bertflow's fine-tunes vs the Hugging Face example scripts': same checkpoint, rows and recipe.

    BERTFLOW_DATA_DIR=/work/shared/datasets .venv/bin/python bench/quality_vs_hf.py --seeds 1 2

Question: do models fine-tuned by ``bert_core.training.fit`` ("ours") score as well as models fine-tuned
by ``transformers.Trainer`` the way ``run_glue.py``, ``run_ner.py`` and ``run_qa.py`` do it ("hf")?

For each built-in task with local data (cola, stsb, mrpc, rte, semeval2018_ec, snli, conll2003_pos,
conll2003_ner, sst2, squad; snli and squad are carved out of one file by their spec), both sides fine-tune the packaged
all-MiniLM-L6-v2 on the task's FULL training split and score the spec's eval split after every epoch:

  rows      loaded once per run by ``bert_core.loading.load_task_data``; both sides get the same rows.
  recipe    the spec's defaults through ``TrainConfig.with_defaults``: learning rate, batch size, epochs
            (default the spec's 3; sst2 and squad 1), warmup = int(warmup_ratio * total steps), linear
            decay to 0, AdamW (0.9, 0.999, 1e-8) with weight decay off biases/LayerNorm, clipping at 1.0,
            max_seq_length / doc_stride from the spec, the same seed, threads and precision (ours' "auto":
            bf16 autocast where the CPU has native bf16, else fp32; hf gets ``bf16=True`` exactly then).
  ours      ``fit(...)`` as the pipeline runs it (length-grouped batches, its default); it keeps the best
            epoch's model. No mid-run resumable checkpoints (``checkpoint_every`` and ``checkpoint_minutes`` off), as hf saves none.
  hf        ``Trainer`` with ``eval_strategy="epoch"``, ``save_strategy="no"``, random batch order (no
            length grouping, run_glue's default), dynamic padding (DataCollatorWithPadding /
            DataCollatorForTokenClassification) instead of run_glue's / run_qa's pad-to-max_length, which
            changes speed only. Tokenization, label alignment (first sub-token, label_all_tokens=False),
            QA windows (only_second, stride=doc_stride, CLS for answers not wholly in a window) and QA
            postprocessing (n_best_size=20, max_answer_length=30) are re-typed from the example scripts.
            Its metrics never touch bert_core: scikit-learn / scipy as evaluate's "glue" metric, seqeval's
            default mode as evaluate's "seqeval" (entity P/R/F1, token accuracy over scored words), and
            the official SQuAD v1.1 evaluate-v1.1.py logic typed in below.

Multi-label (semeval2018_ec): hf is ``AutoModelForSequenceClassification`` with ``problem_type=
"multi_label_classification"`` (BCEWithLogits on float multi-hot targets), tokenized as run_glue does, and
answers each label whose sigmoid passes ONE global threshold: at each evaluation, the one of 0.05, 0.10, ...,
0.95 with the best primary metric (f1_macro) on the eval split (its score at 0.5 is kept too, as
``*_at_0.5``). Ours tunes one threshold per label on the same split (the family's default; each label's best
F1), so both sides' dev scores are tuned on dev, ours with 11 knobs to hf's one. hf's metrics are
scikit-learn's, typed here (none vs none scores 1 in jaccard/f1 samples, as in bert_core).

Tagging: bert_core scores IOB1 NER in seqeval's strict mode and scores the words max_seq_length cut off
(as "O"); run_ner scores in seqeval's default mode and skips them. So ours' tag predictions at every
epoch are also scored by the hf-side function over the same words: the table uses that, and the JSONL
keeps bert_core's own numbers beside it ("bert_core_metrics").

Known differences that remain: hf's first step runs at lr 0 (LambdaLR), ours at peak/warmup; ours cuts
SQuAD questions to 64 tokens (hf keeps them whole; no local question is that long). Each hf run checks
its token ids, segment ids and targets against ours' features and records the share that agree.

Every (task, side, seed) runs in a fresh subprocess and appends one JSON line to --results: the spec
metrics at the final and the best epoch, every epoch's metrics, train seconds (ours: FitResult.
train_seconds; hf: on_train_begin -> on_train_end minus its evaluations; so tokenization, model loading
and evaluation are never timed), train examples/s (QA: windows), peak RSS, versions, CPU and recipe.
A rerun skips what the file already holds. Order: cheap tasks first; per task and seed, ours then hf.
Timings are only as good as the machine is quiet: each record keeps the 1-minute load average before and
after its run (above --threads means other processes shared the cores).
The table compares final with final and best with best (ours keeps its best epoch as its model).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import math
import os
import platform
import re
import resource
import statistics
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = REPO_ROOT / "bench" / "results" / "quality.jsonl"
TASKS = ["cola", "stsb", "mrpc", "rte", "semeval2018_ec", "snli", "conll2003_pos", "conll2003_ner", "sst2",
         "squad"]  # cheap first
# Metrics the table shows besides the primary one (default: the primary alone).
TABLE_METRICS = {"semeval2018_ec": ["f1_macro", "f1_micro", "jaccard_samples"]}
THRESHOLDS = [k / 20 for k in range(1, 20)]  # hf's global threshold for multi-label: the best of these on dev
EPOCHS = {"sst2": 1, "squad": 1}  # full SST-2 is 67k rows, carved SQuAD ~8.3k questions at 384 tokens
SIDES = ["ours", "hf"]
N_BEST_SIZE = 20  # run_qa's default


# ---- shared by both sides -------------------------------------------------------------------------
def data_dir() -> Path:
    return Path(os.environ.get("BERTFLOW_DATA_DIR") or REPO_ROOT.parent / "shared" / "datasets")


def recipe(spec, job: dict):
    """The TrainConfig both sides follow: the spec's defaults plus this job's seed, epochs and threads."""
    from bert_core.training import TrainConfig

    return TrainConfig(seed=job["seed"], epochs=job["epochs"], num_threads=job["threads"], progress_bar=False,
                       checkpoint_every=None, checkpoint_minutes=None).with_defaults(spec.defaults)


def load_rows(job: dict):
    """(spec, train rows, eval rows, label names, fingerprint): the first N rows when capped."""
    from bert_core.loading import load_task_data
    from bert_core.spec import load_spec

    spec = load_spec(job["task"])
    data = load_task_data(spec, data_dir())
    train = data.splits["train"].to_list()[: job["max_train_samples"]]
    evals = data.splits["eval"].to_list()[: job["max_eval_samples"]]
    return spec, train, evals, data.label_names, data.fingerprint


def our_precision() -> str:
    from bert_core.training import TrainConfig

    return TrainConfig().resolved_precision(torch.device("cpu"))


def summarize(per_epoch: list[dict], primary: str) -> dict:
    """Final and best epoch of a list of {"epoch", "step", "metrics"} evaluations (all higher-is-better)."""
    def score(i):  # NaN (e.g. Pearson of constant predictions) never wins; ties go to the earlier epoch
        value = per_epoch[i]["metrics"][primary]
        return (-math.inf if math.isnan(value) else value, -i)

    best = max(range(len(per_epoch)), key=score)
    return {"final": per_epoch[-1]["metrics"], "final_epoch": per_epoch[-1]["epoch"],
            "best": per_epoch[best]["metrics"], "best_epoch": per_epoch[best]["epoch"], "per_epoch": per_epoch}


# ---- ours -----------------------------------------------------------------------------------------
class _OurProgress:
    """Prints ours' evaluations and every 500th step, like the Trainer's PrinterCallback does for hf."""

    def on_step(self, step, metrics):
        if step % 500 == 0:
            print(f"  [ours] step {step} loss {metrics['loss']:.4f} lr {metrics['lr']:.2e}", flush=True)

    def on_evaluate(self, step, metrics):
        print(f"  [ours] eval at step {step}: {json.dumps({k: round(v, 4) for k, v in metrics.items()})}", flush=True)


def rescore_tagging(spec, features: list[dict], rows: list[dict], predictions: list[dict]) -> dict:
    """Ours' tag predictions scored as hf scores its own: seqeval's default mode, over the words that have
    a token (run_ner never sees the words max_seq_length cut off; ours tags them "O" and scores them)."""
    pred, gold = [], []
    for feature in features:
        words = sorted({w for w in feature["word_ids"] if w >= 0})
        pred.append([predictions[feature["example_index"]]["tags"][w] for w in words])
        gold.append([rows[feature["example_index"]]["tags"][w] for w in words])
    return {**seqeval_metrics(list(spec.metrics), pred, gold), "words_scored": sum(map(len, gold))}


def capture_tagging_scores(spec, store: list[dict]) -> None:
    """Have fit's per-epoch evaluation also hand its predictions to ``rescore_tagging``.

    Why: bert_core scores IOB1 NER in seqeval's strict IOB1 mode (since commit f960979), while evaluate's
    seqeval metric, which run_ner uses, is seqeval's default (conlleval) mode: scoring both sides' tags
    with one function keeps the comparison about the models. Patches this child process only."""
    from bert_core.training import recipe as fit_module

    original = fit_module.evaluate_and_tune

    def evaluate_and_rescore(model, family, features, rows, *args, **kwargs):
        metrics, predictions, learnt = original(model, family, features, rows, *args, **kwargs)
        store.append(rescore_tagging(spec, features, rows, predictions))
        return metrics, predictions, learnt

    fit_module.evaluate_and_tune = evaluate_and_rescore


def run_ours(job: dict) -> dict:
    from bert_core.training import fit

    spec, train_rows, eval_rows, label_names, fingerprint = load_rows(job)
    cfg = recipe(spec, job)
    rescored: list[dict] = []
    if spec.family == "token_tagging":
        capture_tagging_scores(spec, rescored)
    with tempfile.TemporaryDirectory(prefix="quality-ours-") as out:
        result = fit(spec, cfg, Path(out) / "run", train_rows, eval_rows, label_names,
                     data_fingerprint=f"{fingerprint}|{len(train_rows)}|{len(eval_rows)}",
                     cache_dir=Path(out) / "cache", callbacks=[_OurProgress()])
        meta = json.loads((Path(result.model_dir) / "config.json").read_text(encoding="utf-8"))["bertflow"]
    tuned = {k: meta[k] for k in ("label_thresholds", "no_answer_threshold") if k in meta}  # the best model's
    steps_per_epoch = math.ceil(result.feature_stats["train_features"] / cfg.batch_size)
    per_epoch = [{"epoch": round(h["step"] / steps_per_epoch, 3), "step": h["step"],
                  "metrics": {k.removeprefix("eval_"): v for k, v in h.items() if k.startswith("eval_")}}
                 for h in result.history if any(k.startswith("eval_") for k in h)]
    counts = {"data_fingerprint": fingerprint, "train_rows": len(train_rows), "eval_rows": len(eval_rows),
              **result.feature_stats}
    if spec.family == "token_tagging":  # the table reads "metrics": hf's scoring; bert_core's is kept beside it
        for entry, scores in zip(per_epoch, rescored, strict=True):
            counts["eval_words"] = scores.pop("words_scored")
            entry["bert_core_metrics"], entry["metrics"] = entry["metrics"], scores
    return {**summarize(per_epoch, spec.primary_metric), "precision": result.precision, "counts": counts,
            "tuned": tuned, "train_seconds": result.train_seconds, "examples_per_second": result.examples_per_second,
            "total_steps": result.final_step, "warmup_steps": int(cfg.warmup_ratio * result.final_step)}


# ---- hf: metrics as evaluate's glue / seqeval / squad compute them ----------------------------------
def glue_metric(name: str, preds: np.ndarray, labels: np.ndarray) -> float:
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import f1_score, matthews_corrcoef

    if name == "accuracy":
        return float((preds == labels).mean())
    if name == "matthews_corr":
        return float(matthews_corrcoef(labels, preds))
    if name == "f1":  # MRPC: F1 of class 1 ("paraphrase"), sklearn's binary default
        return float(f1_score(y_true=labels, y_pred=preds))
    if name == "pearson":
        return float(pearsonr(preds, labels)[0])
    if name == "spearman":
        return float(spearmanr(preds, labels)[0])
    raise ValueError(f"no GLUE metric {name!r}")


def seqeval_metrics(names: list[str], predictions: list[list[str]], references: list[list[str]]) -> dict:
    """evaluate's "seqeval": classification_report in seqeval's default (conlleval) mode, micro average."""
    from seqeval.metrics import accuracy_score, classification_report

    scores = {"token_accuracy": float(accuracy_score(y_true=references, y_pred=predictions))}
    if any(n.startswith("entity_") for n in names):  # POS tags are not IOB chunks: accuracy only
        micro = classification_report(y_true=references, y_pred=predictions, output_dict=True)["micro avg"]
        scores.update(entity_precision=micro["precision"], entity_recall=micro["recall"], entity_f1=micro["f1-score"])
    return {n: float(scores[n]) for n in names}


# The official SQuAD v1.1 evaluate-v1.1.py, re-typed (fractions instead of percentages).
def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace."""

    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def squad_f1_score(prediction: str, ground_truth: str) -> float:
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def squad_exact_match_score(prediction: str, ground_truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def squad_evaluate(examples: list[dict], predictions: dict[str, str]) -> dict:
    """Mean over all questions of the best score over their gold answers; unanswered questions score 0."""
    f1 = exact_match = 0.0
    for qa in examples:
        if qa["id"] not in predictions:
            continue
        ground_truths = list(qa["answers"]["text"])
        prediction = predictions[qa["id"]]
        exact_match += max(squad_exact_match_score(prediction, gt) for gt in ground_truths)
        f1 += max(squad_f1_score(prediction, gt) for gt in ground_truths)
    return {"exact_match": exact_match / len(examples), "f1": f1 / len(examples)}


# ---- hf: features and evaluation per family, as the example scripts build them -----------------------
class HfTask:
    """What the Trainer needs for one family: features, model class and kwargs, collator, metrics."""

    def __init__(self, train, evals, model_class, model_kwargs, collator, compute_metrics=None, qa_evaluate=None,
                 counts=None, extra_metrics=()):
        self.train, self.evals, self.model_class, self.model_kwargs = train, evals, model_class, model_kwargs
        self.collator, self.compute_metrics, self.qa_evaluate = collator, compute_metrics, qa_evaluate
        self.counts = counts or {}
        self.extra_metrics = tuple(extra_metrics)  # recorded per epoch beside the spec's metrics


def hf_glue(spec, tokenizer, train_rows, eval_rows, label_names, max_len) -> HfTask:
    """run_glue: tokenizer(sentence1[, sentence2], truncation=True, max_length); argmax / squeeze; glue metric."""
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

    is_regression = spec.family == "pair_regression"

    def preprocess(rows):
        texts = ([r["text_a"] for r in rows],) if rows[0]["text_b"] is None else (
            [r["text_a"] for r in rows], [r["text_b"] for r in rows])
        result = dict(tokenizer(*texts, padding=False, max_length=max_len, truncation=True))
        result["labels"] = [float(r["label"]) if is_regression else label_names.index(r["label"]) for r in rows]
        return result

    def compute_metrics(p):
        preds = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
        preds = np.squeeze(preds) if is_regression else np.argmax(preds, axis=1)
        return {name: glue_metric(name, preds, p.label_ids) for name in spec.metrics}

    num_labels = 1 if is_regression else len(label_names)
    kwargs = {"num_labels": num_labels}
    if not is_regression:
        kwargs.update(label2id={n: i for i, n in enumerate(label_names)}, id2label=dict(enumerate(label_names)))
    return HfTask(preprocess(train_rows), preprocess(eval_rows), AutoModelForSequenceClassification, kwargs,
                  DataCollatorWithPadding(tokenizer), compute_metrics)


def multi_label_metrics(names: list[str], pred: np.ndarray, gold: np.ndarray) -> dict:
    """scikit-learn's multi-label metrics on (N, L) 0/1 arrays, as the spec names them."""
    from sklearn.metrics import (
        accuracy_score,
        f1_score,
        hamming_loss,
        jaccard_score,
        precision_score,
        recall_score,
    )

    scores = {
        "f1_micro": lambda: f1_score(gold, pred, average="micro", zero_division=0),
        "f1_macro": lambda: f1_score(gold, pred, average="macro", zero_division=0),
        "f1_samples": lambda: f1_score(gold, pred, average="samples", zero_division=1.0),
        "jaccard_samples": lambda: jaccard_score(gold, pred, average="samples", zero_division=1.0),
        "subset_accuracy": lambda: accuracy_score(gold, pred),
        "hamming_loss": lambda: hamming_loss(gold, pred),
        "precision_micro": lambda: precision_score(gold, pred, average="micro", zero_division=0),
        "recall_micro": lambda: recall_score(gold, pred, average="micro", zero_division=0),
    }
    return {name: float(scores[name]()) for name in names}


def hf_multi_label(spec, tokenizer, train_rows, eval_rows, label_names, max_len) -> HfTask:
    """The Trainer's multi-label classification: run_glue's tokenization, float multi-hot targets, BCEWithLogits
    (``problem_type``); a label is on when its sigmoid passes one global threshold, the best on dev."""
    from scipy.special import expit
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

    def preprocess(rows):
        texts = ([r["text_a"] for r in rows],) if rows[0]["text_b"] is None else (
            [r["text_a"] for r in rows], [r["text_b"] for r in rows])
        result = dict(tokenizer(*texts, padding=False, max_length=max_len, truncation=True))
        result["labels"] = [[1.0 if n in r["labels"] else 0.0 for n in label_names] for r in rows]
        return result

    def compute_metrics(p):
        probs = expit(p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions)
        gold = p.label_ids > 0.5
        primary = spec.primary_metric
        # the best threshold on the primary metric; ties go to the one nearest 0.5
        scored = [(multi_label_metrics([primary], probs > t, gold)[primary], -abs(t - 0.5), t) for t in THRESHOLDS]
        threshold = max(scored)[2]
        at_half = multi_label_metrics(list(spec.metrics), probs > 0.5, gold)
        return {**multi_label_metrics(list(spec.metrics), probs > threshold, gold), "threshold": threshold,
                **{f"{name}_at_0.5": value for name, value in at_half.items()}}

    kwargs = {"num_labels": len(label_names), "problem_type": "multi_label_classification",
              "label2id": {n: i for i, n in enumerate(label_names)}, "id2label": dict(enumerate(label_names))}
    extra = ["threshold", *(f"{name}_at_0.5" for name in spec.metrics)]
    return HfTask(preprocess(train_rows), preprocess(eval_rows), AutoModelForSequenceClassification, kwargs,
                  DataCollatorWithPadding(tokenizer), compute_metrics, extra_metrics=extra)


def hf_tagging(spec, tokenizer, train_rows, eval_rows, label_names, max_len) -> HfTask:
    """run_ner: is_split_into_words, the word's label on its first sub-token, -100 elsewhere; seqeval."""
    from transformers import AutoModelForTokenClassification, DataCollatorForTokenClassification

    label_to_id = {n: i for i, n in enumerate(label_names)}

    def tokenize_and_align_labels(rows):
        tokenized = tokenizer([r["tokens"] for r in rows], padding=False, truncation=True, max_length=max_len,
                              is_split_into_words=True)
        labels = []
        for i, row in enumerate(rows):
            previous_word_idx, label_ids = None, []
            for word_idx in tokenized.word_ids(batch_index=i):
                if word_idx is None:
                    label_ids.append(-100)
                elif word_idx != previous_word_idx:
                    label_ids.append(label_to_id[row["tags"][word_idx]])
                else:
                    label_ids.append(-100)  # label_all_tokens=False
                previous_word_idx = word_idx
            labels.append(label_ids)
        return {**tokenized, "labels": labels}

    def compute_metrics(p):
        predictions = np.argmax(p.predictions, axis=2)
        true_predictions = [[label_names[pr] for pr, la in zip(prediction, label) if la != -100]
                            for prediction, label in zip(predictions, p.label_ids)]
        true_labels = [[label_names[la] for pr, la in zip(prediction, label) if la != -100]
                       for prediction, label in zip(predictions, p.label_ids)]
        return seqeval_metrics(list(spec.metrics), true_predictions, true_labels)

    evals = tokenize_and_align_labels(eval_rows)
    scored = sum(la != -100 for labels in evals["labels"] for la in labels)  # words run_ner scores
    return HfTask(tokenize_and_align_labels(train_rows), evals, AutoModelForTokenClassification,
                  {"num_labels": len(label_names), "label2id": label_to_id, "id2label": dict(enumerate(label_names))},
                  DataCollatorForTokenClassification(tokenizer), compute_metrics, counts={"eval_words": scored})


def prepare_train_features(tokenizer, rows, max_len, doc_stride) -> dict:
    """run_qa's prepare_train_features (pad_on_right): windows labelled with the first answer's tokens, or CLS."""
    tokenized = tokenizer([r["question"].lstrip() for r in rows], [r["context"] for r in rows],
                          truncation="only_second", max_length=max_len, stride=doc_stride,
                          return_overflowing_tokens=True, return_offsets_mapping=True, padding=False)
    sample_mapping = tokenized.pop("overflow_to_sample_mapping")
    offset_mapping = tokenized.pop("offset_mapping")
    tokenized["start_positions"], tokenized["end_positions"] = [], []
    for i, offsets in enumerate(offset_mapping):
        input_ids = tokenized["input_ids"][i]
        cls_index = input_ids.index(tokenizer.cls_token_id)
        sequence_ids = tokenized.sequence_ids(i)
        answers = rows[sample_mapping[i]]["answers"]
        if len(answers["answer_start"]) == 0:
            tokenized["start_positions"].append(cls_index)
            tokenized["end_positions"].append(cls_index)
            continue
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        token_start_index = 0
        while sequence_ids[token_start_index] != 1:
            token_start_index += 1
        token_end_index = len(input_ids) - 1
        while sequence_ids[token_end_index] != 1:
            token_end_index -= 1
        if not (offsets[token_start_index][0] <= start_char and offsets[token_end_index][1] >= end_char):
            tokenized["start_positions"].append(cls_index)  # the answer is not wholly in this window
            tokenized["end_positions"].append(cls_index)
        else:
            while token_start_index < len(offsets) and offsets[token_start_index][0] <= start_char:
                token_start_index += 1
            tokenized["start_positions"].append(token_start_index - 1)
            while offsets[token_end_index][1] >= end_char:
                token_end_index -= 1
            tokenized["end_positions"].append(token_end_index + 1)
    return dict(tokenized)


def prepare_validation_features(tokenizer, rows, max_len, doc_stride) -> tuple[dict, list[int], list[list]]:
    """run_qa's prepare_validation_features: (model inputs, example index per window, context offsets or None)."""
    tokenized = tokenizer([r["question"].lstrip() for r in rows], [r["context"] for r in rows],
                          truncation="only_second", max_length=max_len, stride=doc_stride,
                          return_overflowing_tokens=True, return_offsets_mapping=True, padding=False)
    sample_mapping = tokenized.pop("overflow_to_sample_mapping")
    offsets = [[o if tokenized.sequence_ids(i)[k] == 1 else None for k, o in enumerate(window)]
               for i, window in enumerate(tokenized.pop("offset_mapping"))]
    return dict(tokenized), list(sample_mapping), offsets


def postprocess_qa_predictions(rows, sample_mapping, offsets, start_logits, end_logits, n_best_size,
                               max_answer_length) -> dict[str, str]:
    """utils_qa.postprocess_qa_predictions for SQuAD v1 (no null answer): question id -> answer text."""
    features_per_example = collections.defaultdict(list)
    for i, example_index in enumerate(sample_mapping):
        features_per_example[example_index].append(i)
    answers = {}
    for example_index, row in enumerate(rows):
        prelim = []
        for feature_index in features_per_example[example_index]:
            start, end, offset_mapping = start_logits[feature_index], end_logits[feature_index], offsets[feature_index]
            start_indexes = np.argsort(start)[-1: -n_best_size - 1: -1].tolist()
            end_indexes = np.argsort(end)[-1: -n_best_size - 1: -1].tolist()
            for s in start_indexes:
                for e in end_indexes:
                    # Padding positions (beyond the window) and question / special tokens are out of scope.
                    if s >= len(offset_mapping) or e >= len(offset_mapping) or offset_mapping[s] is None \
                            or offset_mapping[e] is None:
                        continue
                    if e < s or e - s + 1 > max_answer_length:
                        continue
                    prelim.append({"offsets": (offset_mapping[s][0], offset_mapping[e][1]), "score": start[s] + end[e]})
        best = sorted(prelim, key=lambda x: x["score"], reverse=True)[:n_best_size]
        texts = [row["context"][p["offsets"][0]: p["offsets"][1]] for p in best]
        if len(texts) == 0 or (len(texts) == 1 and texts[0] == ""):
            texts.insert(0, "empty")  # utils_qa's fake prediction for the rare window without any valid span
        answers[row["id"]] = texts[0]
    return answers


def hf_qa(spec, tokenizer, train_rows, eval_rows, label_names, max_len) -> HfTask:
    from transformers import AutoModelForQuestionAnswering, DataCollatorWithPadding

    evals, sample_mapping, offsets = prepare_validation_features(tokenizer, eval_rows, max_len, spec.doc_stride)

    def qa_evaluate(predictions) -> dict:
        start_logits, end_logits = predictions
        answers = postprocess_qa_predictions(eval_rows, sample_mapping, offsets, start_logits, end_logits,
                                             N_BEST_SIZE, spec.max_answer_length)
        scores = squad_evaluate(eval_rows, answers)
        return {name: scores[name] for name in spec.metrics}

    return HfTask(prepare_train_features(tokenizer, train_rows, max_len, spec.doc_stride), evals,
                  AutoModelForQuestionAnswering, {}, DataCollatorWithPadding(tokenizer), qa_evaluate=qa_evaluate)


HF_FAMILIES = {"single_classification": hf_glue, "pair_classification": hf_glue, "pair_regression": hf_glue,
               "token_tagging": hf_tagging, "extractive_qa": hf_qa, "multi_label_classification": hf_multi_label}


def agreement_with_ours(spec, folder, train_rows, label_names, max_len, hf_train: dict) -> dict:
    """Share of hf's training features whose token ids, segment ids and targets equal ours' features."""
    from bert_core.families import get_family
    from bert_core.tokenizer import BertTokenizer

    settings = {"max_seq_length": max_len, "doc_stride": spec.doc_stride, "max_answer_length": spec.max_answer_length}
    ours = get_family(spec.family).features.build(train_rows, BertTokenizer.from_folder(folder), label_names,
                                                 {k: v for k, v in settings.items() if v is not None})
    keys = ["input_ids", "token_type_ids"] + (
        ["start_positions", "end_positions"] if spec.family == "extractive_qa" else ["labels"])
    n_hf = len(hf_train["input_ids"])
    if len(ours) != n_hf:  # e.g. a SQuAD question ours cut to 64 tokens gives it other windows
        return {"features_ours": len(ours), "features_hf": n_hf, "features_equal": None}
    equal = sum(all(f[k] == hf_train[k][i] for k in keys) for i, f in enumerate(ours))
    return {"features_ours": len(ours), "features_hf": n_hf, "features_equal": equal / n_hf}


# ---- hf: the Trainer ---------------------------------------------------------------------------------
def run_hf(job: dict) -> dict:
    import datasets
    import transformers
    from transformers import AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    from bert_core.checkpoint import resolve_source

    transformers.logging.set_verbosity_error()
    spec, train_rows, eval_rows, label_names, fingerprint = load_rows(job)
    cfg = recipe(spec, job)
    folder = str(resolve_source(None))
    tokenizer = AutoTokenizer.from_pretrained(folder)  # fast: the same tokenizer.json as ours
    max_len = min(cfg.max_seq_length or spec.max_seq_length, tokenizer.model_max_length)
    task = HF_FAMILIES[spec.family](spec, tokenizer, train_rows, eval_rows, label_names, max_len)
    check = agreement_with_ours(spec, folder, train_rows, label_names, max_len, task.train)
    n_train = len(task.train["input_ids"])
    total_steps = math.ceil(cfg.epochs * math.ceil(n_train / cfg.batch_size))

    class BenchTrainer(Trainer):
        """Times its evaluations (to subtract them from the training time) and, for QA, evaluates the
        way run_qa's QuestionAnsweringTrainer does: predict the windows, postprocess, score."""

        eval_seconds = 0.0

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            start = time.perf_counter()
            try:
                if task.qa_evaluate is None:
                    return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
                output = self.evaluation_loop(self.get_eval_dataloader(), description="Evaluation",
                                              prediction_loss_only=False, ignore_keys=ignore_keys,
                                              metric_key_prefix=metric_key_prefix)
                metrics = {f"{metric_key_prefix}_{k}": v for k, v in task.qa_evaluate(output.predictions).items()}
                self.log(metrics)
                self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
                return metrics
            finally:
                self.eval_seconds += time.perf_counter() - start

    class Recorder(TrainerCallback):
        def __init__(self):
            self.per_epoch: list[dict] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.threads, self.start = torch.get_num_threads(), time.perf_counter()

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            keep = (*spec.metrics, *task.extra_metrics)
            values = {k.removeprefix("eval_"): v for k, v in metrics.items() if k.removeprefix("eval_") in keep}
            self.per_epoch.append({"epoch": round(state.epoch, 3), "step": state.global_step, "metrics": values})

        def on_train_end(self, args, state, control, **kwargs):
            self.seconds, self.steps = time.perf_counter() - self.start, state.global_step

    transformers.set_seed(cfg.seed)  # as run_*.py: before from_pretrained, which initialises the new head
    model = task.model_class.from_pretrained(folder, **task.model_kwargs)
    recorder = Recorder()
    with tempfile.TemporaryDirectory(prefix="quality-hf-") as out:
        args = TrainingArguments(
            output_dir=out, use_cpu=True, seed=cfg.seed, learning_rate=cfg.learning_rate,
            per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.eval_batch_size,
            num_train_epochs=cfg.epochs, lr_scheduler_type="linear",
            warmup_steps=int(cfg.warmup_ratio * total_steps),  # ours' rounding (a ratio < 1 would be ceil'ed)
            weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, bf16=job["precision"] == "bf16",
            eval_strategy="epoch", save_strategy="no", report_to=[], dataloader_num_workers=0,
            dataloader_pin_memory=False, disable_tqdm=True,
        )
        trainer = BenchTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_dict(task.train),
                               eval_dataset=datasets.Dataset.from_dict(task.evals), data_collator=task.collator,
                               processing_class=tokenizer, compute_metrics=task.compute_metrics, callbacks=[recorder])
        torch.set_num_threads(job["threads"])  # after accelerate's setup, in case it touched them
        trainer.train()
    seconds = recorder.seconds - trainer.eval_seconds
    counts = {"data_fingerprint": fingerprint, "train_rows": len(train_rows), "eval_rows": len(eval_rows),
              "train_features": n_train,
              "eval_features": len(task.evals["input_ids"]), **task.counts, **check}
    return {**summarize(recorder.per_epoch, spec.primary_metric), "precision": job["precision"], "counts": counts,
            "train_seconds": seconds, "examples_per_second": n_train * cfg.epochs / seconds,
            "total_steps": recorder.steps, "threads_in_training": recorder.threads,
            "mixed_precision": trainer.accelerator.mixed_precision,
            "optimizer": str(getattr(args.optim, "value", args.optim)), "warmup_steps": args.warmup_steps}


# ---- the parent: jobs, subprocesses, results file, table ---------------------------------------------
def job_key(record: dict) -> tuple:
    """What makes two runs the same measurement (threads change speed, not quality)."""
    return (record["task"], record["side"], record["seed"], float(record["epochs"]), record["max_train_samples"],
            record["max_eval_samples"])


def read_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def host_info() -> dict:
    import accelerate
    import transformers

    model = "?"
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu_model": model, "cpu_count": os.cpu_count(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__}


def run_child(job: dict) -> dict | None:
    """One (task, side, seed) in a fresh interpreter; its result, or None when it failed."""
    with tempfile.TemporaryDirectory(prefix="quality-job-") as tmp:
        out = Path(tmp) / "result.json"
        env = {**os.environ, "OMP_NUM_THREADS": str(job["threads"]), "BERTFLOW_DATA_DIR": str(data_dir())}
        start, load_before = time.perf_counter(), os.getloadavg()[0]
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(job), "--child-out", str(out)],
                              env=env, cwd=REPO_ROOT)
        if proc.returncode != 0 or not out.is_file():
            print(f"!! {job['task']} {job['side']} seed {job['seed']} failed (exit {proc.returncode})", flush=True)
            return None
        # The load average shows whether other processes shared the cores (the timings are then low).
        return {**json.loads(out.read_text()), "wall_seconds": time.perf_counter() - start,
                "load_avg_1min": [load_before, os.getloadavg()[0]]}


def child_main(job: dict, out: str) -> None:
    import datasets
    import transformers

    # Quiet children: the feature cache's save_to_disk and from_pretrained draw progress bars.
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(job["threads"])
    result = run_ours(job) if job["side"] == "ours" else run_hf(job)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    Path(out).write_text(json.dumps(result), encoding="utf-8")


def pct(values: list[float]) -> str:
    if not values:
        return "-"
    mean = f"{100 * statistics.mean(values):.1f}"
    return mean if len(values) == 1 else f"{mean} ({', '.join(f'{100 * v:.1f}' for v in values)})"


def delta(values: dict[str, list[float]]) -> str:
    if not values["ours"] or not values["hf"]:
        return "-"
    return f"{100 * (statistics.mean(values['ours']) - statistics.mean(values['hf'])):+.1f}"


def mean_of(runs: list[dict], key: str, fmt: str) -> str:
    return fmt.format(statistics.mean(r[key] for r in runs)) if runs else "-"


def table_row(task: str, runs: list[dict], epochs: float, metric: str | None = None) -> list[str]:
    """task, metric (default: the primary), epochs, final and best of both sides with their deltas, seeds,
    seconds and ex/s. "best" is the epoch best on the primary metric, whichever metric is shown."""
    metric = metric or runs[0]["primary_metric"]
    by_side = {side: sorted((r for r in runs if r["side"] == side), key=lambda r: r["seed"]) for side in SIDES}
    final = {s: [r["final"][metric] for r in rs] for s, rs in by_side.items()}
    best = {s: [r["best"][metric] for r in rs] for s, rs in by_side.items()}
    return [task, metric, f"{epochs:g}", pct(final["ours"]), pct(final["hf"]), delta(final),
            pct(best["ours"]), pct(best["hf"]), delta(best), "/".join(str(len(by_side[s])) for s in SIDES),
            mean_of(by_side["ours"], "train_seconds", "{:.0f}"), mean_of(by_side["hf"], "train_seconds", "{:.0f}"),
            mean_of(by_side["ours"], "examples_per_second", "{:.1f}"),
            mean_of(by_side["hf"], "examples_per_second", "{:.1f}")]


def print_table(records: list[dict], tasks: list[str], seeds: list[int], settings: dict) -> None:
    """One row per task: primary metric, final and best epoch of both sides (mean over seeds), time."""
    head = ["task", "metric", "ep", "ours final", "hf final", "Δ final", "ours best", "hf best", "Δ best", "seeds",
            "ours s", "hf s", "ours ex/s", "hf ex/s"]
    rows = []
    for task in tasks:
        runs = [r for r in records if r["task"] == task and r["seed"] in seeds and job_key(r)[3:] == settings[task]]
        for metric in TABLE_METRICS.get(task, [None]) if runs else []:
            rows.append(table_row(task, runs, settings[task][0], metric))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for row in rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)))
    print("Scores in % (mean over seeds, then each seed's value); Δ = ours - hf in points; best = the best epoch "
          "on the eval split (ours keeps that model; hf keeps the last). seeds = runs ours/hf. Train seconds: the "
          "training loop only (no tokenization, model loading or evaluation); ex/s: training features per second "
          "(SQuAD: windows).")


def code_version() -> dict:
    """The commit and whether bert_core had uncommitted edits: its metrics and recipe may change over time."""
    def git(*argv):
        return subprocess.run(["git", *argv], capture_output=True, text=True, cwd=REPO_ROOT).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "bert_core_dirty": bool(git("status", "--porcelain", "bert_core"))}


def make_record(job: dict, result: dict, host: dict) -> dict:
    """One results line: the job, the recipe both sides followed, the child's result, where and when."""
    from bert_core.spec import load_spec

    spec = load_spec(job["task"])
    cfg = recipe(spec, job)
    return {**job, "primary_metric": spec.primary_metric, "metrics": list(spec.metrics),
            "learning_rate": cfg.learning_rate, "batch_size": cfg.batch_size, "warmup_ratio": cfg.warmup_ratio,
            "weight_decay": cfg.weight_decay, "max_grad_norm": cfg.max_grad_norm,
            "max_seq_length": spec.max_seq_length, "doc_stride": spec.doc_stride, **result,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "host": host, "code": code_version()}


def run_all(args, tasks: list[str], epochs: dict[str, float]) -> list[str]:
    """Every missing (task, seed, side) in order, each appended to the results file; returns the failed ones."""
    precision, host = our_precision(), host_info()
    print(f"{host['cpu_model']} ({host['cpu_capability']}), {args.threads} threads, precision {precision} on both "
          f"sides; torch {host['torch']}, transformers {host['transformers']}; results: {args.results}", flush=True)
    done, failed = {job_key(r) for r in read_results(args.results)}, []
    for task in tasks:
        for seed in args.seeds:
            for side in [s for s in SIDES if s in args.sides]:
                job = {"task": task, "side": side, "seed": seed, "epochs": epochs[task], "threads": args.threads,
                       "max_train_samples": args.max_train_samples, "max_eval_samples": args.max_eval_samples,
                       "precision": precision}
                if job_key(job) in done:
                    print(f"-- {task} {side} seed {seed}: already in {args.results}, skipped", flush=True)
                    continue
                print(f"== {task} {side} seed {seed}, {epochs[task]:g} epochs", flush=True)
                result = run_child(job)
                if result is None:
                    failed.append(f"{task}/{side}/{seed}")
                    continue
                record = make_record(job, result, host)
                args.results.parent.mkdir(parents=True, exist_ok=True)
                with args.results.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
                m = record["primary_metric"]
                print(f"   {m}: final {100 * result['final'][m]:.2f}, best {100 * result['best'][m]:.2f} (epoch "
                      f"{result['best_epoch']:g}); {result['train_seconds']:.0f} s training, "
                      f"{result['examples_per_second']:.1f} ex/s, peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)
    return failed


def parse_epochs(items: list[str], tasks: list[str]) -> dict[str, float]:
    """'3' sets every task; 'cola=3' one task; later items win."""
    from bert_core.spec import load_spec

    epochs = {t: float(EPOCHS.get(t, load_spec(t).defaults.get("epochs", 3))) for t in tasks}
    for item in items:
        name, _, value = item.rpartition("=")
        for t in [name] if name else tasks:
            if t not in epochs:
                raise SystemExit(f"--epochs {item}: {t!r} is not one of the tasks {tasks}")
            epochs[t] = float(value)
    return epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS, metavar="TASK")
    parser.add_argument("--sides", nargs="+", default=SIDES, choices=SIDES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", nargs="*", default=[], metavar="[TASK=]N",
                        help="epochs per task (default: the spec's, sst2=1, squad=1); a bare N sets all tasks")
    parser.add_argument("--max-train-samples", type=int, help="first N training rows (smoke runs)")
    parser.add_argument("--max-eval-samples", type=int, help="first N eval rows (smoke runs)")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--table-only", action="store_true", help="print the table of --results and exit")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(json.loads(args.child), args.child_out)
        return

    tasks = [t for t in TASKS if t in args.tasks]  # always cheap tasks first
    epochs = parse_epochs(args.epochs, tasks)
    settings = {t: (epochs[t], args.max_train_samples, args.max_eval_samples) for t in tasks}
    failed = [] if args.table_only else run_all(args, tasks, epochs)
    records = read_results(args.results)
    print()
    print_table(records, tasks, args.seeds, settings)
    others = [r for r in records if r["task"] in tasks and job_key(r)[3:] != settings[r["task"]]]
    if others:
        print(f"({len(others)} runs in {args.results} with other epochs / sample caps are not in this table)")
    if failed:
        raise SystemExit(f"{len(failed)} runs failed (a rerun retries them): {', '.join(failed)}")


if __name__ == "__main__":
    main()
