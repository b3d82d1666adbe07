"""Scoring a model over a dataset: the data loaders (one process and DDP-sharded), predictions in
dataset order, and the validation metrics :func:`memeops.training.trainer.fit` selects on.

:func:`predict` is how callers score test once, after selection; it never draws from the global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from memeops.evaluation.metrics import Predictions, all_metrics
from memeops.models.base import ModelOutput, TaskSpec, probabilities
from memeops.training import distributed as ddp
from memeops.training.distributed import SINGLE, DistContext
from memeops.training.fit_types import AmpMode
from memeops.training.optim import autocast, compute_loss, resolve_amp, resolve_device, to_device
from memeops.training.seeding import make_generator


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator,
    collate_fn: Callable | None,
    num_workers: int,
    device: torch.device,
    dist_ctx: DistContext = SINGLE,
) -> DataLoader:
    """The loader :func:`memeops.training.trainer.fit` and :func:`predict` iterate: shuffled by
    ``generator`` for training, in dataset order otherwise; this rank's share under DDP."""
    if dist_ctx.enabled:
        return sharded_loader(dataset, batch_size, shuffle=shuffle, generator=generator, collate_fn=collate_fn,
                              num_workers=num_workers, device=device, dist_ctx=dist_ctx)  # fmt: skip
    if getattr(dataset, "batched", False) and collate_fn is None:
        # The dataset builds whole batches by tensor indexing (``dataset[list_of_indices]``): the
        # sampler yields index lists and auto-collation is off. Same order as shuffle=True would give.
        order = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
        return DataLoader(dataset, sampler=BatchSampler(order, batch_size, drop_last=False), batch_size=None,
                          collate_fn=whole_batch, num_workers=num_workers, pin_memory=device.type == "cuda",
                          persistent_workers=False)  # fmt: skip
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,  # also for eval: iterating never draws from the global RNG
        collate_fn=collate_fn,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )


def sharded_loader(
    dataset: Dataset, batch_size: int, *, shuffle: bool, generator: torch.Generator, collate_fn: Callable | None,
    num_workers: int, device: torch.device, dist_ctx: DistContext,
) -> DataLoader:  # fmt: skip
    """This rank's loader under DDP: the one-process loader's batches (same sampler, drawing from
    ``generator`` exactly as :func:`make_loader` does), of which training (``shuffle``) gets each
    global batch's piece (:class:`~memeops.training.distributed.ShardedBatchSampler`) and
    evaluation a contiguous block of whole batches (:class:`~memeops.training.distributed.BlockBatchSampler`)."""
    order = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    wrapper = ddp.ShardedBatchSampler if shuffle else ddp.BlockBatchSampler
    batches = wrapper(BatchSampler(order, batch_size, drop_last=False), dist_ctx.rank, dist_ctx.world_size)
    pin = device.type == "cuda"
    if getattr(dataset, "batched", False) and collate_fn is None:
        return DataLoader(dataset, sampler=batches, batch_size=None, num_workers=num_workers, pin_memory=pin,
                          persistent_workers=False)  # fmt: skip
    return DataLoader(dataset, batch_sampler=batches, generator=generator, collate_fn=collate_fn,
                      num_workers=num_workers, pin_memory=pin, persistent_workers=False)  # fmt: skip


def whole_batch(batch: dict) -> dict:
    """The collate of a batched dataset: its ``dataset[indices]`` already is the batch. (The loader's
    default, ``default_convert``, walks every meme id of it each step for nothing: bilinear_hateful's
    300-epoch fit took 13.7 instead of 14.1 s on 2 CPU cores.)"""
    return batch


def _rows(value: Tensor) -> np.ndarray:
    """An extras tensor as float numpy with the batch on axis 0 (a 0-d value becomes one row)."""
    value = value.detach().float().cpu()
    return (value.reshape(1) if value.ndim == 0 else value).numpy()


def infer(
    model: nn.Module,
    loader: DataLoader,
    specs: Sequence[TaskSpec],
    device: torch.device,
    amp: AmpMode,
) -> tuple[Predictions, float]:
    """Predictions over ``loader`` and the sample-weighted mean loss (NaN when nothing is labelled)."""
    predictions, loss_sum, loss_n = infer_sums(model, loader, specs, device, amp)
    return predictions, (loss_sum / loss_n if loss_n else math.nan)


