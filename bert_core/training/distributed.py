"""The torch.distributed pieces ``fit`` needs under ``torchrun``: gloo on CPU, nccl on GPUs."""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import sys
from typing import NoReturn

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup() -> Dist:
    """Join the process group torchrun describes in the environment; a single process otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Dist(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    rank = int(os.environ["RANK"])
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=rank, world_size=world_size, device=device)


def broadcast_object(value, d: Dist):
    """Rank 0's value on every rank (decisions such as early stopping must agree everywhere)."""
    if d.world_size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(d: Dist) -> None:
    if d.world_size > 1:
        dist.barrier()


def leave() -> bool:
    """Destroy the process group, if this process joined one; whether it had. DDP's reducer holds the group and
    its gradient buckets, so it is freed first."""
    if not (dist.is_available() and dist.is_initialized()):
        return False
    gc.collect()
    dist.destroy_process_group()
    return True


def exit_now(code: int = 0) -> NoReturn:
    """End a torchrun worker whose work is done, skipping the interpreter's teardown. There torch's gloo objects
    can still be destroyed in an order that aborts the process ("terminate called without an active exception",
    SIGABRT after the run's last line: 6 of 38 two-process runs here, some after ``leave``), and torchrun then
    reports a finished run as failed. Everything the run wrote is closed by then; the streams are flushed here."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
