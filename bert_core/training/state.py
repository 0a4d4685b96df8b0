"""Resumable training checkpoints, written atomically.

A checkpoint is a folder ``step-000120/`` holding the model and optimizer state, the RNG state and
``state.json`` (step, best metric, history). It is written as ``step-000120.tmp/`` and renamed when
complete, so a process killed mid-write leaves only a ``.tmp`` folder, which is never loaded.
They are written on the training thread from the live tensors (``save_checkpoint`` says why).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

PREFIX = "step-"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(folder: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict, keep: int) -> Path:
    """Write ``folder/step-XXXXXX`` atomically, now, from the live tensors, and prune all but the newest ``keep``.

    On the training thread and without a copy: for MiniLM + AdamW (270 MB) 0.25 s here, every 10 minutes by
    default. A copy written by a background thread (as before) saved ~0.15 s per checkpoint but held a second
    model and AdamW moments in memory while it was written: 270 MB for MiniLM, 4 GB for BERT-large.
    """
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{PREFIX}{step:06d}"
    tmp = folder / f"{PREFIX}{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()}, tmp / "trainer.pt")
    (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=1), encoding="utf-8")
    for f in tmp.iterdir():  # data on disk before the rename makes the checkpoint visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(folder)
    for old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first (``.tmp`` folders are torn writes and ignored)."""
    if not folder.is_dir():
        return []
    done = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and not p.name.endswith(".tmp")
            and (p / "state.json").is_file()]
    return sorted(done, key=lambda p: p.name)


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore model, optimizer and RNG in place; return the saved state dict (step, best, history...)."""
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    trainer = torch.load(path / "trainer.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(trainer["optimizer"])
    torch.set_rng_state(trainer["torch_rng"])
    return json.loads((path / "state.json").read_text(encoding="utf-8"))
