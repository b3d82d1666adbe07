"""What :func:`memeops.training.trainer.fit` takes and gives back: :class:`TrainConfig` (the
optimisation, schedule, early-stopping and runtime settings), :class:`FitResult` and the
:class:`Callback` hooks.

This module itself imports only pydantic (no torch), so it can move into a torch-free config
package; importing it through ``memeops.training`` still loads torch, because that package's
``__init__`` re-exports the trainer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
        """The warm-up must end within training (else the LR never reaches its peak)."""
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
        """The result as plain JSON-able values (for reports and MLflow)."""
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


def strip_timing(history: Iterable[Mapping[str, float]]) -> list[dict[str, float]]:
    """History without wall-clock fields: what two identical runs must agree on exactly."""
    return [{k: v for k, v in rec.items() if not any(k.endswith(t) for t in TIMING_KEYS)} for rec in history]