@torch.no_grad()
def infer_sums(
    model: nn.Module,
    loader: DataLoader,
    specs: Sequence[TaskSpec],
    device: torch.device,
    amp: AmpMode,
) -> tuple[Predictions, float, int]:
    """Predictions over ``loader``, the sample-weighted loss sum and the number of samples in it."""
    model.eval()
    probs: dict[str, list[np.ndarray]] = {s.name: [] for s in specs}
    targets: dict[str, list[np.ndarray]] = {}
    extras: dict[str, list[np.ndarray]] = {}
    meme_ids: list[str] = []
    has_ids = True
    loss_sum, loss_n = 0.0, 0
    for batch in loader:
        batch = to_device(batch, device)
        with autocast(device, amp):
            output: ModelOutput = model(batch)
        batch_targets = batch.get("targets") or {}
        for spec in specs:
            probs[spec.name].append(probabilities(output.logits[spec.name], spec).cpu().numpy())
            if spec.name in batch_targets:
                targets.setdefault(spec.name, []).append(batch_targets[spec.name].cpu().numpy())
        for name, value in output.extras.items():
            extras.setdefault(name, []).append(_rows(value))
        ids = batch.get("meme_id")
        if ids is None:
            has_ids = False
        else:
            meme_ids.extend(str(i) for i in ids)
        if batch_targets:
            n = len(next(iter(output.logits.values())))
            loss_sum += float(compute_loss(output, batch_targets, specs)) * n
            loss_n += n
    predictions = Predictions(
        probs={k: np.concatenate(v) if v else np.zeros((0, 0)) for k, v in probs.items()},
        targets={k: np.concatenate(v) for k, v in targets.items()},
        meme_ids=meme_ids if has_ids and meme_ids else None,
        extras={k: np.concatenate(v) for k, v in extras.items()},
    )
    return predictions, loss_sum, loss_n


def predict(
    model: nn.Module,
    dataset: Dataset,
    specs: Sequence[TaskSpec],
    batch_size: int = 64,
    device: str | torch.device = "auto",
    *,
    collate_fn: Callable | None = None,
    amp: Literal["auto", "off", "bf16", "fp16"] = "off",
    num_workers: int = 0,
) -> Predictions:
    """Probabilities per task (numpy ``[N, L]``), targets, meme ids and extras, in dataset order.

    Leaves the model in eval mode on ``device``. Does not touch the global RNG. ``amp`` defaults
    to off: final scoring in full precision.
    """
    dev = resolve_device(device) if isinstance(device, str) else device
    mode = resolve_amp(amp, dev)
    model.to(dev)
    loader = make_loader(
        dataset, batch_size, shuffle=False, generator=make_generator(0), collate_fn=collate_fn,
        num_workers=num_workers, device=dev,
    )  # fmt: skip
    predictions, _ = infer(model, loader, specs, dev, mode)
    return predictions


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    specs: Sequence[TaskSpec],
    device: torch.device,
    amp: AmpMode,
) -> dict[str, float]:
    """Validation metrics: :func:`all_metrics` keys plus ``"loss"``."""
    predictions, loss = infer(model, loader, specs, device, amp)
    return {"loss": loss, **all_metrics(predictions, list(specs))}


def _n_rows(predictions: Predictions) -> int:
    """How many dataset rows ``predictions`` covers."""
    return max((len(v) for v in predictions.probs.values()), default=0)


def concat_predictions(parts: Sequence[Predictions]) -> Predictions:
    """Predictions of consecutive slices of a dataset, joined in order (empty parts skipped)."""
    parts = [p for p in parts if _n_rows(p) > 0]
    if not parts:
        raise ValueError("no predictions to join")
    ids = [p.meme_ids for p in parts]
    return Predictions(
        probs={k: np.concatenate([p.probs[k] for p in parts]) for k in parts[0].probs},
        targets={k: np.concatenate([p.targets[k] for p in parts]) for k in parts[0].targets},
        meme_ids=[i for part in ids for i in part] if all(i is not None for i in ids) else None,  # type: ignore[union-attr]
        extras={k: np.concatenate([p.extras[k] for p in parts]) for k in parts[0].extras},
    )


def evaluate_sharded(
    model: nn.Module, loader: DataLoader, specs: Sequence[TaskSpec], device: torch.device, amp: AmpMode,
    dist_ctx: DistContext,
) -> dict[str, float]:  # fmt: skip
    """:func:`evaluate` under DDP: each rank scores its block of whole validation batches (the
    one-process batches), rank 0 joins them in dataset order, computes the metrics and broadcasts
    them, so every rank takes the same early-stopping and best-epoch decisions."""
    predictions, loss_sum, loss_n = infer_sums(model, loader, specs, device, amp)
    parts = ddp.all_gather_object((predictions, loss_sum, loss_n), dist_ctx)
    val = None
    if dist_ctx.is_main:
        total_n = sum(n for _, _, n in parts)
        loss = sum(s for _, s, _ in parts) / total_n if total_n else math.nan
        val = {"loss": loss, **all_metrics(concat_predictions([p for p, _, _ in parts]), list(specs))}
    return ddp.broadcast_object(val, dist_ctx)
