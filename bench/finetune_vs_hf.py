"""Fine-tuning speed of our engine vs the Hugging Face ``Trainer``: same checkpoint, rows, batch, lr, seed, threads.

    python bench/finetune_vs_hf.py [--train-rows 2000] [--epochs 1] [--threads 2] [--repeats 1]

Runs, each in a fresh subprocess (so peak RSS is per run), on the first N SST-2 train rows of the
shared data (BERTFLOW_DATA_DIR, default ../shared/datasets) and the full 872-row SST-2 dev split:

  (a) hf-default  ``Trainer`` as run_glue runs it: every row padded to 128 tokens, fp32, random order;
  (b) hf-tuned    ``Trainer`` with dynamic padding (DataCollatorWithPadding), group_by_length, and the best
                  precision for this machine by ours' ``precision: auto`` rule: bf16 where the CPU has native
                  bf16 (AVX512-BF16 / AMX), else fp32 (emulated bf16 is ~4x slower than fp32);
  (c) ours        ``bert_core.training.fit``: dynamic padding, length-grouped batches, ``precision: auto``.

All three: the packaged all-MiniLM-L6-v2, the same BertTokenizerFast/tokenizer.json token ids (checked),
AdamW (weight decay on matrices only), linear warmup (the same number of steps) then linear decay,
gradient clipping at 1.0, no evaluation or checkpoint inside the timed region. Timed: the training
loop only (HF: ``on_train_begin`` -> ``on_train_end``; ours: ``FitResult.train_seconds``), so
tokenization, model loading and dev evaluation are excluded everywhere.

Printed per run: train examples/s, real (non-pad) tokens/s, the share of processed tokens that are
padding, peak RSS, dev accuracy and model FLOP utilisation (MFU): training FLOPs of the real tokens,
6 * (non-embedding params) * tokens + 12 * layers * hidden * tokens * length (attention), per second,
over the peak of a 2048x2048 matmul in the precision the run used (bf16 or fp32), measured here with the
same threads. HFU counts the padded tokens too. Both count the whole model; ours skips the last layer's
positions other than [CLS] (``SequenceClassifier.cls_only``), so part of its MFU is work not done.
Every side runs with this process's malloc: prefix the command with
``LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4`` for tcmalloc on every side (what ``bertflow``
itself picks when the system has it, ``launcher/malloc.py``); the header says which.
With --repeats R the runs are interleaved (a, b, c, a, b, c, ...) and the median is reported (best in
brackets). The last line is ``ratio_vs_tuned=X ratio_vs_default=Y acc_delta=Z mfu=M mfu_shape=S``: (c)/(b) and
(c)/(a) in examples/s, (c)'s dev accuracy minus (b)'s in points, and (c)'s MFU in percent against the square's peak
and against the peak of the model's own matmul shapes (``shape_peak``: BERT-shaped matmuls at the run's batch
size, in its precision; on a CPU whose square peak the small shapes never reach, the second says how much of
what the shapes allow the step uses).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNS = {"a": "hf-default", "b": "hf-tuned", "c": "ours"}
MAX_LENGTH = 128


# ---- shared inputs ------------------------------------------------------------------------------
def data_dir() -> Path:
    return Path(os.environ.get("BERTFLOW_DATA_DIR") or REPO_ROOT.parent / "shared" / "datasets")


def load_rows(n: int):
    """(spec, first n train rows, all dev rows, label names, data fingerprint) of SST-2."""
    from bert_core.loading import load_task_data
    from bert_core.spec import load_spec

    spec = load_spec("sst2")
    data = load_task_data(spec, data_dir())
    train = data.splits["train"].select(range(min(n, len(data.splits["train"])))).to_list()
    return spec, train, data.splits["eval"].to_list(), data.label_names, data.fingerprint


def our_features(rows, label_names):
    """Our feature rows (token ids + label index): the reference the HF tokenization must equal."""
    from bert_core.checkpoint import resolve_source
    from bert_core.families import get_family
    from bert_core.tokenizer import BertTokenizer

    tokenizer = BertTokenizer.from_folder(resolve_source(None))
    return get_family("single_classification").features.build(rows, tokenizer, label_names, {"max_seq_length": MAX_LENGTH})


def model_shape() -> dict:
    """Layers, hidden size and the parameter count that runs once per token (the Transformer layers)."""
    from bert_core.checkpoint import load_pretrained

    encoder, _ = load_pretrained(None)
    per_token = sum(p.numel() for p in encoder.layers.parameters())
    return {"layers": encoder.config.num_hidden_layers, "hidden": encoder.config.hidden_size, "params": per_token,
            "intermediate": encoder.config.intermediate_size}


def train_flops(shapes: list[tuple[int, int]], m: dict) -> float:
    """Forward + backward FLOPs of sequences: (count, length) pairs; 3x the forward's 2*params + attention.

    Attention per token and layer: QK^T and AV each 2 * length * hidden FLOPs forward."""
    return sum(b * t * (6 * m["params"] + 12 * m["layers"] * m["hidden"] * t) for b, t in shapes)


def total_steps(n: int, batch_size: int, epochs: float) -> int:
    return math.ceil(epochs * math.ceil(n / batch_size))


# ---- (a) and (b): the Hugging Face Trainer ----------------------------------------------------------
class CountingCollator:
    """Wraps a collator to record the padded (B, T) shape and real tokens of every batch it makes."""

    def __init__(self, inner):
        self.inner, self.shapes, self.real_tokens = inner, [], 0

    def __call__(self, features):
        batch = self.inner(features)
        self.shapes.append(tuple(batch["input_ids"].shape))
        self.real_tokens += int(batch["attention_mask"].sum())
        return batch


def run_hf(args, tuned: bool) -> dict:
    import datasets
    import transformers
    from transformers import (
        BertForSequenceClassification,
        BertTokenizerFast,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        default_data_collator,
    )

    from bert_core.checkpoint import resolve_source

    transformers.logging.set_verbosity_error()
    _, train_rows, dev_rows, label_names, _ = load_rows(args.train_rows)
    folder = str(resolve_source(None))
    tokenizer = BertTokenizerFast.from_pretrained(folder)
    padding = False if tuned else "max_length"  # run_glue --pad_to_max_length (its default) pads every row

    def encode(rows):
        enc = tokenizer([r["text_a"] for r in rows], truncation=True, max_length=MAX_LENGTH, padding=padding)
        return datasets.Dataset.from_dict({**enc, "labels": [label_names.index(r["label"]) for r in rows]})

    train_ds, dev_ds = encode(train_rows), encode(dev_rows)
    reference = our_features(train_rows, label_names)
    ids_match = all(
        [t for t, m in zip(ids, mask, strict=True) if m] == f["input_ids"] and label == f["labels"]
        for ids, mask, label, f in zip(train_ds["input_ids"], train_ds["attention_mask"], train_ds["labels"], reference,
                                       strict=True))
    if not ids_match:
        raise SystemExit("HF tokenization differs from ours on the training rows: the comparison would be unfair")

    transformers.set_seed(args.seed)  # the classifier's random init happens in from_pretrained
    model = BertForSequenceClassification.from_pretrained(folder, num_labels=len(label_names))
    collator = CountingCollator(DataCollatorWithPadding(tokenizer) if tuned else default_data_collator)
    steps = total_steps(len(train_rows), args.batch_size, args.epochs)

    class Clock(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):
            collator.shapes, collator.real_tokens = [], 0
            self.threads = torch.get_num_threads()
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

        def on_train_end(self, a, state, control, **kw):
            self.seconds, self.cpu_seconds = time.perf_counter() - self.start, time.process_time() - self.cpu_start
            self.shapes, self.real_tokens, self.steps = list(collator.shapes), collator.real_tokens, state.global_step

    clock = Clock()
    with tempfile.TemporaryDirectory() as out:
        training_args = TrainingArguments(
            output_dir=out, use_cpu=True, seed=args.seed, per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=64, learning_rate=args.learning_rate, num_train_epochs=args.epochs,
            lr_scheduler_type="linear", warmup_steps=int(args.warmup_ratio * steps),  # ours: int(ratio * steps)
            weight_decay=args.weight_decay, max_grad_norm=1.0, bf16=tuned and auto_precision() == "bf16",
            train_sampling_strategy="group_by_length" if tuned else "random",
            eval_strategy="no", save_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True,
            dataloader_num_workers=0, dataloader_pin_memory=False,
        )
        trainer = Trainer(model=model, args=training_args, train_dataset=train_ds, data_collator=collator,
                          processing_class=tokenizer, callbacks=[clock])
        torch.set_num_threads(args.threads)  # after accelerate's setup, in case it touched them
        trainer.train()
        # Scored against predict's own label_ids: with group_by_length, transformers 5's Trainer also length-groups
        # the evaluation sampler, so its predictions are not in dev_ds's order (scored against dev_ds["labels"] the
        # Trainer looked at chance: 52.5% where it reached 78.9% at 4,000 rows).
        prediction = trainer.predict(dev_ds)
    accuracy = float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())
    return {"seconds": clock.seconds, "cpu_seconds": clock.cpu_seconds, "examples": len(train_rows) * args.epochs,
            "steps": clock.steps,
            "real_tokens": clock.real_tokens, "batch_shapes": clock.shapes, "accuracy": accuracy,
            "precision": "bf16" if training_args.bf16 else "fp32", "threads": clock.threads, "ids_match": ids_match,
            "optimizer": training_args.optim.value if hasattr(training_args.optim, "value") else str(training_args.optim)}


# ---- (c) ours -----------------------------------------------------------------------------------------
def run_ours(args) -> dict:
    from bert_core.training import TrainConfig, fit
    from bert_core.training.batching import make_batch, step_batches
    from bert_core.training.optim import build_optimizer

    spec, train_rows, dev_rows, label_names, fingerprint = load_rows(args.train_rows)
    cfg = TrainConfig(
        learning_rate=args.learning_rate, batch_size=args.batch_size, epochs=args.epochs, seed=args.seed,
        warmup_ratio=args.warmup_ratio, weight_decay=args.weight_decay, max_grad_norm=1.0, precision=args.precision,
        group_by_length=True, max_seq_length=MAX_LENGTH, eval_every=10**9, checkpoint_every=None, checkpoint_minutes=None,
        progress_bar=False, num_threads=args.threads, embedding_update=args.embedding_update,
    )
    started = {}

    class Clock:  # process CPU time of the loop: on_train_start -> the last on_step (logged before the final eval)
        def on_train_start(self, info):
            started["threads"], started["cpu"] = torch.get_num_threads(), time.process_time()

        def on_step(self, step, metrics):
            started["cpu_seconds"] = time.process_time() - started["cpu"]

    with tempfile.TemporaryDirectory() as out:
        result = fit(spec, cfg, Path(out) / "run", train_rows, dev_rows, label_names, pretrained=None,
                     data_fingerprint=f"{fingerprint}|first{len(train_rows)}", cache_dir=Path(out) / "cache",
                     callbacks=[Clock()])
    # The padded batch shapes fit ran: the same step_batches through the same collate.
    features = our_features(train_rows, label_names)
    lengths = [len(f["input_ids"]) for f in features]
    steps_per_epoch = math.ceil(len(lengths) / args.batch_size)
    shapes = []
    for step in range(result.final_step):
        epoch, index = divmod(step, steps_per_epoch)
        batch = step_batches(lengths, args.batch_size, args.seed, epoch, True)[index]
        shapes.append(tuple(make_batch(features, batch, 0, ("input_ids",))["input_ids"].shape))
    opt = build_optimizer(torch.nn.Linear(2, 2), 1e-3, 0.0).defaults
    return {"seconds": result.train_seconds, "cpu_seconds": started["cpu_seconds"],
            "examples": round(result.examples_per_second * result.train_seconds), "steps": result.final_step,
            "real_tokens": round(result.tokens_per_second * result.train_seconds), "batch_shapes": shapes,
            "accuracy": result.eval_metrics["accuracy"], "precision": result.precision,
            "threads": started.get("threads"), "ids_match": True,
            "optimizer": "AdamW " + ("fused" if opt.get("fused") else "foreach" if opt.get("foreach") else "for-loop")}


# ---- the parent: bf16 peak, subprocesses, table ---------------------------------------------------
def matmul_peak(threads: int, dtype=torch.bfloat16, n: int = 2048, reps: int = 5) -> float:
    """Best-of FLOP/s of an n x n x n matmul with these threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best = math.inf
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(5):
            a @ b
        best = min(best, (time.perf_counter() - start) / 5)
    return 2 * n**3 / best


