"""What :func:`memeops.training.trainer.fit` gives back and calls: :class:`FitResult`, the
:class:`Callback` hooks, the resolved AMP mode, and which history fields and settings may differ
between two runs of the same model. What it takes, :class:`memeops.config.train.TrainConfig`, lives
in the torch-free config package.

No torch here either; importing this module through ``memeops.training`` still loads torch,
because that package's ``__init__`` re-exports the trainer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol, runtime_checkable

AmpMode = Literal["off", "bf16", "fp16"]
TIMING_KEYS = ("epoch_seconds", "samples_per_s")
"""History fields measured on the wall clock: the only ones that differ between identical runs."""

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
    "val/mean/macro_f1"}``; it runs *before* any checkpoint of that epoch is written (checkpoints
    are throttled: ``checkpoint_every_s``), so after a kill the epochs since the last save are re-run
    and re-reported (at-least-once; log with ``step=epoch`` and duplicates overwrite harmlessly). An optional ``on_fit_start(resumed_from, history)`` is called when
    present (e.g. to replay already-finished epochs into a fresh tracking run).

    Under DDP only rank 0 calls callbacks, unless a callback sets ``all_ranks = True``.
    """

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None: ...

    def on_fit_end(self, result: FitResult) -> None: ...


def strip_timing(history: Iterable[Mapping[str, float]]) -> list[dict[str, float]]:
    """History without wall-clock fields: what two identical runs must agree on exactly."""
    return [{k: v for k, v in rec.items() if not any(k.endswith(t) for t in TIMING_KEYS)} for rec in history]
