"""Dropout with a cheaper mask on CPU: nn.Dropout's distribution to 1/65536, a quarter of the random draws.

Why: torch draws a CPU dropout mask with ``bernoulli_``. Unless it takes MKL's generator (Intel CPUs), that is one
Mersenne-Twister draw per element on one thread, while the other cores wait: on a 2-core AMD EPYC, 2.3 ms for a
(32, 24, 384) activation that one multiply covers in 0.05 ms, and 9% of a fine-tuning step (docs/benchmarks.md).
Here one 64-bit draw makes four 16-bit lanes, and an element is kept when its lane is at or above a threshold, so:

- an element is dropped with probability ``round(p * 65536) / 65536`` (0.1 -> 0.100006), independently;
- kept elements are scaled by ``1 / (1 - that)``, so the expected output is the input, as with ``F.dropout``;
- the mask comes from torch's default generator, so ``torch.manual_seed`` fixes it and activation checkpointing
  (which replays the generator's state) recomputes the same one in backward.

Which mask runs is a rule of the machine (``mask_source``): torch's own on Intel CPUs, whose ``bernoulli_`` may
take MKL's vectorised generator, the lanes on others. On other devices ``F.dropout`` runs (fused kernels).
"""

from __future__ import annotations

import functools
import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from bert_core.cpu import cpu_vendor

LANES = 1 << 16  # the values a 16-bit lane takes
SOURCES = ("lanes", "torch")


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)``, with the lane mask on a CPU whose rule picks it; any shape."""
    if not training or p == 0.0:
        return x
    # A p that rounds to all 65536 lanes dropped would divide by zero: F.dropout's there.
    if x.device.type != "cpu" or round(p * LANES) >= LANES or mask_source() != "lanes":
        return F.dropout(x, p, True)
    keep, scale = keep_mask(x.shape, p)
    # One new tensor, scaled in place; backward keeps the bool mask (1 byte an element), as F.dropout does.
    return torch.where(keep, x, 0.0).mul_(scale)


def keep_mask(shape: torch.Size | tuple[int, ...], p: float,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, float]:
    """(keep, scale): ``keep`` a bool tensor of ``shape``, True with probability 1 - round(p * 65536) / 65536
    independently per element; ``scale`` = 1 / that probability."""
    dropped = round(p * LANES)
    n = math.prod(shape)
    # from=-2**63, to=None: the full 64-bit range, so every 16-bit lane is uniform (random_() alone leaves the sign
    # bit 0).
    draws = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None, generator=generator)
    lanes = draws.view(torch.int16)[:n].view(shape)  # uniform on [-32768, 32767]
    return lanes >= dropped - LANES // 2, LANES / (LANES - dropped)


class Dropout(nn.Module):
    """``nn.Dropout`` through ``dropout``: no parameters, the same ``p`` and train/eval behaviour."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be between 0 and 1, got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


@functools.cache
def mask_source() -> str:
    """'lanes' or 'torch': the CPU dropout mask this process uses. ``$BERTFLOW_DROPOUT_MASK`` chooses; unset,
    torch's on Intel CPUs, where ``bernoulli_`` may take MKL's vectorised generator (not measured here), the lanes
    elsewhere. A rule of the machine, not a timing: a timing taken under load can come out otherwise in another
    process, and a run resumed there would draw other masks than the uninterrupted run."""
    chosen = os.environ.get("BERTFLOW_DROPOUT_MASK", "").strip()
    if chosen:
        if chosen not in SOURCES:
            raise ValueError(f"BERTFLOW_DROPOUT_MASK={chosen!r}: expected one of {', '.join(SOURCES)}")
        return chosen
    return "torch" if cpu_vendor() == "GenuineIntel" else "lanes"

