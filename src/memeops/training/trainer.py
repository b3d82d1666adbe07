"""The one trainer for every memeops model (GatedCLIP, baselines, later MGMCF and the VLM).

Contract with models: ``model(batch) -> ModelOutput`` where ``batch`` is a default-collated dict
of feature tensors plus ``batch["targets"] = {task: tensor}`` (see :mod:`memeops.models.base`) and
optionally ``batch["meme_id"]``. The loss is the sum over tasks of
:func:`~memeops.models.base.masked_task_loss` (tasks without targets in the batch are skipped)
plus ``output.aux_loss`` when set.

Data discipline: :func:`fit` receives only the train and validation sets; model selection (early
stopping and the best-epoch weights) uses validation metrics only. The test split is scored
**once, by the caller, after selection**: ``predict(model, test_set, ...)`` then
:func:`memeops.evaluation.all_metrics`.

Reproducibility: call :func:`memeops.training.seed_everything` with ``cfg.seed`` *before*
building the model (its initial weights come from the global RNG); :func:`fit` reseeds at the
start. On CPU, a run killed at any point and restarted with ``resume=True`` ends bit-identical to
an uninterrupted one (same history apart from wall-clock fields, same best value, same weights).

Data parallelism: launched under ``torchrun`` / ``accelerate launch`` (``WORLD_SIZE > 1``), or
given a :class:`~memeops.training.distributed.DistContext`, :func:`fit` trains a
``DistributedDataParallel`` copy of the model. ``cfg.batch_size`` stays the *global* batch (split
across ranks), the loss is weighted so the averaged gradient is the one-process gradient of that
batch, validation is sharded by whole batches and gathered, and every rank takes the same
early-stopping decisions. Only rank 0 reads/writes checkpoints and calls callbacks. See
:mod:`memeops.training.distributed` and ``docs/ddp.md``.

Only torch / numpy / sklearn / safetensors / tqdm are imported: this runs on a bare GPU box.
Experiment tracking (MLflow) is attached by the caller through callbacks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler
from tqdm import tqdm

from memeops.evaluation.metrics import Predictions, all_metrics
from memeops.models.base import ModelOutput, TaskSpec, masked_task_loss, probabilities, target_mask
from memeops.threads import torch_threads
from memeops.training import checkpoint as ckpt
from memeops.training import distributed as ddp
from memeops.training.distributed import SINGLE, DistContext
from memeops.training.seeding import make_generator, seed_everything

logger = logging.getLogger(__name__)

AmpMode = Literal["off", "bf16", "fp16"]
TIMING_KEYS = ("epoch_seconds", "samples_per_s")
"""History fields measured on the wall clock: the only ones that differ between identical runs."""


class TrainConfig(BaseModel):
    """Optimisation, schedule, early stopping and runtime settings for :func:`fit`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-4, ge=0)
    weight_decay: float = Field(0.01, ge=0, description="AdamW decay; matrices only, not biases/norms")
    warmup_epochs: float = Field(2, ge=0, description="linear warm-up length; then cosine decay to 0")
    grad_clip: float | None = Field(1.0, description="max global grad norm; None or <= 0 disables")
    patience: int = Field(7, ge=1, description="stop after this many epochs without improvement")
    min_delta: float = Field(0.0, ge=0, description="improvement must exceed this")
    monitor: str = Field("hateful/auroc", description="validation metric key, e.g. 'mean/macro_f1', 'loss'")
    monitor_mode: Literal["max", "min"] = "max"
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...")
    seed: int = 0
    num_workers: int = Field(0, ge=0)
    threads: int = Field(1, ge=0, description="torch intra-op threads while fitting (0: torch default)")
    log_every: int = Field(50, ge=0, description="log the running train loss every N steps (0: never)")

    @model_validator(mode="after")
    def _warmup_within_training(self) -> TrainConfig:
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) exceeds epochs ({self.epochs})")
        return self


RESUME_NEUTRAL_FIELDS = frozenset({"device", "num_workers", "log_every", "threads"})
"""Config fields that may change between a run and its resumption (they do not alter the maths;
the resolved AMP mode, which does, is hashed separately)."""


