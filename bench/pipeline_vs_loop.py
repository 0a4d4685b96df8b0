"""Training speed as users run it: `bertflow run` (flow, MLflow, checkpoints, evaluations) vs its bare loop vs
the Hugging Face Trainer, on a whole GLUE training set.

    python bench/pipeline_vs_loop.py [--task cola] [--epochs 3] [--precision fp32] [--threads 2] [--repeats 1]

Three runs, each in a fresh process, interleaved when repeated (median reported, best in brackets):

  loop      ``bert_core.training.fit`` alone: the spec's recipe, an evaluation after each epoch, no callbacks,
            no checkpoint but the last one;
  pipeline  ``bertflow run <task>`` exactly as a user types it (Prefect's ephemeral mode, a fresh
            ``$BERTFLOW_HOME`` with its SQLite MLflow store, per-step metrics to MLflow, the progress
            artifact, checkpoints on their default cadence, evaluation, registration);
  trainer   ``transformers.Trainer`` with dynamic padding and ``group_by_length``, an evaluation after each
            epoch, a log line every 10 steps, no checkpoints: the tuned peer as its users run it.

All three: the task spec's learning rate, batch, epochs, warmup and weight decay, the same precision and
threads, seed 42. Compared: training seconds with evaluation taken out (ours: the run's ``train_seconds``,
which the loop accumulates between evaluations; the Trainer: ``train_runtime`` minus its evaluations'
``eval_runtime``), and wall seconds of the whole process. The pipeline's training seconds must be within 5%
of the loop's. Also printed: the slowest 10-step window of each of ours (history.json), where a checkpoint,
a log call or an evaluation would show as a dip.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNS = {"l": "loop", "p": "pipeline", "t": "trainer"}


def data_dir() -> Path:
    return Path(os.environ.get("BERTFLOW_DATA_DIR") or REPO_ROOT.parent / "shared" / "datasets")


def recipe(args):
    """(spec, TrainConfig) of the task with the bench's precision, threads and epochs."""
    from bert_core.spec import load_spec
    from bert_core.training import TrainConfig

    spec = load_spec(args.task)
    cfg = TrainConfig(precision=args.precision, num_threads=args.threads, epochs=args.epochs, seed=42,
                      max_train_samples=args.train_rows, progress_bar=False).with_defaults(spec.defaults)
    return spec, cfg


def run_loop(args) -> dict:
    from bert_core.loading import load_task_data
    from bert_core.training import fit

    spec, cfg = recipe(args)
    data = load_task_data(spec, data_dir())
    train = data.splits["train"]
    train = train.select(range(min(args.train_rows or len(train), len(train)))).to_list()
    with tempfile.TemporaryDirectory() as out:
        cfg = cfg.model_copy(update={"checkpoint_minutes": None, "checkpoint_every": None})
        result = fit(spec, cfg, Path(out) / "run", train, data.splits["eval"].to_list(), data.label_names,
                     data_fingerprint=data.fingerprint, cache_dir=Path(out) / "cache")
    return {"train_seconds": result.train_seconds, "score": result.eval_metrics[spec.primary_metric],
            "windows": [h["examples_per_second"] for h in result.history if "examples_per_second" in h],
            "steps": result.final_step}


