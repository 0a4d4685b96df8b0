"""The torch.distributed pieces ``fit`` needs under ``torchrun``: gloo on CPU, nccl on GPUs."""

from __future__ import annotations

import dataclasses
import os

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


def leave() -> None:
    """Destroy the process group before the process exits. Without it a rank that finishes first (rank 0 alone
    evaluates and saves at the end) can abort at exit in gloo's threads ("terminate called without an active
    exception"), and torchrun then fails the whole run."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
