"""Training-step variants on real SST-2 batches: eager (what ``fit`` runs) vs ``torch.compile`` of the model or of
the whole step, vs a frozen word embedding, on the same batches in one process.

    python bench/step_variants.py [--variants before,eager,separate-clip,fresh-word-grad] [--steps 60] [--repeats 1]
                                  [--threads 2] [--precision auto] [--profile N]

Every variant: the packaged all-MiniLM-L6-v2 + a fresh SST-2 head (seed 0), the first ``--steps`` x 32 SST-2
train rows in ``step_batches`` order (length-grouped, seed 42), ``fit``'s step (autocast forward, loss,
backward, clipping at 1.0 folded into fused AdamW's grad_scale, fused AdamW with weight decay on matrices,
zero_grad), lr 2e-5.

- ``eager``           ``fit``'s step as it is.
- ``separate-clip``   eager with clipping as its own pass (``clip_grad_norm_`` multiplies every gradient by the
                      clip factor, then AdamW reads them): the step before ``optim.clipped_step``, the same math.
- ``fresh-word-grad`` eager with PyTorch's dense embedding backward: a new zero-filled (V, H) word-embedding
                      gradient every step, as before ``training/word_gradient.py``; the same math.
- ``before``          both of the above: the step as it was before issue 25's changes.
- ``compile-model``   ``torch.compile(model)``, the rest eager. Batch lengths are padded up to a multiple of
                      N (``compile-model@16``) so the number of shapes, hence recompiles, stays bounded; with
                      ``-dynamic`` (``compile-model-dynamic``) one graph with a symbolic length.
- ``compile-step``    ``torch.compile`` of forward + loss + backward in one function, and of the optimizer step.
- ``sparse-words``    eager with ``embedding_update: sparse``: a sparse word-embedding gradient, AdamW on the batch's
                      rows only (not the same math as dense AdamW).
- ``torch-dropout``   eager with torch's own dropout mask (``bernoulli_``, one draw per element) instead of
                      ``bert_core/dropout.py``'s lanes (a quarter of the draws; the same distribution to 1/65536).
- ``no-attention-dropout``  eager without dropout on the attention probabilities (another recipe): what SDPA's
                      math path, which CPU SDPA takes whenever dropout is on, costs against its fused kernel.
- ``full-last-layer`` eager with the encoder's last layer computed for every token (``SequenceClassifier.cls_only =
                      False``), as before the classifier asked for its [CLS] position alone: the same math.
- ``bf16-weights``    the model itself in bf16, no autocast, and fused AdamW on fp32 master copies (grads cast up,
                      weights cast back after each update): no per-op casts, bf16 element-wise kernels throughout.
- ``frozen-words``    eager, with the 30522 x H word embedding frozen: no gradient, no AdamW update (a different
                      recipe: what a row-sparse or lazy update could save at most).

Each variant runs the steps twice (fresh model and optimizer); the second pass, where every shape was seen, is
timed. Printed per variant: one-off seconds (the first pass minus the second: compilation, for eager kernel set-up),
steady-state ms per step (the second pass's mean; the median over ``--repeats``), examples/s, and the first and
last losses of the first pass (the same math gives the same losses up to kernel rounding; compiled dropout draws
other random masks).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def batches(n_steps: int, bucket: int):
    """(input_ids, attention_mask, token_type_ids, labels) tensors of the first n_steps SST-2 batches."""
    from bert_core.checkpoint import resolve_source
    from bert_core.families import get_family
    from bert_core.loading import load_task_data
    from bert_core.spec import load_spec
    from bert_core.tokenizer import BertTokenizer
    from bert_core.training.batching import step_batches

    root = Path(os.environ.get("BERTFLOW_DATA_DIR") or REPO.parent / "shared" / "datasets")
    spec = load_spec("sst2")
    data = load_task_data(spec, root)
    rows = data.splits["train"].select(range(32 * n_steps)).to_list()
    tokenizer = BertTokenizer.from_folder(resolve_source(None))
    feats = get_family("single_classification").features.build(rows, tokenizer, data.label_names, {"max_seq_length": 128})
    out = []
    for idx in step_batches([len(f["input_ids"]) for f in feats], 32, 42, 0, True):
        from bert_core.families.base import collate

        b = collate([{k: feats[i][k] for k in ("input_ids", "token_type_ids", "labels")} for i in idx],
                    pad_id=tokenizer.pad_id, pad_to_multiple_of=bucket)
        out.append(b)
    return out


# Variants whose step is fit's eager one apart from what they change (the compiled, sparse, bf16-weight and
# frozen variants keep PyTorch's own embedding backward).
FIT_LIKE = {"eager", "separate-clip", "no-attention-dropout", "full-last-layer", "torch-dropout"}


def fresh_model():
    from bert_core import get_family, load_pretrained

    torch.manual_seed(0)
    encoder, _ = load_pretrained(None)
    return get_family("single_classification").build_model(encoder, ["0", "1"]).train()


def run_variant(variant: str, data, args) -> dict:
    """variant: a name, optionally ``-dynamic`` (compile with a symbolic length) and ``@N`` (the batches' bucket)."""
    name = variant.partition("@")[0].removesuffix("-dynamic")
    dynamic = variant.partition("@")[0].endswith("-dynamic") or None
    from bert_core.dropout import mask_source
    from bert_core.training.inference import autocast
    from bert_core.training.optim import build_optimizer, clip_gradients, clipped_step

    # fit's choice of mask (the machine's rule), or torch's for the variant that asks for it
    os.environ.pop("BERTFLOW_DROPOUT_MASK", None)
    if name == "torch-dropout":
        os.environ["BERTFLOW_DROPOUT_MASK"] = "torch"
    mask_source.cache_clear()
    model = fresh_model()
    if name == "full-last-layer":
        model.cls_only = False
    if name in FIT_LIKE:  # fit's step keeps the word embedding's gradient in one buffer (word_gradient.py)
        from bert_core.training.word_gradient import KeptWordGradient

        KeptWordGradient(model.bert.embeddings.word_embeddings)
    if name == "frozen-words":
        model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    if name == "no-attention-dropout":  # SDPA may take a fused kernel instead of its math path
        for layer in model.bert.layers:
            layer.attention.attn_dropout = 0.0
    master = None
    if name == "bf16-weights":  # the optimizer updates an fp32 copy; the model runs in bf16
        master = copy.deepcopy(model)
        model.to(torch.bfloat16)
    opt = build_optimizer(master or model, 2e-5, 0.01, "sparse" if name == "sparse-words" else "dense")
    precision = args.precision
    dev = torch.device("cpu")

    def loss_of(m, batch):
        with autocast(precision if master is None else "fp32", dev):
            logits = m(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]).logits
        return F.cross_entropy(logits.float(), batch["labels"])

    forward = model
    if name == "compile-model":
        forward = torch.compile(model, dynamic=dynamic)

    def fwd_bwd(batch):
        loss = loss_of(forward, batch)
        loss.backward()
        return loss.detach()

    def opt_step():
        if name in ("separate-clip", "before"):  # clip_grad_norm_ rewrites every gradient, then AdamW reads them
            clip_gradients(model, 1.0)
            opt.step()
            return
        if master is None:
            clipped_step(opt, model, 1.0)
            return
        for p, m in zip(model.parameters(), master.parameters()):
            m.grad = p.grad.float()
        clip_gradients(master, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_copy_(list(model.parameters()), list(master.parameters()))

    if name == "compile-step":
        fwd_bwd = torch.compile(fwd_bwd, dynamic=dynamic)
        opt_step = torch.compile(opt_step)

    torch.manual_seed(42)
    times, losses = [], []
    for batch in data + data:  # the first pass compiles every shape, the second is timed
        start = time.perf_counter()
        loss = fwd_bwd(batch)
        opt_step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
        times.append(time.perf_counter() - start)
    profile = None
    if args.profile:  # a third pass over the first --profile batches, under torch.profiler
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as profiler

        with profiler(activities=[ProfilerActivity.CPU]) as prof:
            for batch in data[: args.profile]:
                fwd_bwd(batch)
                opt_step()
                opt.zero_grad(set_to_none=True)
        profile = prof.key_averages()
    return {"times": times, "losses": losses, "shapes": [tuple(b["input_ids"].shape) for b in data], "profile": profile}


def print_profile(name: str, events, steps: int, rows: int = 12) -> None:
    """The ops taking the most self CPU time over the profiled steps: share, ms per step, calls per step."""
    total = sum(e.self_cpu_time_total for e in events)
    print(f"profile of {name}: {total / 1000 / steps:.1f} ms of self CPU time per step ({steps} steps)")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:rows]:
        print(f"  {e.key:<34}{100 * e.self_cpu_time_total / total:>6.1f}%{e.self_cpu_time_total / 1000 / steps:>9.2f} ms"
              f"{e.count / steps:>8.1f} calls")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="before,eager,separate-clip,fresh-word-grad")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=1, help="interleaved runs of every variant; median reported")
    parser.add_argument("--bucket", type=int, default=1, help="pad batch lengths up to a multiple of this, for "
                        "variants without their own @N (default 1: each batch's longest row, as fit pads)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--interop-threads", type=int, help="torch.set_num_interop_threads (default: torch's)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also profile N steps of each variant (torch.profiler) and print its top ops")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.interop_threads:
        torch.set_num_interop_threads(args.interop_threads)
    if args.precision == "auto":
        from bert_core.training.config import TrainConfig

        args.precision = TrainConfig().resolved_precision(torch.device("cpu"))
    variants = args.variants.split(",")
    buckets = {v: int(v.partition("@")[2] or args.bucket) for v in variants}
    data = {b: batches(args.steps, b) for b in set(buckets.values())}
    lengths = ", ".join(f"{len({t['input_ids'].shape[1] for t in d})} at bucket {b}" for b, d in sorted(data.items()))
    from bert_core.dropout import mask_source

    print(f"torch {torch.__version__}, {args.threads} threads ({torch.get_num_interop_threads()} inter-op), "
          f"{args.precision}, dropout mask {mask_source()}, {args.steps} steps of SST-2; distinct batch lengths: "
          f"{lengths}; load avg {os.getloadavg()[0]:.1f}", flush=True)
    print(f"{'variant':<15}{'compile s':>10}{'ms/step med [best]':>20}{'ex/s':>8}{'loss first':>12}{'loss last':>11}")
    runs: dict[str, list[dict]] = {}
    for _ in range(args.repeats):  # interleaved, so a slow minute of the machine hits every variant
        for name in variants:
            started = time.perf_counter()
            res = run_variant(name, data[buckets[name]], args)
            res["wall"] = time.perf_counter() - started
            # Pass 2 runs every shape already seen: its mean step is the steady state; what pass 1 took beyond it
            # is the one-off cost (compilation; for eager, kernel set-up).
            n = args.steps
            res["ms"] = 1000 * sum(res["times"][n:]) / n
            res["compile_s"] = sum(res["times"][:n]) - sum(res["times"][n:])
            runs.setdefault(name, []).append(res)
    base = None
    for name, rs in runs.items():
        ms = statistics.median(r["ms"] for r in rs)
        base = base or ms
        cell = f"{ms:.1f} [{min(r['ms'] for r in rs):.1f}]"
        print(f"{name:<15}{statistics.median(r['compile_s'] for r in rs):>10.1f}{cell:>20}{32000 / ms:>8.1f}"
              f"{rs[0]['losses'][0]:>12.4f}{rs[0]['losses'][args.steps - 1]:>11.4f}   (wall {rs[0]['wall']:.0f} s, x{base / ms:.2f} "
              f"the first variant's speed)", flush=True)
    for name, rs in runs.items():
        if rs[0]["profile"] is not None:
            print_profile(name, rs[0]["profile"], args.profile)
    print(f"load avg at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
