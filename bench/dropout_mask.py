"""The CPU dropout mask: ``bert_core/dropout.py``'s lanes against torch's ``bernoulli_``, on the shapes a fine-tune
runs, in one process, interleaved.

    python bench/dropout_mask.py [--threads 2] [--repeats 3]

Printed, median [best] per mask:

- one dropout of a (32, 30, 384) activation and of (32, 12, 30, 30) attention probabilities (forward only);
- forward + backward of the packaged all-MiniLM-L6-v2 in train mode: a sentence classifier at B=32, T=30 (SST-2's
  shape) and a span QA model at B=8, T=384 (SQuAD's window, where the attention maps are recomputed in backward).

The machine's own choice (``mask_source()``, a rule of the CPU vendor) is printed first. Random token ids: the
time depends on the shapes, not the words.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MASKS = ("lanes", "torch")


def use(mask: str) -> None:
    from bert_core.dropout import mask_source

    os.environ["BERTFLOW_DROPOUT_MASK"] = mask
    mask_source.cache_clear()


def timed(step, repeats: int, calls: int) -> dict[str, list[float]]:
    """Seconds of `step()` per mask: `repeats` rounds, masks interleaved, the first call of each round untimed."""
    times: dict[str, list[float]] = {m: [] for m in MASKS}
    for _ in range(repeats):
        for mask in MASKS:
            use(mask)
            for i in range(calls + 1):
                start = time.perf_counter()
                step()
                if i:
                    times[mask].append(time.perf_counter() - start)
    return times


def show(what: str, times: dict[str, list[float]], unit: float, unit_name: str) -> None:
    cells = {m: (statistics.median(t) * unit, min(t) * unit) for m, t in times.items()}
    print(f"{what:<44}" + "".join(f"{m} {med:8.2f} [{best:7.2f}] {unit_name}   " for m, (med, best) in cells.items())
          + f"torch / lanes {cells['torch'][0] / cells['lanes'][0]:.2f}x")


def model_step(family: str, batch: int, length: int):
    from bert_core import get_family, load_pretrained

    torch.manual_seed(0)
    encoder, _ = load_pretrained(None)
    model = get_family(family).build_model(encoder, ["0", "1"] if family != "extractive_qa" else None).train()
    ids = torch.randint(1000, 20000, (batch, length))
    types, mask = torch.zeros_like(ids), torch.ones_like(ids)

    def step():
        logits = model(ids, types, mask).logits
        F.mse_loss(logits.float(), torch.zeros_like(logits, dtype=torch.float)).backward()
        model.zero_grad(set_to_none=True)
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from bert_core.dropout import dropout, mask_source

    os.environ.pop("BERTFLOW_DROPOUT_MASK", None)
    print(f"torch {torch.__version__}, {args.threads} threads; this machine's choice: {mask_source()}; load avg "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    hidden, probs = torch.randn(32, 30, 384), torch.rand(32, 12, 30, 30)
    show("dropout of (32, 30, 384)", timed(lambda: dropout(hidden, 0.1), args.repeats, 50), 1e3, "ms")
    show("dropout of (32, 12, 30, 30)", timed(lambda: dropout(probs, 0.1), args.repeats, 50), 1e3, "ms")
    show("fwd+bwd classifier B=32 T=30", timed(model_step("single_classification", 32, 30), args.repeats, 6),
         1e3, "ms")
    show("fwd+bwd span QA B=8 T=384", timed(model_step("extractive_qa", 8, 384), args.repeats, 2), 1, "s")
    print(f"load avg at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
