"""Training: one trainer for every model, crash-safe checkpoints, seeding.

Imports only torch / numpy / sklearn / safetensors / tqdm (+ pydantic for the config), so it runs
on a GPU box without mlflow, dvc or prefect. The test split never enters :func:`fit`; score it once
after selection with :func:`predict` and :func:`memeops.evaluation.all_metrics`.

The names below are re-exported lazily (on first attribute access), so importing one submodule
(``memeops.training.distributed``, ``memeops.training.clip_pretrain``, ...) does not import the
trainer, the metrics (sklearn) and the rest of the package with it.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainConfig": "memeops.config.train",
    "Predictions": "memeops.evaluation.metrics",
    "checkpoint_dir": "memeops.training.checkpoint", "load_weights": "memeops.training.checkpoint",
    "save_weights": "memeops.training.checkpoint", "weights_hash": "memeops.training.checkpoint",
    "capture_rng_state": "memeops.training.seeding", "restore_rng_state": "memeops.training.seeding",
    "seed_everything": "memeops.training.seeding",
    "evaluate": "memeops.training.inference", "predict": "memeops.training.inference",
    "compute_loss": "memeops.training.optim", "lr_factor": "memeops.training.optim",
    "resolve_amp": "memeops.training.optim", "resolve_device": "memeops.training.optim",
    "Callback": "memeops.training.fit_types", "FitResult": "memeops.training.fit_types",
    "strip_timing": "memeops.training.fit_types",
    "fit": "memeops.training.trainer",
}  # fmt: skip

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'memeops.training' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
