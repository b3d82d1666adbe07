"""The pieces of one optimisation step: device and mixed precision, AdamW with its warm-up + cosine
schedule, and the training loss (one process, and one rank's share under DDP).

Used by :mod:`memeops.training.trainer` (the epoch loop) and :mod:`memeops.training.inference`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from memeops.config.train import TrainConfig
from memeops.models.base import ModelOutput, TaskSpec, masked_task_loss, target_mask
from memeops.training.fit_types import AmpMode


def resolve_device(spec: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else is passed to :class:`torch.device`."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def resolve_amp(amp: str, device: torch.device) -> AmpMode:
    """The mixed-precision mode actually used.

    ``auto``: bf16 on CUDA devices that support it, else fp16 (with a GradScaler); off on CPU,
    where autocast rarely pays off for these small models. fp16 on CPU is refused (no scaler).
    """
    if amp == "off":
        return "off"
    if device.type == "cuda":
        if amp == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return amp  # type: ignore[return-value]
    if amp == "auto":
        return "off"
    if amp == "fp16":
        raise ValueError("amp='fp16' needs CUDA (GradScaler); use 'bf16' or 'off' on CPU")
    return "bf16"


def autocast(device: torch.device, amp: AmpMode) -> AbstractContextManager:
    """The autocast context for ``amp`` (a no-op when off)."""
    if amp == "off":
        return nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(obj: Any, device: torch.device) -> Any:
    """Move tensors (recursively through dicts/lists/tuples) to ``device``; leave the rest."""
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and any(isinstance(v, Tensor) for v in obj):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier for optimizer step ``step`` (0-based).

    Linear warm-up ``(step + 1) / warmup_steps`` (the first step is not wasted at lr 0), then
    cosine decay from 1 at ``warmup_steps`` to 0 at ``total_steps``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class WarmupCosine:
    """Picklable-by-``__dict__`` LR lambda, so the scheduler state round-trips in checkpoints."""

    warmup_steps: int
    total_steps: int

    def __call__(self, step: int) -> float:
        """The LR multiplier of optimizer step ``step``."""
        return lr_factor(step, self.warmup_steps, self.total_steps)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over trainable parameters; weight decay on matrices only (decaying biases and norm
    scales only hurts), which frozen backbones (requires_grad=False) never enter."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, fused=True)


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step warm-up + cosine (:func:`lr_factor`) over ``cfg.epochs * steps_per_epoch`` steps."""
    total = cfg.epochs * steps_per_epoch
    warmup = min(total, round(cfg.warmup_epochs * steps_per_epoch))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total))


def compute_loss(output: ModelOutput, targets: Mapping[str, Tensor], specs: Sequence[TaskSpec]) -> Tensor:
    """Sum of masked per-task losses (tasks absent from ``targets`` skipped) plus ``aux_loss``."""
    total: Tensor | None = None
    for spec in specs:
        if spec.name not in targets:
            continue
        loss, _ = masked_task_loss(output.logits[spec.name], targets[spec.name], spec)
        total = loss if total is None else total + loss
    if output.aux_loss is not None:
        total = output.aux_loss.float() if total is None else total + output.aux_loss.float()
    if total is None:
        raise ValueError("batch has no targets for any task and the model returned no aux_loss")
    return total


def sharded_loss(
    output: ModelOutput, targets: Mapping[str, Tensor], specs: Sequence[TaskSpec], global_counts: Sequence[float],
    piece: int, global_size: int, world_size: int,
) -> Tensor:  # fmt: skip
    """One rank's loss whose DDP-averaged gradient is :func:`compute_loss`'s on the whole global batch.

    :func:`compute_loss` takes each task's mean over *labelled* rows, and how many of those fall
    on each rank varies. So rank ``r`` weighs its task mean by ``world_size * n_r / n`` (``n_r``
    its labelled rows, ``n`` the global batch's, from ``global_counts`` in ``specs`` order) and
    ``aux_loss`` (a per-batch mean) by ``world_size * piece / global_size``; DDP's gradient
    average (sum / world_size) then gives exactly the one-process gradient, and the mean over
    ranks of this loss is the one-process loss. A rank holding a stand-in piece (``piece == 0``)
    contributes 0.
    """
    total: Tensor | None = None
    for spec, n_global in zip(specs, global_counts):
        if spec.name not in targets:
            continue
        loss, n = masked_task_loss(output.logits[spec.name], targets[spec.name], spec)
        weight = world_size * n / n_global if piece and n_global > 0 else 0.0
        total = loss * weight if total is None else total + loss * weight
    if output.aux_loss is not None:
        aux = output.aux_loss.float() * (world_size * piece / global_size)
        total = aux if total is None else total + aux
    if total is None:
        raise ValueError("batch has no targets for any task and the model returned no aux_loss")
    return total


def label_counts(
    targets: Mapping[str, Tensor], specs: Sequence[TaskSpec], piece: int, device: torch.device
) -> Tensor:
    """Labelled rows per task (``specs`` order) in this rank's piece, float64 on ``device``."""
    counts = [
        target_mask(targets[s.name], s).sum().double() if s.name in targets and piece else None for s in specs
    ]
    return torch.stack([c.to(device) if c is not None else torch.zeros((), dtype=torch.float64, device=device)
                        for c in counts])  # fmt: skip
