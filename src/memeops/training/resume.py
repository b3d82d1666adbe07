"""Resuming :func:`memeops.training.trainer.fit`: the early-stopping / history state a checkpoint
persists (:class:`LoopState`), the config fingerprint a checkpoint must match, and the resume
decision (rank 0's, shared with every rank under DDP).

On CPU, a run killed at any point and restarted with ``resume=True`` ends bit-identical to an
uninterrupted one; a checkpoint with another fingerprint is ignored and its files cleared.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from memeops.config.train import TrainConfig
from memeops.models.base import TaskSpec
from memeops.training import checkpoint as ckpt
from memeops.training import distributed as ddp
from memeops.training.distributed import DistContext
from memeops.training.fit_types import RESUME_NEUTRAL_FIELDS, AmpMode

logger = logging.getLogger(__name__)


@dataclass
class LoopState:
    """Mutable early-stopping / history state; exactly what ``state.json`` persists."""

    epoch: int = 0
    best_value: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)

    def to_state(self, config_hash: str) -> dict[str, Any]:
        """The JSON state a checkpoint stores, tagged with the run's config fingerprint."""
        return {**asdict(self), "config_hash": config_hash}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> LoopState:
        """The loop state back from a checkpoint's (or rank 0's) JSON state."""
        names = ("epoch", "best_value", "best_epoch", "bad_epochs", "stopped_early", "history")
        return cls(**{k: state[k] for k in names})


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


def maybe_resume(
    directory: Path,
    resume: bool,
    fingerprint: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    generator: torch.Generator,
) -> tuple[LoopState, int | None, dict[str, Tensor] | None]:
    """Restore from a matching checkpoint, or start fresh (clearing a stale one's state file).

    Returns the loop state, the epoch resumed after (None: fresh start) and, when resuming, a
    :func:`~memeops.training.checkpoint.snapshot_state` of the checkpoint's best weights (the
    trainer keeps the best weights in memory and no longer reads them back at the end).
    """
    state = ckpt.recover(directory)
    if state is None:
        return LoopState(), None, None
    if resume and state.get("config_hash") == fingerprint:
        ckpt.load_weights(model, directory / ckpt.BEST_WEIGHTS)  # overwritten by the last weights next
        best_state = ckpt.snapshot_state(model)
        ckpt.load_checkpoint(
            directory, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
            loader_generator=generator,
        )  # fmt: skip
        loop = LoopState.from_state(state)
        logger.info("resuming from %s after epoch %d", directory, loop.epoch)
        return loop, loop.epoch, best_state
    if resume:
        logger.warning("checkpoint in %s has a different config hash; starting from scratch", directory)
    # A stale best.safetensors must never be mistaken for this run's best.
    for name in (ckpt.STATE_FILE, ckpt.BEST_WEIGHTS, ckpt.LAST_WEIGHTS, ckpt.OPTIM_FILE, ckpt.RNG_FILE):
        (directory / name).unlink(missing_ok=True)
    return LoopState(), None, None


def share_resume(
    dctx: DistContext, loop: LoopState, resumed_from: int | None, fingerprint: str, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler, generator: torch.Generator,
) -> tuple[LoopState, int | None]:  # fmt: skip
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
    return LoopState.from_state(payload["loop"]), payload["resumed_from"]