def model_matmuls(tokens: int, hidden: int, intermediate: int) -> list[tuple[int, int, int]]:
    """(n, k, m) of the matmuls one encoder layer's linear layers run on ``tokens`` rows, forward and backward:
    fused QKV (H -> 3H), attention output (H -> H), FFN up (H -> I) and down (I -> H); for each, the forward
    (tokens x k) @ (k x m), the input gradient (tokens x m) @ (m x k) and the weight gradient (m x tokens) @ (tokens x k)."""
    shapes = []
    for k, m in ((hidden, 3 * hidden), (hidden, hidden), (hidden, intermediate), (intermediate, hidden)):
        shapes += [(tokens, k, m), (tokens, m, k), (m, tokens, k)]
    return shapes


def shape_peak(threads: int, shapes: list[tuple[int, int, int]], dtype=torch.bfloat16, reps: int = 5) -> float:
    """FLOP/s of these (n, k, m) matmuls run one after another, best of ``reps``: the peak of the shapes a model
    runs, which for a small hidden size is well below a 2048^3 square's."""
    torch.set_num_threads(threads)
    pairs = [(torch.randn(n, k, dtype=dtype), torch.randn(k, m, dtype=dtype)) for n, k, m in shapes]
    flops = sum(2 * n * k * m for n, k, m in shapes)
    for a, b in pairs:
        a @ b
    best = math.inf
    for _ in range(reps):
        start = time.perf_counter()
        for a, b in pairs:
            a @ b
        best = min(best, time.perf_counter() - start)
    return flops / best


