"""AdamW with the usual BERT parameter groups, learning-rate schedules, and layer-wise
learning-rate decay (LLRD)."""

from __future__ import annotations

import math
import re

import torch

SCHEDULES = ("linear", "cosine", "constant")

_LAYER = re.compile(r"(?:^|\.)layer\.(\d+)\.")


def _no_decay(name: str, param: torch.nn.Parameter) -> bool:
    # Biases and LayerNorm gains are not weights to shrink (BERT's recipe): 1-d tensors.
    return param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name


def layer_depth(name: str, num_layers: int) -> int:
    """0 for embeddings, i + 1 for encoder layer i, num_layers + 1 for everything above."""
    if "embeddings" in name:
        return 0
    m = _LAYER.search(name)
    if m:
        return int(m.group(1)) + 1
    return num_layers + 1


def param_groups(
    model: torch.nn.Module,
    *,
    lr: float,
    weight_decay: float,
    layer_decay: float | None = None,
    num_layers: int | None = None,
) -> list[dict]:
    """Trainable parameters in groups: decay / no decay, and with ``layer_decay`` (LLRD) one
    learning rate per depth, ``lr * layer_decay ** (num_layers + 1 - depth)`` (the head gets
    ``lr``, the embeddings the smallest)."""
    if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    if layer_decay is not None and num_layers is None:
        num_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
        if num_layers is None:
            raise ValueError("layer_decay needs num_layers (the model has no config)")
    groups: dict[tuple[bool, int], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        nd = _no_decay(name, param)
        depth = layer_depth(name, num_layers) if layer_decay is not None else 0
        scale = layer_decay ** (num_layers + 1 - depth) if layer_decay is not None else 1.0
        g = groups.setdefault(
            (nd, depth),
            {"params": [], "weight_decay": 0.0 if nd else weight_decay, "lr": lr * scale},
        )
        g["params"].append(param)
    if not groups:
        raise ValueError("no trainable parameters (everything is frozen)")
    return [groups[k] for k in sorted(groups)]


def make_optimizer(
    groups: list[dict], *, lr: float, betas=(0.9, 0.999), eps: float = 1e-8
) -> torch.optim.AdamW:
    """AdamW, fused on CUDA (one kernel for all parameters), foreach on the CPU."""
    on_cuda = all(p.is_cuda for g in groups for p in g["params"])
    kind = {"fused": True} if on_cuda else {"foreach": True}
    for g in groups:
        g.setdefault("lr", lr)
        g["initial_lr"] = g["lr"]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **kind)


def make_scheduler(
    optimizer: torch.optim.Optimizer, *, kind: str, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup_steps``, then ``linear`` decay to 0, ``cosine`` decay to 0 or
    ``constant`` at the end of ``total_steps``."""
    if kind not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}")
    if warmup_steps < 0 or total_steps < 1:
        raise ValueError(
            f"warmup_steps must be >= 0 and total_steps >= 1, got {warmup_steps} and {total_steps}"
        )

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if kind == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
