"""Training: one trainer for every model, crash-safe checkpoints, seeding.

Imports only torch / numpy / sklearn / safetensors / tqdm (+ pydantic for the config), so it runs
on a GPU box without mlflow, dvc or prefect. The test split never enters :func:`fit`; score it once
after selection with :func:`predict` and :func:`memeops.evaluation.all_metrics`.
"""

from memeops.config.train import TrainConfig
from memeops.evaluation.metrics import Predictions
from memeops.training.checkpoint import checkpoint_dir, load_weights, save_weights, weights_hash
from memeops.training.seeding import capture_rng_state, restore_rng_state, seed_everything
from memeops.training.inference import evaluate, predict
from memeops.training.optim import compute_loss, lr_factor, resolve_amp, resolve_device
from memeops.training.fit_types import Callback, FitResult, strip_timing
from memeops.training.trainer import fit

__all__ = [
    "Callback",
    "FitResult",
    "Predictions",
    "TrainConfig",
    "capture_rng_state",
    "checkpoint_dir",
    "compute_loss",
    "evaluate",
    "fit",
    "load_weights",
    "lr_factor",
    "predict",
    "resolve_amp",
    "resolve_device",
    "restore_rng_state",
    "save_weights",
    "seed_everything",
    "strip_timing",
    "weights_hash",
]
