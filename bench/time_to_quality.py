"""Time to a fixed quality on SST-2: wall seconds from the start of training until dev accuracy first reaches a
target, ours vs the tuned Hugging Face ``Trainer``, each in a fresh process, one after the other.

    python bench/time_to_quality.py [--target 0.88] [--eval-every 100] [--train-rows 67349] [--epochs 1] [--threads 2]

Both sides: the packaged all-MiniLM-L6-v2, the SST-2 train rows (default all 67,349) and the 872-row dev
split, batch 32, the sst2 spec's lr 2e-5, warmup 10%, weight decay 0.01, clipping at 1.0, seed 42, dynamic
padding and length grouping, the precision ours' ``precision: auto`` picks (the Trainer follows the same rule),
and a dev evaluation every ``--eval-every`` steps. The clock runs from the start of the training loop and
includes those evaluations on both sides (the same cadence and dev set), because a user waits for them too.

Printed: every evaluation (step, seconds, accuracy) of both, then the seconds at which each first reached the
target; when one side never reaches it, the target becomes the best accuracy both reached.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_vs_hf import REPO_ROOT, auto_precision, load_rows, total_steps  # noqa: E402

SIDES = {"b": "hf-tuned", "c": "ours"}


def run_ours(args) -> list[tuple[int, float, float]]:
    from bert_core.training import TrainConfig, fit

    spec, train_rows, dev_rows, label_names, fingerprint = load_rows(args.train_rows)
    cfg = TrainConfig(learning_rate=args.learning_rate, batch_size=32, epochs=args.epochs, seed=42, warmup_ratio=0.1,
                      weight_decay=0.01, max_grad_norm=1.0, group_by_length=True, max_seq_length=128,
                      eval_every=args.eval_every, checkpoint_minutes=None, progress_bar=False,
                      num_threads=args.threads)
    curve, clock = [], {}

    class Clock:
        def on_train_start(self, info):
            clock["start"] = time.perf_counter()

        def on_evaluate(self, step, metrics):
            curve.append((step, time.perf_counter() - clock["start"], metrics["accuracy"]))

    with tempfile.TemporaryDirectory() as out:
        fit(spec, cfg, Path(out) / "run", train_rows, dev_rows, label_names, data_fingerprint=fingerprint,
            cache_dir=Path(out) / "cache", callbacks=[Clock()])
    return curve


def run_hf(args) -> list[tuple[int, float, float]]:
    import datasets
    import numpy as np
    import transformers
    from transformers import (
        BertForSequenceClassification,
        BertTokenizerFast,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from bert_core.checkpoint import resolve_source

    transformers.logging.set_verbosity_error()
    _, train_rows, dev_rows, label_names, _ = load_rows(args.train_rows)
    folder = str(resolve_source(None))
    tokenizer = BertTokenizerFast.from_pretrained(folder)

    def encode(rows):
        enc = tokenizer([r["text_a"] for r in rows], truncation=True, max_length=128)
        return datasets.Dataset.from_dict({**enc, "labels": [label_names.index(r["label"]) for r in rows]})

    train_ds, dev_ds = encode(train_rows), encode(dev_rows)
    transformers.set_seed(42)
    model = BertForSequenceClassification.from_pretrained(folder, num_labels=len(label_names))
    curve, clock = [], {}

    class Clock(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):
            clock["start"] = time.perf_counter()

        def on_evaluate(self, a, state, control, metrics=None, **kw):
            curve.append((state.global_step, time.perf_counter() - clock["start"], metrics["eval_accuracy"]))

    steps = total_steps(len(train_rows), 32, args.epochs)
    with tempfile.TemporaryDirectory() as out:
        training_args = TrainingArguments(
            output_dir=out, use_cpu=True, seed=42, per_device_train_batch_size=32, per_device_eval_batch_size=64,
            learning_rate=args.learning_rate, num_train_epochs=args.epochs, lr_scheduler_type="linear",
            warmup_steps=int(0.1 * steps), weight_decay=0.01, max_grad_norm=1.0, bf16=auto_precision() == "bf16",
            train_sampling_strategy="group_by_length", eval_strategy="steps", eval_steps=args.eval_every,
            save_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True,
            dataloader_num_workers=0, dataloader_pin_memory=False)
        trainer = Trainer(model=model, args=training_args, train_dataset=train_ds, eval_dataset=dev_ds,
                          data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
                          compute_metrics=lambda p: {"accuracy": float((np.asarray(p.predictions).argmax(-1)
                                                                        == p.label_ids).mean())},
                          callbacks=[Clock()])
        torch.set_num_threads(args.threads)
        trainer.train()
        if not curve or curve[-1][0] != trainer.state.global_step:  # the final step, as ours evaluates it
            trainer.evaluate()
    return curve


def first_reaching(curve, target: float) -> tuple[int, float] | None:
    return next(((step, seconds) for step, seconds, acc in curve if acc >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=float, default=0.88)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--train-rows", type=int, default=67349)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--learning-rate", type=float, default=2e-5, help="the sst2 spec's")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--only", choices=list(SIDES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        torch.set_num_threads(args.threads)
        print("RESULT " + json.dumps(run_ours(args) if args.only == "c" else run_hf(args)))
        return

    print(f"SST-2 first {args.train_rows} train rows, {args.epochs} epoch(s), lr {args.learning_rate}, evaluation every "
          f"{args.eval_every} steps, {args.threads} threads, precision {auto_precision()}; load avg "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    curves = {}
    for which in ("c", "b"):
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
        proc = subprocess.run([sys.executable, __file__, "--only", which, *sys.argv[1:]], capture_output=True,
                              text=True, env=env, cwd=REPO_ROOT)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            raise SystemExit(f"{SIDES[which]} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        curves[which] = json.loads(lines[-1][len("RESULT "):])
        print(f"{SIDES[which]}: " + ", ".join(f"{s}:{t:.0f}s:{a:.4f}" for s, t, a in curves[which]), flush=True)
    target = args.target
    if any(first_reaching(c, target) is None for c in curves.values()):
        target = min(max(a for _, _, a in c) for c in curves.values())
        print(f"not both reached {args.target}; the best accuracy both reached is {target:.4f}")
    reached = {w: first_reaching(c, target) for w, c in curves.items()}
    for w, (step, seconds) in reached.items():
        print(f"{SIDES[w]:<9} first reached {target:.4f} at step {step}, {seconds:.0f} s; best "
              f"{max(a for _, _, a in curves[w]):.4f}, final {curves[w][-1][2]:.4f}")
    print(f"time_to_quality ours / hf-tuned = {reached['c'][1] / reached['b'][1]:.2f} (target {target:.4f})")


if __name__ == "__main__":
    main()
