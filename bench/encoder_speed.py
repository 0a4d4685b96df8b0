"""Forward+backward speed of our encoder vs transformers.BertModel, same weights, batch and threads.

    python bench/encoder_speed.py [--threads N] [--steps 5] [--pretrained FOLDER]

Prints best-of-3 examples/s (the two models timed in alternation) for batch 32 x 64 and 32 x 128 tokens, fp32 and bf16 autocast, side by side.
Both models run in train mode (dropout on) with SDPA attention, on random token ids.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from bert_core import load_pretrained
from bert_core.checkpoint import resolve_source


def interleaved_rates(step_a, step_b, batch_size: int, steps: int, rounds: int = 3) -> tuple[float, float]:
    """Best-of-``rounds`` examples/s for two step functions timed in alternation, so background load
    on a shared machine hits both alike."""
    for step in (step_a, step_b):  # warm-up: allocator, kernels, autocast caches
        step()
        step()
    best = [0.0, 0.0]
    for _ in range(rounds):
        for i, step in enumerate((step_a, step_b)):
            start = time.perf_counter()
            for _ in range(steps):
                step()
            best[i] = max(best[i], batch_size * steps / (time.perf_counter() - start))
    return best[0], best[1]


def make_step(model, ids, types, mask, precision: str, ours: bool):
    def step():
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        with ctx:
            if ours:
                seq, pooled = model(ids, types, mask)
            else:
                out = model(input_ids=ids, token_type_ids=types, attention_mask=mask)
                seq, pooled = out.last_hidden_state, out.pooler_output
            loss = seq.float().pow(2).mean() + pooled.float().pow(2).mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--pretrained", default=None, help="checkpoint folder or hub id (default: packaged MiniLM)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    ours, _ = load_pretrained(args.pretrained)
    theirs = transformers.BertModel.from_pretrained(str(resolve_source(args.pretrained)), attn_implementation="sdpa")
    ours.train()
    theirs.train()
    vocab = ours.config.vocab_size
    print(f"threads={args.threads} steps={args.steps} torch={torch.__version__} transformers={transformers.__version__}")
    print(f"{'batch':>10} {'precision':>9} {'ours ex/s':>10} {'hf ex/s':>10} {'ours/hf':>8}")
    for T in (64, 128):
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(1000, vocab, (32, T), generator=g)
        types = torch.zeros_like(ids)
        mask = torch.ones_like(ids)
        mask[::2, T // 2:] = 0  # half the rows padded to half length, as real batches are
        for precision in ("fp32", "bf16"):
            ours_rate, hf_rate = interleaved_rates(make_step(ours, ids, types, mask, precision, True),
                                                   make_step(theirs, ids, types, mask, precision, False), 32, args.steps)
            print(f"{f'32x{T}':>10} {precision:>9} {ours_rate:>10.1f} {hf_rate:>10.1f} {ours_rate / hf_rate:>8.2f}")


if __name__ == "__main__":
    main()