@dataclass
class FitResult:
    """Outcome of :func:`fit`. ``history[i]`` is the flat metrics dict of epoch ``i + 1``."""

    best_epoch: int
    best_value: float
    monitor: str
    history: list[dict[str, float]]
    stopped_early: bool
    epochs_run: int
    train_samples_per_s: float
    resumed_from: int | None
    device: str
    amp: AmpMode
    checkpoint_dir: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class Callback(Protocol):
    """Hooks :func:`fit` calls; the caller plugs MLflow (or anything) in here.

    ``on_epoch_end`` receives 1-based ``epoch`` and the flat dict ``{"train/loss", "train/lr",
    "train/epoch_seconds", "train/samples_per_s", "val/loss", "val/<task>/<metric>", ...,
    "val/mean/macro_f1"}``; it runs *before* that epoch's checkpoint is written, so after a kill
    the epoch is re-run and re-reported (at-least-once; log with ``step=epoch`` and duplicates
    overwrite harmlessly). An optional ``on_fit_start(resumed_from, history)`` is called when
    present (e.g. to replay already-finished epochs into a fresh tracking run).

    Under DDP only rank 0 calls callbacks, unless a callback sets ``all_ranks = True``.
    """

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None: ...

    def on_fit_end(self, result: FitResult) -> None: ...


# --------------------------------------------------------------------------- small pieces


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


def to_device(obj: Any, device: torch.device) -> Any:
    """Move tensors (recursively through dicts/lists/tuples) to ``device``; leave the rest."""
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and any(isinstance(v, Tensor) for v in obj):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def progress_disabled() -> bool:
    """Progress bars only for humans: off when stderr is not a TTY or ``CI`` is set."""
    return bool(os.environ.get("CI")) or not sys.stderr.isatty()


