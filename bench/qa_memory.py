"""Peak memory (RSS) of SQuAD-sized work: ours vs transformers' BertForQuestionAnswering, same weights and batches.

    BERTFLOW_DATA_DIR=../shared/datasets python bench/qa_memory.py [--threads 1] [--batch-size 32] [--eval-batch-size 64]

Each case runs in its own fresh process (peak RSS is per process) and prints its peak above the process's RSS
with the model loaded:

  train step   one forward + backward at batch x 384 tokens in train mode (dropout on), the spec's SQuAD
               window length, random token ids; ours with attention recomputed in backward (the default for
               attention maps this large), ours without it, and transformers' SDPA model.
  eval         forward passes over every window of the carved SQuAD eval split (no grad), batched by length as
               ``bert_core.training.inference.predict_logits`` does: longest first (ours' order), shortest first
               (the order before), and transformers' model in our order.

Precision as ``precision: auto`` picks it (bf16 autocast where the CPU has native bf16, else fp32) for all.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys

import torch

TRAIN_CASES = ("ours", "ours-no-recompute", "hf")
EVAL_CASES = ("ours-longest-first", "ours-shortest-first", "hf-longest-first")


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def build_model(side: str):
    """(model, pad id, tokenizer) of the packaged checkpoint with a fresh QA head."""
    from bert_core import get_family, load_pretrained
    from bert_core.checkpoint import resolve_source

    encoder, tokenizer = load_pretrained()
    if side == "hf":
        import transformers

        model = transformers.BertForQuestionAnswering.from_pretrained(str(resolve_source(None)), attn_implementation="sdpa")
    else:
        model = get_family("extractive_qa").build_model(encoder, None)
    return model, tokenizer


def autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def train_step(case: str, batch_size: int, precision: str) -> dict:
    import bert_core.model

    if case == "ours-no-recompute":
        bert_core.model.RECOMPUTE_ATTENTION_ABOVE = float("inf")
    model, _ = build_model("hf" if case == "hf" else "ours")
    model.train()
    torch.manual_seed(0)
    ids = torch.randint(1000, 20000, (batch_size, 384))
    ones, targets = torch.ones_like(ids), torch.zeros(batch_size, dtype=torch.long)
    base = current_rss_mb()
    with autocast(precision):
        out = model(input_ids=ids, token_type_ids=torch.zeros_like(ids), attention_mask=ones,
                    start_positions=targets, end_positions=targets)
    out.loss.backward()
    return {"base_mb": base, "peak_mb": peak_rss_mb()}


def eval_pass(case: str, batch_size: int, precision: str) -> dict:
    from bert_core import get_family
    from bert_core.families.base import MODEL_INPUTS
    from bert_core.loading import load_task_data
    from bert_core.spec import load_spec
    from bert_core.training.batching import make_batch

    spec = load_spec("squad")
    family = get_family(spec.family)
    model, tokenizer = build_model("hf" if case.startswith("hf") else "ours")
    model.eval()
    rows = load_task_data(spec).splits["eval"]
    features = family.features.build(rows, tokenizer, None, {"max_seq_length": spec.max_seq_length,
                                                              **family.rows.task_settings(spec)})
    lengths = [len(f["input_ids"]) for f in features]
    sign = 1 if case.endswith("shortest-first") else -1
    order = sorted(range(len(lengths)), key=lambda i: sign * lengths[i])
    base = current_rss_mb()
    kept = []
    with torch.no_grad(), autocast(precision):
        for start in range(0, len(order), batch_size):
            batch = make_batch(features, order[start:start + batch_size], tokenizer.pad_id, MODEL_INPUTS)
            out = model(**batch)
            logits = out.logits if hasattr(out, "logits") else torch.stack([out.start_logits, out.end_logits], -1)
            kept.append(logits.float().numpy())  # what evaluation keeps: (B, T, 2) per batch
    return {"base_mb": base, "peak_mb": peak_rss_mb(), "windows": len(features), "questions": len(rows)}


def run_case(kind: str, case: str, args) -> dict:
    """One case in a fresh interpreter; its JSON result."""
    cmd = [sys.executable, __file__, "--one", kind, case, "--threads", str(args.threads),
           "--batch-size", str(args.batch_size), "--eval-batch-size", str(args.eval_batch_size)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{kind} {case} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--one", nargs=2, metavar=("KIND", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from bert_core.training.config import TrainConfig

    precision = TrainConfig().resolved_precision(torch.device("cpu"))
    if args.one:
        kind, case = args.one
        result = (train_step(case, args.batch_size, precision) if kind == "train"
                  else eval_pass(case, args.eval_batch_size, precision))
        print(json.dumps(result))
        return

    print(f"precision {precision}, {args.threads} thread(s), torch {torch.__version__}")
    print(f"{'what':<12} {'case':<22} {'model loaded MB':>16} {'peak MB':>9} {'peak - loaded':>14}")
    for kind, cases in (("train", TRAIN_CASES), ("eval", EVAL_CASES)):
        for case in cases:
            r = run_case(kind, case, args)
            what = f"train B={args.batch_size}" if kind == "train" else f"eval {r['windows']} w"
            print(f"{what:<12} {case:<22} {r['base_mb']:>16.0f} {r['peak_mb']:>9.0f} {r['peak_mb'] - r['base_mb']:>14.0f}",
                  flush=True)


if __name__ == "__main__":
    main()
