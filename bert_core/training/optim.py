"""AdamW with weight decay on matrices only, and the warmup-then-linear-decay schedule."""

from __future__ import annotations

import torch
from torch import nn


class AdamW(torch.optim.AdamW):
    """torch's fused AdamW (one kernel for the whole update), except for param groups marked ``sparse_rows``.

    A sparse-rows group holds the word-embedding matrix when it gets a sparse gradient (``nn.Embedding(sparse=True)``):
    only the rows of the batch's tokens, so no dense (V, H) gradient is zero-filled, accumulated, clipped and read
    by the update each step. Those rows get AdamW's update (moments, bias correction with the group's step count,
    decoupled weight decay); the other rows keep their values and moments, as in TensorFlow Addons' LazyAdam and
    torch's SparseAdam. Dense AdamW would still move them by their decaying momentum and by weight decay, so this
    is not the same math (``TrainConfig.embedding_update``). The state has AdamW's keys: checkpoints hold it as usual.
    """

    @torch.no_grad()
    def step(self, closure=None):
        held = []
        for group in self.param_groups:
            if group.get("sparse_rows"):
                for p in group["params"]:
                    if p.grad is not None:
                        self._sparse_rows_step(p, group)
                        held.append((p, p.grad))
                        p.grad = None  # the fused step below skips parameters without a gradient
        try:
            return super().step(closure)
        finally:
            for p, grad in held:
                p.grad = grad

    def _sparse_rows_step(self, p: torch.Tensor, group: dict) -> None:
        """p: (V, H); p.grad: sparse, its rows those of the batch's tokens. One AdamW step on those rows."""
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        step = float(state["step"])
        (beta1, beta2), lr, eps = group["betas"], group["lr"], group["eps"]
        grad = p.grad.coalesce()  # repeated tokens and accumulation micro-batches summed per row
        rows, grad = grad.indices()[0], grad.values()  # (R,), (R, H)
        exp_avg = state["exp_avg"].index_select(0, rows).lerp_(grad, 1 - beta1)
        exp_avg_sq = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        state["exp_avg"].index_copy_(0, rows, exp_avg)
        state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
        weights = p.index_select(0, rows).mul_(1 - lr * group["weight_decay"])
        denom = (exp_avg_sq / (1 - beta2**step)).sqrt_().add_(eps)
        p.index_copy_(0, rows, weights.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1**step)))


def build_optimizer(model: nn.Module, learning_rate: float, weight_decay: float,
                    embedding_update: str = "dense") -> AdamW:
    """Decay 2-D weights (linear and embedding matrices); biases and LayerNorm weights are 1-D and exempt.

    ``embedding_update="sparse"`` switches the word embedding to sparse gradients and gives it the sparse-rows
    update (see ``AdamW``); the gradient layout and the update go together, so both are set here."""
    sparse = []
    if embedding_update == "sparse":
        for name, module in model.named_modules():
            if name.endswith("word_embeddings") and isinstance(module, nn.Embedding):
                module.sparse = True
                sparse.append(module.weight)
    trainable = [p for p in model.parameters() if p.requires_grad and not any(p is q for q in sparse)]
    decay = [p for p in trainable if p.dim() >= 2]
    no_decay = [p for p in trainable if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if sparse:
        groups.append({"params": sparse, "weight_decay": weight_decay, "sparse_rows": True})
    return AdamW(groups, lr=learning_rate, betas=(0.9, 0.999), eps=1e-8, fused=True)


def clip_gradients(model: nn.Module, max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` over all gradients, sparse ones included (which torch's does not take); the norm."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not any(p.grad.is_sparse for p in params):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    for p in params:
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()  # each row once, so the norm below is the gradient's
    grads = [p.grad for p in params]
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g._values() if g.is_sparse else g)
                                                  for g in grads]))
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        (g._values() if g.is_sparse else g).mul_(scale)
    return total


def clipped_step(optimizer: AdamW, model: nn.Module, max_norm: float | None) -> None:
    """Clip the gradients to total norm ``max_norm`` (None or 0: no clipping) and take the optimizer step.

    With dense gradients the clip's factor is not applied in a pass of its own: fused AdamW reads every gradient
    anyway and takes a ``grad_scale`` it divides them by as it reads them (the hook ``GradScaler`` uses), so the
    factor goes there and one read-and-write pass over all gradients is saved. The update is ``clip_grad_norm_``'s
    then AdamW's up to rounding (g / (1 / c) instead of g * c). Sparse gradients take ``clip_gradients``."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not max_norm or any(p.grad.is_sparse for p in params):
        if max_norm:
            clip_gradients(model, max_norm)
        optimizer.step()
        return
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad for p in params])))
    optimizer.grad_scale = ((total + 1e-6) / max_norm).clamp(min=1.0)  # 1 / clip_grad_norm_'s clamped factor
    try:
        optimizer.step()
    finally:
        optimizer.grad_scale = None


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear 0 -> peak over warmup, then -> 0 at total."""
    if warmup_steps and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    remaining = max(1, total_steps - warmup_steps)
    return peak * max(0.0, (total_steps - step) / remaining)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