def run_pipeline(args) -> dict:
    spec, cfg = recipe(args)
    with tempfile.TemporaryDirectory() as home:
        cmd = [str(Path(sys.executable).parent / "bertflow"), "run", args.task, "--precision", args.precision,
               "--epochs", str(args.epochs), "--num-threads", str(args.threads), "--json"]
        if args.train_rows:
            cmd += ["--max-train-samples", str(args.train_rows)]
        env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")}
        env |= {"BERTFLOW_HOME": home, "BERTFLOW_DATA_DIR": str(data_dir())}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO_ROOT)
        if proc.returncode != 0:
            raise SystemExit(f"bertflow run failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        summary = json.loads(proc.stdout[proc.stdout.index("{"):])
        history = json.loads((Path(summary["run_dir"]) / "history.json").read_text())
    return {"train_seconds": summary["train_seconds"], "score": summary["score"], "steps": summary["steps"],
            "windows": [h["examples_per_second"] for h in history if "examples_per_second" in h]}


def run_trainer(args) -> dict:
    import datasets
    import numpy as np
    import transformers
    from transformers import (
        BertForSequenceClassification,
        BertTokenizerFast,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from bert_core.checkpoint import resolve_source
    from bert_core.families.classification import METRICS
    from bert_core.loading import load_task_data

    transformers.logging.set_verbosity_error()
    spec, cfg = recipe(args)
    data = load_task_data(spec, data_dir())
    folder = str(resolve_source(None))
    tokenizer = BertTokenizerFast.from_pretrained(folder)
    labels = data.label_names

    def encode(split, limit=None):
        rows = data.splits[split]
        rows = rows.select(range(min(limit or len(rows), len(rows)))).to_list()
        pair = [r["text_b"] for r in rows] if rows[0].get("text_b") is not None else None
        enc = tokenizer([r["text_a"] for r in rows], pair, truncation=True, max_length=spec.max_seq_length)
        return datasets.Dataset.from_dict({**enc, "labels": [labels.index(r["label"]) for r in rows]})

    train_ds, eval_ds = encode("train", args.train_rows), encode("eval")
    transformers.set_seed(42)
    model = BertForSequenceClassification.from_pretrained(folder, num_labels=len(labels))

    def metric(p):
        # Label indices, as fit scores them: only the primary metric, which compares the two sides.
        return {spec.primary_metric: METRICS[spec.primary_metric](np.asarray(p.predictions).argmax(-1), p.label_ids)}

    steps = -(-len(train_ds) // cfg.batch_size) * int(cfg.epochs)
    with tempfile.TemporaryDirectory() as out:
        training_args = TrainingArguments(
            output_dir=out, use_cpu=True, seed=42, per_device_train_batch_size=cfg.batch_size,
            per_device_eval_batch_size=cfg.eval_batch_size, learning_rate=cfg.learning_rate, num_train_epochs=cfg.epochs,
            lr_scheduler_type="linear", warmup_steps=int(cfg.warmup_ratio * steps), weight_decay=cfg.weight_decay,
            max_grad_norm=cfg.max_grad_norm, bf16=args.precision == "bf16", train_sampling_strategy="group_by_length",
            eval_strategy="epoch", save_strategy="no", logging_strategy="steps", logging_steps=10, report_to="none",
            disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=False)
        trainer = Trainer(model=model, args=training_args, train_dataset=train_ds, eval_dataset=eval_ds,
                          data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
                          compute_metrics=metric)
        import torch

        torch.set_num_threads(args.threads)
        output = trainer.train()
    evals = [h for h in trainer.state.log_history if "eval_runtime" in h]
    return {"train_seconds": output.metrics["train_runtime"] - sum(h["eval_runtime"] for h in evals),
            "score": evals[-1][f"eval_{spec.primary_metric}"], "steps": trainer.state.global_step, "windows": []}


def run_child(which: str, args) -> dict:
    cmd = [sys.executable, __file__, "--only", which, *sys.argv[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"run {which} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    # CPU seconds and involuntary context switches of the run's processes (for the pipeline: bertflow and its
    # Prefect server): a compute thread switched out stalls the others at the next OpenMP barrier.
    return json.loads(lines[-1][len("RESULT "):]) | {
        "wall_seconds": time.perf_counter() - start,
        "cpu_seconds": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
        "preempted": after.ru_nivcsw - before.ru_nivcsw}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="cola", help="a single- or pair-classification spec (default cola)")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--train-rows", type=int, help="first N training rows (default: all)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--runs", default="lpt", help="which runs, e.g. 'lp'")
    parser.add_argument("--only", choices=list(RUNS), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.only:
        result = {"l": run_loop, "p": run_pipeline, "t": run_trainer}[args.only](args)
        print("RESULT " + json.dumps(result))
        return

    spec, cfg = recipe(args)
    print(f"{args.task}: lr {cfg.learning_rate}, batch {cfg.batch_size}, epochs {cfg.epochs}, warmup {cfg.warmup_ratio}, "
          f"{args.precision}, {args.threads} threads, train rows {args.train_rows or 'all'}; load avg "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    results: dict[str, list[dict]] = {w: [] for w in args.runs}
    for r in range(args.repeats):
        for which in args.runs:
            res = run_child(which, args)
            results[which].append(res)
            slowest = f"  slowest 10-step window {min(res['windows']):.1f} ex/s" if res["windows"] else ""
            print(f"  repeat {r + 1}/{args.repeats} {RUNS[which]:<9} train {res['train_seconds']:7.1f} s  wall "
                  f"{res['wall_seconds']:7.1f} s  cpu {res['cpu_seconds']:7.1f} s  preempted {res['preempted']:6d}  "
                  f"{spec.primary_metric} {res['score']:.4f}{slowest}  load avg "
                  f"{os.getloadavg()[0]:.1f}", flush=True)
    print(f"\n{'run':<10}{'steps':>6}{'train s med [best]':>22}{'wall s med':>12}{spec.primary_metric:>16}"
          f"{'median window ex/s':>20}{'slowest window':>16}")
    med = {}
    for which, runs in results.items():
        med[which] = statistics.median(r["train_seconds"] for r in runs)
        windows = [w for r in runs for w in r["windows"]]
        cells = (f"{statistics.median(windows):>20.1f}{min(windows):>16.1f}" if windows else f"{'-':>20}{'-':>16}")
        train = f"{med[which]:.1f} [{min(r['train_seconds'] for r in runs):.1f}]"
        print(f"{RUNS[which]:<10}{runs[0]['steps']:>6}{train:>22}"
              f"{statistics.median(r['wall_seconds'] for r in runs):>12.1f}"
              f"{statistics.median(r['score'] for r in runs):>16.4f}{cells}")
    if "l" in med and "p" in med:
        ratio = med["p"] / med["l"]
        print(f"pipeline / loop training seconds: {ratio:.3f} (goal <= 1.05: {'met' if ratio <= 1.05 else 'NOT met'})")
    if "p" in med and "t" in med:
        print(f"pipeline speed vs trainer: {med['t'] / med['p']:.2f}x")


if __name__ == "__main__":
    main()