def config_hash(
    cfg: TrainConfig, amp: AmpMode, model: nn.Module, specs: Sequence[TaskSpec], n_train: int, n_val: int
) -> str:
    """Fingerprint a checkpoint must match to be resumed: config (less resume-neutral fields),
    resolved AMP mode, task specs, parameter names/shapes and split sizes."""
    payload = {
        "config": cfg.model_dump(mode="json", exclude=set(RESUME_NEUTRAL_FIELDS)),
        "amp": amp,
        "specs": [[s.name, s.kind, list(s.labels)] for s in specs],
        "params": [[n, list(t.shape), str(t.dtype)] for n, t in model.state_dict().items()],
        "n_train": n_train,
        "n_val": n_val,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def improved(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Whether ``value`` beats ``best``; NaN never improves and anything beats a NaN best."""
    if best is None:
        return True
    if math.isnan(value):
        return False
    if math.isnan(best):
        return True
    return value > best + min_delta if mode == "max" else value < best - min_delta


def strip_timing(history: Iterable[Mapping[str, float]]) -> list[dict[str, float]]:
    """History without wall-clock fields: what two identical runs must agree on exactly."""
    return [{k: v for k, v in rec.items() if not any(k.endswith(t) for t in TIMING_KEYS)} for rec in history]


# --------------------------------------------------------------------------- inference


def _loader(
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
    if dist_ctx.enabled:
        return _sharded_loader(dataset, batch_size, shuffle=shuffle, generator=generator, collate_fn=collate_fn,
                               num_workers=num_workers, device=device, dist_ctx=dist_ctx)  # fmt: skip
    if getattr(dataset, "batched", False) and collate_fn is None:
        # The dataset builds whole batches by tensor indexing (``dataset[list_of_indices]``): the
        # sampler yields index lists and auto-collation is off. Same order as shuffle=True would give.
        order = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
        return DataLoader(dataset, sampler=BatchSampler(order, batch_size, drop_last=False), batch_size=None,
                          num_workers=num_workers, pin_memory=device.type == "cuda", persistent_workers=False)  # fmt: skip
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


def _sharded_loader(
    dataset: Dataset, batch_size: int, *, shuffle: bool, generator: torch.Generator, collate_fn: Callable | None,
    num_workers: int, device: torch.device, dist_ctx: DistContext,
) -> DataLoader:  # fmt: skip
    """This rank's loader under DDP: the one-process loader's batches (same sampler, drawing from
    ``generator`` exactly as :func:`_loader` does), of which training (``shuffle``) gets each
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


def _rows(value: Tensor) -> np.ndarray:
    """An extras tensor as float numpy with the batch on axis 0 (a 0-d value becomes one row)."""
    value = value.detach().float().cpu()
    return (value.reshape(1) if value.ndim == 0 else value).numpy()


def _infer(
    model: nn.Module,
    loader: DataLoader,
    specs: Sequence[TaskSpec],
    device: torch.device,
    amp: AmpMode,
) -> tuple[Predictions, float]:
    """Predictions over ``loader`` and the sample-weighted mean loss (NaN when nothing is labelled)."""
    predictions, loss_sum, loss_n = _infer_sums(model, loader, specs, device, amp)
    return predictions, (loss_sum / loss_n if loss_n else math.nan)


@torch.no_grad()
def _infer_sums(
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
    loader = _loader(
        dataset, batch_size, shuffle=False, generator=make_generator(0), collate_fn=collate_fn,
        num_workers=num_workers, device=dev,
    )  # fmt: skip
    predictions, _ = _infer(model, loader, specs, dev, mode)
    return predictions


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    specs: Sequence[TaskSpec],
    device: torch.device,
    amp: AmpMode,
) -> dict[str, float]:
    """Validation metrics: :func:`all_metrics` keys plus ``"loss"``."""
    predictions, loss = _infer(model, loader, specs, device, amp)
    return {"loss": loss, **all_metrics(predictions, list(specs))}


def _n_rows(predictions: Predictions) -> int:
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


def _evaluate_sharded(
    model: nn.Module, loader: DataLoader, specs: Sequence[TaskSpec], device: torch.device, amp: AmpMode,
    dist_ctx: DistContext,
) -> dict[str, float]:  # fmt: skip
    """:func:`evaluate` under DDP: each rank scores its block of whole validation batches (the
    one-process batches), rank 0 joins them in dataset order, computes the metrics and broadcasts
    them, so every rank takes the same early-stopping and best-epoch decisions."""
    predictions, loss_sum, loss_n = _infer_sums(model, loader, specs, device, amp)
    parts = ddp.all_gather_object((predictions, loss_sum, loss_n), dist_ctx)
    val = None
    if dist_ctx.is_main:
        total_n = sum(n for _, _, n in parts)
        loss = sum(s for _, s, _ in parts) / total_n if total_n else math.nan
        val = {"loss": loss, **all_metrics(concat_predictions([p for p, _, _ in parts]), list(specs))}
    return ddp.broadcast_object(val, dist_ctx)


# --------------------------------------------------------------------------- training


@dataclass
class _Loop:
    """Mutable early-stopping / history state; exactly what ``state.json`` persists."""

    epoch: int = 0
    best_value: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)

    def to_state(self, config_hash: str) -> dict[str, Any]:
        return {**asdict(self), "config_hash": config_hash}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> _Loop:
        names = ("epoch", "best_value", "best_epoch", "bad_epochs", "stopped_early", "history")
        return cls(**{k: state[k] for k in names})


def _optimizer_step(loss: Tensor, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
                    cfg: TrainConfig) -> float:  # fmt: skip
    """Backward (scaled for AMP), optional gradient clipping, one optimizer and scheduler step;
    returns the learning rate the step used."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if cfg.grad_clip is not None and cfg.grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    last_lr = optimizer.param_groups[0]["lr"]
    scheduler.step()
    return last_lr


def _train_epoch(
    model: nn.Module,
    loader: DataLoader,
    specs: Sequence[TaskSpec],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    cfg: TrainConfig,
    device: torch.device,
    amp: AmpMode,
    bar_desc: str,
) -> tuple[float, float, int]:
    """One pass over ``loader``: returns (sample-weighted mean loss, lr of the last step, samples)."""
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    n_seen = 0
    last_lr = optimizer.param_groups[0]["lr"]
    # The bar is fed by hand rather than wrapping the loader: some tqdm variants call iter() on
    # their iterable twice, which would draw an extra shuffling seed (and spawn idle workers).
    bar = tqdm(total=len(loader), desc=bar_desc, leave=False, disable=progress_disabled(), dynamic_ncols=True)
    for step, batch in enumerate(loader, start=1):
        batch = to_device(batch, device)
        with autocast(device, amp):
            output: ModelOutput = model(batch)
        loss = compute_loss(output, batch["targets"], specs)
        last_lr = _optimizer_step(loss, model, optimizer, scheduler, scaler, cfg)
        bsz = len(next(iter(output.logits.values())))
        loss_sum += loss.detach().double() * bsz
        n_seen += bsz
        bar.update(1)
        if cfg.log_every and step % cfg.log_every == 0:
            running = float(loss_sum) / n_seen
            bar.set_postfix(loss=f"{running:.4f}")
            logger.info("%s step %d/%d loss %.4f lr %.3g", bar_desc, step, len(loader), running, last_lr)
    bar.close()
    return float(loss_sum) / max(1, n_seen), last_lr, n_seen


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


def _label_counts(
    targets: Mapping[str, Tensor], specs: Sequence[TaskSpec], piece: int, device: torch.device
) -> Tensor:
    """Labelled rows per task (``specs`` order) in this rank's piece, float64 on ``device``."""
    counts = [
        target_mask(targets[s.name], s).sum().double() if s.name in targets and piece else None for s in specs
    ]
    return torch.stack([c.to(device) if c is not None else torch.zeros((), dtype=torch.float64, device=device)
                        for c in counts])  # fmt: skip


def _train_epoch_ddp(
    model: nn.Module,
    loader: DataLoader,
    specs: Sequence[TaskSpec],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    cfg: TrainConfig,
    device: torch.device,
    amp: AmpMode,
    bar_desc: str,
    dist_ctx: DistContext,
    n_train: int,
) -> tuple[float, float, int]:
    """:func:`_train_epoch` for a DDP-wrapped ``model`` and a sharded ``loader``: one optimizer step
    per *global* batch; returns the global (sample-weighted mean loss, last lr, samples)."""
    model.train()
    world = dist_ctx.world_size
    comm = ddp._comm_device(dist_ctx)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    n_seen = 0
    last_lr = optimizer.param_groups[0]["lr"]
    bar = tqdm(total=len(loader), desc=bar_desc, leave=False, dynamic_ncols=True,
               disable=progress_disabled() or not dist_ctx.is_main)  # fmt: skip
    for step, batch in enumerate(loader, start=1):
        global_size = min(cfg.batch_size, n_train - (step - 1) * cfg.batch_size)
        piece = ddp.shard_sizes(global_size, world)[dist_ctx.rank]
        batch = to_device(batch, device)
        counts = _label_counts(batch["targets"], specs, piece, comm)
        pending = torch.distributed.all_reduce(counts, async_op=True)  # overlaps the forward pass
        with autocast(device, amp):
            output: ModelOutput = model(batch)
        pending.wait()
        loss = sharded_loss(output, batch["targets"], specs, counts.tolist(), piece, global_size, world)
        last_lr = _optimizer_step(loss, model, optimizer, scheduler, scaler, cfg)  # DDP averages grads here
        loss_sum += loss.detach().double() * (global_size / world)  # sums over ranks to loss * global_size
        n_seen += global_size
        bar.update(1)
        if cfg.log_every and step % cfg.log_every == 0 and dist_ctx.is_main:
            running = float(loss_sum) * world / n_seen  # rank 0's estimate; the epoch value is exact
            bar.set_postfix(loss=f"{running:.4f}")
            logger.info("%s step %d/%d loss %.4f lr %.3g", bar_desc, step, len(loader), running, last_lr)
    bar.close()
    ddp.all_reduce_sum(loss_sum, dist_ctx)
    return float(loss_sum) / max(1, n_seen), last_lr, n_seen


class _LossView(nn.Module):
    """What DDP wraps: the model with ``extras`` dropped from its output. Training never uses them,
    and with ``find_unused_parameters`` DDP counts every parameter reachable from the output as
    used, so an analysis-only output (e.g. a gate outside the loss) would hang the reduction."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: Any) -> ModelOutput:
        output: ModelOutput = self.model(batch)
        return ModelOutput(logits=output.logits, aux_loss=output.aux_loss)


def _reseed_rank(seed: int, dist_ctx: DistContext, epoch: int) -> None:
    """Give ranks > 0 their own global RNG streams (dropout etc.), derived from (seed, rank, epoch);
    rank 0 keeps the one-process stream. Loader shuffling uses its own generator, shared by all."""
    if dist_ctx.rank == 0:
        return
    derived = int.from_bytes(
        hashlib.sha256(f"{seed}/{dist_ctx.rank}/{epoch}".encode()).digest()[:8], "little"
    )
    random.seed(derived)
    np.random.seed(derived % 2**32)
    torch.manual_seed(derived % 2**63)


def _notify(callbacks: Sequence[object], hook: str, *args: Any, dist_ctx: DistContext = SINGLE) -> None:
    for callback in callbacks:
        if not dist_ctx.is_main and not getattr(callback, "all_ranks", False):
            continue
        method = getattr(callback, hook, None)
        if method is not None:
            method(*args)


def fit(
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset,
    specs: Sequence[TaskSpec],
    cfg: TrainConfig,
    run_dir: Path,
    callbacks: Sequence[object] = (),
    collate_fn: Callable | None = None,
    resume: bool = True,
    *,
    distributed: DistContext | None = None,
) -> FitResult:
    """Train ``model`` on ``train_set``, select on ``val_set``; the model ends with the best weights.

    Per epoch: train (AdamW, per-step warm-up + cosine LR, grad clipping, AMP per ``cfg``), score
    the validation set, update early stopping on ``cfg.monitor``, call callbacks, checkpoint to
    ``run_dir/checkpoints`` (see :mod:`memeops.training.checkpoint`). With ``resume=True`` and a
    checkpoint whose config hash matches, training continues after its last finished epoch (a
    finished run just returns its result); a mismatching checkpoint is ignored and overwritten.
    There is deliberately no test-set argument: see the module docstring.

    ``distributed``: the DDP context; ``None`` (default) reads the torchrun environment
    (:func:`memeops.training.distributed.init_from_env`: one process unless ``WORLD_SIZE > 1`` or
    a process group is initialised). Under DDP every rank calls ``fit`` with the same model
    (rank 0's weights are broadcast), datasets and config; ``cfg.batch_size`` is the global batch;
    only rank 0 touches ``run_dir`` and calls callbacks; every rank returns the same result and
    ends with the same best weights. The process group is left up (see ``distributed.cleanup``).
    """
    # 1 thread by default: see memeops.threads (tiny heads; OpenMP stalls on a shared 2-core box)
    with torch_threads(cfg.threads):
        return _fit(
            model, train_set, val_set, specs, cfg, run_dir, callbacks, collate_fn, resume, distributed
        )


def _fit(
    model: nn.Module, train_set: Dataset, val_set: Dataset, specs: Sequence[TaskSpec], cfg: TrainConfig,
    run_dir: Path, callbacks: Sequence[object], collate_fn: Callable | None, resume: bool,
    distributed: DistContext | None = None,
) -> FitResult:  # fmt: skip
    if len(train_set) == 0 or len(val_set) == 0:  # type: ignore[arg-type]
        raise ValueError("fit needs non-empty train and validation sets")
    specs = list(specs)
    device = resolve_device(cfg.device)
    dctx = distributed if distributed is not None else ddp.init_from_env(device)
    if dctx.enabled:
        wanted, device = device, dctx.device(device)
        if wanted.type == "cuda" and wanted.index is not None and wanted != device:
            logger.warning(
                "DDP: device %s ignored, rank %d trains on %s (LOCAL_RANK)", wanted, dctx.rank, device
            )
        if device.type == "cuda":
            torch.cuda.set_device(device)
    amp = resolve_amp(cfg.amp, device)
    directory = ckpt.checkpoint_dir(run_dir)

    seed_everything(cfg.seed)
    model.to(device)
    generator = make_generator(cfg.seed)
    train_loader = _loader(
        train_set, cfg.batch_size, shuffle=True, generator=generator, collate_fn=collate_fn,
        num_workers=cfg.num_workers, device=device, dist_ctx=dctx,
    )  # fmt: skip
    val_loader = _loader(
        val_set, cfg.batch_size, shuffle=False, generator=make_generator(0), collate_fn=collate_fn,
        num_workers=cfg.num_workers, device=device, dist_ctx=dctx,
    )  # fmt: skip
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, len(train_loader))  # global batches: same schedule under DDP
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    fingerprint = config_hash(cfg, amp, model, specs, len(train_set), len(val_set))  # type: ignore[arg-type]

    if dctx.is_main:
        loop, resumed_from = _maybe_resume(
            directory, resume, fingerprint, model, optimizer, scheduler, scaler, generator
        )
    else:
        loop, resumed_from = _Loop(), None
    if dctx.enabled:
        loop, resumed_from = _share_resume(
            dctx, loop, resumed_from, fingerprint, optimizer, scheduler, scaler, generator
        )
        _reseed_rank(cfg.seed, dctx, loop.epoch)
    train_model = (
        ddp.wrap_ddp(_LossView(model), dctx, device) if dctx.enabled else model
    )  # broadcasts rank 0's weights
    _notify(callbacks, "on_fit_start", resumed_from, list(loop.history), dist_ctx=dctx)

    epochs_bar = tqdm(
        total=cfg.epochs, initial=loop.epoch, desc="epochs", dynamic_ncols=True,
        disable=progress_disabled() or not dctx.is_main,
    )  # fmt: skip
    while loop.epoch < cfg.epochs and not loop.stopped_early:
        epoch = loop.epoch + 1
        start = time.perf_counter()
        if dctx.enabled:
            train_loss, lr, n_seen = _train_epoch_ddp(
                train_model, train_loader, specs, optimizer, scheduler, scaler, cfg, device, amp, f"epoch {epoch}",
                dctx, len(train_set),  # type: ignore[arg-type]
            )  # fmt: skip
        else:
            train_loss, lr, n_seen = _train_epoch(
                model, train_loader, specs, optimizer, scheduler, scaler, cfg, device, amp, f"epoch {epoch}"
            )
        train_seconds = time.perf_counter() - start
        if dctx.enabled:  # the unwrapped module: evaluation must not run DDP's collectives
            val = _evaluate_sharded(model, val_loader, specs, device, amp, dctx)
        else:
            val = evaluate(model, val_loader, specs, device, amp)
        if cfg.monitor not in val:
            raise KeyError(f"monitor {cfg.monitor!r} not among validation metrics {sorted(val)}")
        value = float(val[cfg.monitor])
        is_best = improved(value, loop.best_value, cfg.monitor_mode, cfg.min_delta)
        if is_best:
            loop.best_value, loop.best_epoch, loop.bad_epochs = value, epoch, 0
        else:
            loop.bad_epochs += 1
        loop.stopped_early = loop.bad_epochs >= cfg.patience and epoch < cfg.epochs
        record = {
            "epoch": epoch,
            "train/loss": train_loss,
            "train/lr": lr,
            **{f"val/{k}": float(v) for k, v in val.items()},
            "train/epoch_seconds": time.perf_counter() - start,
            "train/samples_per_s": n_seen / max(train_seconds, 1e-9),
        }
        loop.history.append(record)
        loop.epoch = epoch
        if dctx.is_main:
            logger.info(
                "epoch %d/%d train/loss %.4f val/%s %.4f (best %.4f @ %d)%s",
                epoch, cfg.epochs, train_loss, cfg.monitor, value, loop.best_value, loop.best_epoch,
                " — early stop" if loop.stopped_early else "",
            )  # fmt: skip
        epochs_bar.set_postfix({"train/loss": f"{train_loss:.4f}", f"val/{cfg.monitor}": f"{value:.4f}"})
        epochs_bar.update(1)
        _notify(
            callbacks, "on_epoch_end", epoch, {k: v for k, v in record.items() if k != "epoch"}, dist_ctx=dctx
        )
        if dctx.is_main:
            ckpt.save_checkpoint(
                directory, state=loop.to_state(fingerprint), model=model, optimizer=optimizer,
                scheduler=scheduler, scaler=scaler, loader_generator=generator, is_best=is_best,
            )  # fmt: skip
    epochs_bar.close()
    del train_model

    if dctx.is_main:
        ckpt.load_weights(model, directory / ckpt.BEST_WEIGHTS)
    model.to(device)
    ddp.broadcast_module(model, dctx)  # every rank ends with rank 0's best weights
    speeds = [rec["train/samples_per_s"] for rec in loop.history]
    result = FitResult(
        best_epoch=loop.best_epoch,
        best_value=float(loop.best_value) if loop.best_value is not None else math.nan,
        monitor=cfg.monitor,
        history=loop.history,
        stopped_early=loop.stopped_early,
        epochs_run=loop.epoch,
        train_samples_per_s=float(np.mean(speeds)) if speeds else math.nan,
        resumed_from=resumed_from,
        device=str(device),
        amp=amp,
        checkpoint_dir=str(directory),
    )
    _notify(callbacks, "on_fit_end", result, dist_ctx=dctx)
    return result


def _share_resume(
    dctx: DistContext, loop: _Loop, resumed_from: int | None, fingerprint: str, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler, generator: torch.Generator,
) -> tuple[_Loop, int | None]:  # fmt: skip
    """Rank 0's resume decision and state, on every rank (no shared file system needed).

    Rank 0 sends the loop state, the loader generator (so all ranks shuffle alike) and, when it
    resumed, the optimizer / scheduler / scaler states; the weights follow when DDP wraps the
    model. Config hashes are compared first: a rank given another model, data or config is an
    error on every rank, not something to train through.
    """
    prints = ddp.all_gather_object(fingerprint, dctx)
    if len(set(prints)) > 1:  # raised on every rank: none is left waiting in a collective
        raise RuntimeError(f"config hashes differ across ranks {prints}: every rank must fit the same model, "
                           "data and config")  # fmt: skip
    payload = None
    if dctx.is_main:
        payload = {
            "loop": loop.to_state(fingerprint),
            "resumed_from": resumed_from,
            "generator": generator.get_state(),
            "trainer": None if resumed_from is None else ddp.cpu_copy({
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            }),
        }  # fmt: skip
    payload = ddp.broadcast_object(payload, dctx)
    if dctx.is_main:
        return loop, resumed_from
    generator.set_state(payload["generator"])
    if payload["trainer"] is not None:
        optimizer.load_state_dict(payload["trainer"]["optimizer"])
        scheduler.load_state_dict(payload["trainer"]["scheduler"])
        scaler.load_state_dict(payload["trainer"]["scaler"])
    return _Loop.from_state(payload["loop"]), payload["resumed_from"]


def _maybe_resume(
    directory: Path,
    resume: bool,
    fingerprint: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    generator: torch.Generator,
) -> tuple[_Loop, int | None]:
    """Restore from a matching checkpoint, or start fresh (clearing a stale one's state file)."""
    state = ckpt.recover(directory)
    if state is None:
        return _Loop(), None
    if resume and state.get("config_hash") == fingerprint:
        ckpt.load_checkpoint(
            directory, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
            loader_generator=generator,
        )  # fmt: skip
        loop = _Loop.from_state(state)
        logger.info("resuming from %s after epoch %d", directory, loop.epoch)
        return loop, loop.epoch
    if resume:
        logger.warning("checkpoint in %s has a different config hash; starting from scratch", directory)
    # A stale best.safetensors must never be mistaken for this run's best.
    for name in (ckpt.STATE_FILE, ckpt.BEST_WEIGHTS, ckpt.LAST_WEIGHTS, ckpt.OPTIM_FILE, ckpt.RNG_FILE):
        (directory / name).unlink(missing_ok=True)
    return _Loop(), None
