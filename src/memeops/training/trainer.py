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
start. On CPU, a run killed at any point and restarted with ``resume=True`` continues after its
last saved epoch (checkpoints: after the final epoch and at most every ``cfg.checkpoint_every_s``
seconds) and ends bit-identical to an uninterrupted one (same history apart from wall-clock
fields, same best value, same weights).

Data parallelism: launched under ``torchrun`` / ``accelerate launch`` (``WORLD_SIZE > 1``), or
given a :class:`~memeops.training.distributed.DistContext`, :func:`fit` trains a
``DistributedDataParallel`` copy of the model. ``cfg.batch_size`` stays the *global* batch (split
across ranks), the loss is weighted so the averaged gradient is the one-process gradient of that
batch, validation is sharded by whole batches and gathered, and every rank takes the same
early-stopping decisions. Only rank 0 reads/writes checkpoints and calls callbacks. See
:mod:`memeops.training.distributed` and ``docs/ddp.md``.

The pieces live next door: :mod:`memeops.config.train` (:class:`TrainConfig`),
:mod:`memeops.training.fit_types` (:class:`FitResult`, :class:`Callback`), :mod:`memeops.training.optim` (device, AMP, optimizer,
schedule, loss), :mod:`memeops.training.inference` (loaders, :func:`predict`, validation scoring)
and :mod:`memeops.training.resume` (checkpoint state and the resume decision); this module is the
epoch loop. Only torch / numpy / sklearn / safetensors / tqdm are imported: this runs on a bare GPU
box. Experiment tracking (MLflow) is attached by the caller through callbacks.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from memeops.config.train import TrainConfig
from memeops.models.base import ModelOutput, TaskSpec
from memeops.threads import torch_threads
from memeops.training import checkpoint as ckpt
from memeops.training import distributed as ddp
from memeops.training.distributed import SINGLE, DistContext
from memeops.training.fit_types import AmpMode, FitResult
from memeops.training.inference import evaluate, evaluate_sharded, make_loader
from memeops.training.optim import (
    autocast,
    compute_loss,
    label_counts,
    make_optimizer,
    make_scheduler,
    resolve_amp,
    resolve_device,
    sharded_loss,
    to_device,
)
from memeops.training.resume import LoopState, config_hash, maybe_resume, share_resume
from memeops.training.seeding import make_generator, seed_everything

logger = logging.getLogger(__name__)


def progress_disabled() -> bool:
    """Progress bars only for humans: off when stderr is not a TTY or ``CI`` is set."""
    return bool(os.environ.get("CI")) or not sys.stderr.isatty()


def improved(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Whether ``value`` beats ``best``; NaN never improves and anything beats a NaN best."""
    if best is None:
        return True
    if math.isnan(value):
        return False
    if math.isnan(best):
        return True
    return value > best + min_delta if mode == "max" else value < best - min_delta


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
        counts = label_counts(batch["targets"], specs, piece, comm)
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
    """Call ``hook`` on every callback that has it (rank 0 only, unless a callback sets ``all_ranks``)."""
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
    the validation set, update early stopping on ``cfg.monitor``, call callbacks, and checkpoint to
    ``run_dir/checkpoints`` (see :mod:`memeops.training.checkpoint`) when ``cfg.checkpoint_every_s``
    seconds have passed since the last save, and after the final epoch. With ``resume=True`` and a
    checkpoint whose config hash matches, training continues after its last saved epoch (a
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
    """:func:`fit`'s body, run under its thread limit."""
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
    train_loader = make_loader(
        train_set, cfg.batch_size, shuffle=True, generator=generator, collate_fn=collate_fn,
        num_workers=cfg.num_workers, device=device, dist_ctx=dctx,
    )  # fmt: skip
    val_loader = make_loader(
        val_set, cfg.batch_size, shuffle=False, generator=make_generator(0), collate_fn=collate_fn,
        num_workers=cfg.num_workers, device=device, dist_ctx=dctx,
    )  # fmt: skip
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, len(train_loader))  # global batches: same schedule under DDP
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    fingerprint = config_hash(cfg, amp, model, specs, len(train_set), len(val_set))  # type: ignore[arg-type]

    best_state = None  # rank 0's in-memory copy of the best epoch's weights
    if dctx.is_main:
        loop, resumed_from, best_state = maybe_resume(
            directory, resume, fingerprint, model, optimizer, scheduler, scaler, generator
        )
    else:
        loop, resumed_from = LoopState(), None
    best_saved = loop.best_epoch  # the best epoch the checkpoint's best.safetensors holds
    last_save = time.monotonic()
    if dctx.enabled:
        loop, resumed_from = share_resume(
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
            val = evaluate_sharded(model, val_loader, specs, device, amp, dctx)
        else:
            val = evaluate(model, val_loader, specs, device, amp)
        if cfg.monitor not in val:
            raise KeyError(f"monitor {cfg.monitor!r} not among validation metrics {sorted(val)}")
        value = float(val[cfg.monitor])
        is_best = improved(value, loop.best_value, cfg.monitor_mode, cfg.min_delta)
        if is_best:
            loop.best_value, loop.best_epoch, loop.bad_epochs = value, epoch, 0
            if dctx.is_main:  # a copy, not a file: the checkpoint below may be skipped this epoch
                best_state = ckpt.snapshot_state(model)
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
        # Checkpoints are throttled by wall time (each costs fsyncs and renames, tens of ms: more
        # than a small head's epoch), but always written after the final epoch. Skipping one changes
        # nothing in the run: a save only reads the model, optimizer and RNG states (it draws no
        # random numbers), and it captures the RNG states when it is written, so a run resumed from
        # any saved epoch continues exactly as the uninterrupted run did. The decision is rank 0's
        # alone (only it writes) and is taken from the clock, never from anything the maths sees.
        final = loop.stopped_early or epoch >= cfg.epochs
        due = final or time.monotonic() - last_save >= cfg.checkpoint_every_s
        if dctx.is_main and due:
            ckpt.save_checkpoint(
                directory, state=loop.to_state(fingerprint), model=model, optimizer=optimizer,
                scheduler=scheduler, scaler=scaler, loader_generator=generator, is_best=is_best,
                best_state=best_state if loop.best_epoch != best_saved else None,
            )  # fmt: skip
            best_saved, last_save = loop.best_epoch, time.monotonic()
    epochs_bar.close()
    del train_model

    if dctx.is_main and best_state is not None:  # the best epoch's weights, kept in memory
        model.load_state_dict(best_state)
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