def run_child(which: str, args) -> dict:
    cmd = [sys.executable, __file__, "--only", which, *sys.argv[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"run {which} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-rows", type=int, default=2000, help="first N SST-2 train rows")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-5,
                        help="default: TrainingArguments'/run_glue's; the sst2 spec's 2e-5 leaves 63 steps at chance")
    parser.add_argument("--warmup-ratio", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"], help="ours (c) only")
    parser.add_argument("--embedding-update", default="dense", choices=["dense", "sparse"],
                        help="ours (c) only: TrainConfig.embedding_update")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats of each run; median reported")
    parser.add_argument("--runs", default="abc", help="which runs, e.g. 'bc'")
    parser.add_argument("--only", choices=list(RUNS), help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()

    if args.only:
        torch.set_num_threads(args.threads)
        result = run_ours(args) if args.only == "c" else run_hf(args, tuned=args.only == "b")
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        print("RESULT " + json.dumps(result))
        return

    import transformers

    peaks = {"bf16": matmul_peak(args.threads), "fp32": matmul_peak(args.threads, torch.float32)}
    shape = model_shape()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {args.threads}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}, malloc for every side: "
          f"{os.environ.get('LD_PRELOAD') or 'the system one (glibc)'}")
    print(f"SST-2 first {args.train_rows} train rows, 872 dev rows; batch {args.batch_size}, lr {args.learning_rate}, "
          f"epochs {args.epochs}, seed {args.seed}, warmup {args.warmup_ratio}, weight decay {args.weight_decay}; ours' "
          f"embedding update {args.embedding_update}")
    print(f"measured matmul peak (2048^3, {args.threads} threads): bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s, "
          f"fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s; precision auto here: {auto_precision()}; per-token params {shape['params'] / 1e6:.2f}M, "
          f"{shape['layers']} layers, hidden {shape['hidden']}")

    results: dict[str, list[dict]] = {w: [] for w in args.runs}
    for r in range(args.repeats):
        for which in args.runs:
            load_before = os.getloadavg()[0]
            res = run_child(which, args)
            res["examples_per_second"] = res["examples"] / res["seconds"]
            res["cpu_util"] = res["cpu_seconds"] / (res["seconds"] * args.threads)
            results[which].append(res)
            print(f"  repeat {r + 1}/{args.repeats} {RUNS[which]:<10} {res['seconds']:7.1f} s  "
                  f"{res['examples_per_second']:7.1f} ex/s  acc {100 * res['accuracy']:.2f}  CPU use "
                  f"{100 * res['cpu_util']:.0f}% of {args.threads} threads  load avg {load_before:.1f} -> "
                  f"{os.getloadavg()[0]:.1f}", flush=True)

    print()
    header = (f"{'run':<12}{'prec':>5}{'steps':>6}{'train s':>9}{'ex/s med [best]':>18}{'real tok/s':>11}"
              f"{'pad %':>7}{'peak RSS MB':>12}{'dev acc %':>10}{'MFU %':>7}{'HFU %':>7}{'MFU shp %':>10}{'CPU %':>7}")
    print(header)
    useful = _useful_flops(args, shape)  # the same rows and epochs in every run
    summary = {}
    for which, runs in results.items():
        med = statistics.median(r["examples_per_second"] for r in runs)
        best = max(r["examples_per_second"] for r in runs)
        seconds = statistics.median(r["seconds"] for r in runs)
        first = runs[0]
        padded = sum(b * t for b, t in first["batch_shapes"])
        hardware = train_flops([(b, t) for b, t in first["batch_shapes"]], shape)
        peak = peaks[first["precision"]]  # MFU against the peak of the precision this run used
        # ... and against the peak of the matmuls this model runs at this run's median batch size in tokens
        tokens = int(statistics.median(b * t for b, t in first["batch_shapes"]))
        dtype = torch.bfloat16 if first["precision"] == "bf16" else torch.float32
        peak_shapes = shape_peak(args.threads, model_matmuls(tokens, shape["hidden"], shape["intermediate"]), dtype)
        summary[which] = {"eps": med, "acc": statistics.median(r["accuracy"] for r in runs),
                          "mfu": 100 * useful / seconds / peak, "mfu_shape": 100 * useful / seconds / peak_shapes,
                          "peak_shapes": peak_shapes, "tokens": tokens}
        print(f"{RUNS[which]:<12}{first['precision']:>5}{first['steps']:>6}{seconds:>9.1f}"
              f"{f'{med:.1f} [{best:.1f}]':>18}{first['real_tokens'] / seconds:>11.0f}"
              f"{100 * (1 - first['real_tokens'] / padded):>7.1f}"
              f"{statistics.median(r['peak_rss_mb'] for r in runs):>12.0f}{100 * summary[which]['acc']:>10.2f}"
              f"{100 * useful / seconds / peak:>7.1f}{100 * hardware / seconds / peak:>7.1f}"
              f"{summary[which]['mfu_shape']:>10.1f}{100 * statistics.median(r['cpu_util'] for r in runs):>7.0f}")
    print("MFU: training FLOPs of the real tokens per second / measured matmul peak of the run's precision; HFU: of "
          "the padded tokens. Both count the whole model's FLOPs; ours computes the last layer for [CLS] alone (all "
          "its head reads), so up to a seventh of the count (most of 1 layer in 6) is work it skips, not work done faster. "
          "MFU shp: the same FLOPs over the measured peak of the model's own matmuls (its linear layers' forward and "
          "backward shapes at the run's median batch tokens, in its precision): what the shapes allow, not a 2048^3 "
          "square. CPU %: process CPU time in the timed loop / (wall time x threads); well under 100 means the cores "
          "were shared.")
    for which, row in summary.items():
        print(f"  {RUNS[which]}: shape peak {row['peak_shapes'] / 1e9:.1f} GFLOP/s at {row['tokens']} tokens a batch")
    for which, runs in results.items():
        print(f"  {RUNS[which]}: threads in training {runs[0]['threads']}, optimizer {runs[0]['optimizer']}, "
              f"token ids equal to ours: {runs[0]['ids_match']}")

    if {"a", "b", "c"} <= set(summary):
        vs_tuned = summary["c"]["eps"] / summary["b"]["eps"]
        vs_default = summary["c"]["eps"] / summary["a"]["eps"]
        delta = 100 * (summary["c"]["acc"] - summary["b"]["acc"])
        print(f"goal (c) >= 1.5x (b): {'met' if vs_tuned >= 1.5 else 'NOT met'}; (c) >= 4x (a): "
              f"{'met' if vs_default >= 4 else 'NOT met'}; dev accuracy >= (b) - 0.5 point: "
              f"{'met' if delta >= -0.5 else 'NOT met'}")
        print(f"ratio_vs_tuned={vs_tuned:.2f} ratio_vs_default={vs_default:.2f} acc_delta={delta:+.2f} "
              f"mfu={summary['c']['mfu']:.1f} mfu_shape={summary['c']['mfu_shape']:.1f}")


def auto_precision() -> str:
    """What ``precision: auto`` picks on this machine; the tuned Trainer follows the same rule."""
    from bert_core.training.config import TrainConfig

    return TrainConfig(precision="auto").resolved_precision(torch.device("cpu"))


def _useful_flops(args, shape: dict) -> float:
    """Training FLOPs of the real tokens: every training row at its own length, once per epoch."""
    _, train_rows, _, label_names, _ = load_rows(args.train_rows)
    lengths = [len(f["input_ids"]) for f in our_features(train_rows, label_names)]
    return args.epochs * train_flops([(1, t) for t in lengths], shape)


if __name__ == "__main__":
    main()
