"""Dropout with a cheaper mask on CPU: nn.Dropout's distribution to 1/65536, a quarter of the random draws.

Why: torch draws a CPU dropout mask with ``bernoulli_``. Unless it takes MKL's generator (Intel CPUs), that is one
Mersenne-Twister draw per element on one thread, while the other cores wait: on a 2-core AMD EPYC, 2.3 ms for a
(32, 24, 384) activation that one multiply covers in 0.05 ms, and 9% of a fine-tuning step (docs/benchmarks.md).
Here one 64-bit draw makes four 16-bit lanes, and an element is kept when its lane is at or above a threshold, so:

- an element is dropped with probability ``round(p * 65536) / 65536`` (0.1 -> 0.100006), independently;
- kept elements are scaled by ``1 / (1 - that)``, so the expected output is the input, as with ``F.dropout``;
- the mask comes from torch's default generator, so ``torch.manual_seed`` fixes it and activation checkpointing
  (which replays the generator's state) recomputes the same one in backward.

Which mask a process uses is measured once, at its first dropout (``mask_source``): where ``bernoulli_`` is as
fast (MKL's vectorised generator), torch's own dropout stays. On other devices ``F.dropout`` runs (fused kernels).
"""

from __future__ import annotations

import functools
import math
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

LANES = 1 << 16  # the values a 16-bit lane takes
# The lane mask is used only when it beats bernoulli_ by this much: a close call could come out either way on the
# next run, and with it the masks a seed draws.
MARGIN = 1.3
SOURCES = ("lanes", "torch")


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)`` with the lane mask on CPU when that is this machine's faster one; any shape."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0 or mask_source() != "lanes":
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
    both are timed once on a (1024, 384) activation with a generator of their own (training's random stream is
    left as it was), and the lanes are used when ``MARGIN`` times faster."""
    chosen = os.environ.get("BERTFLOW_DROPOUT_MASK", "").strip()
    if chosen:
        if chosen not in SOURCES:
            raise ValueError(f"BERTFLOW_DROPOUT_MASK={chosen!r}: expected one of {', '.join(SOURCES)}")
        return chosen
    x, generator = torch.ones(1024, 384), torch.Generator().manual_seed(0)

    def best_ms(step) -> float:
        times = []
        for _ in range(7):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        return 1000 * min(times[2:])  # the first two warm the allocator up

    def torch_way():  # what F.dropout does on CPU: bernoulli_, scale, multiply
        return x * torch.empty_like(x).bernoulli_(0.9, generator=generator).div_(0.9)

    def lanes_way():
        keep, scale = keep_mask(x.shape, 0.1, generator)
        return torch.where(keep, x, 0.0).mul_(scale)

    return "lanes" if best_ms(torch_way) > MARGIN * best_ms(lanes_way) else "torch"
