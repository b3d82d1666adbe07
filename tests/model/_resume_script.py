"""A tiny fit, run as a real process by the kill-and-resume test (and imported by the trainer tests).

Usage: ``python _resume_script.py RUN_DIR [--epochs N] [--sleep S]``. Prints one JSON line with the
best value/epoch, the history without wall-clock fields, the final weights' hash and where it
resumed from. ``--sleep`` pauses in ``on_epoch_end`` so a test has time to kill it mid-run.

Also defines the synthetic data set and the tiny model the trainer tests share, so both sides of
the resume comparison use exactly the same code.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from memeops.models.base import IGNORE_INDEX, MISSING_MULTI, ModelOutput, MultiTaskHeads, TaskSpec

IN_DIM = 12
SPECS = [
    TaskSpec("hateful", "single", ("no", "yes")),
    TaskSpec("sentiment", "single", ("neg", "neu", "pos")),
    TaskSpec("target", "multi", ("a", "b", "c", "d")),
]


class SyntheticMemes(Dataset):
    """Random features with learnable targets: binary from x0+x1, 3-class from argmax x2..x4,
    4 multi-labels from signs of x5..x8; ~20% of each task's labels are missing."""

    def __init__(self, n: int, seed: int, missing: float = 0.2):
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, IN_DIM, generator=gen)
        self.hateful = (self.x[:, 0] + self.x[:, 1] > 0).long()
        self.sentiment = self.x[:, 2:5].argmax(dim=1)
        self.target = (self.x[:, 5:9] > 0).float()
        drop = torch.rand(n, 3, generator=gen) < missing
        self.hateful[drop[:, 0]] = IGNORE_INDEX
        self.sentiment[drop[:, 1]] = IGNORE_INDEX
        self.target[drop[:, 2]] = MISSING_MULTI

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {
            "x": self.x[i],
            "targets": {"hateful": self.hateful[i], "sentiment": self.sentiment[i], "target": self.target[i]},
            "meme_id": f"m{i:04d}",
        }


class TinyModel(nn.Module):
    """Implements the model contract: dropout (so RNG state matters), a gate extra, an aux loss."""

    def __init__(self, specs: list[TaskSpec] = SPECS, hidden: int = 16):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(IN_DIM, hidden), nn.ReLU(), nn.Dropout(0.1))
        self.gate = nn.Linear(hidden, 1)
        self.heads = MultiTaskHeads(hidden, specs)

    def forward(self, batch: dict) -> ModelOutput:
        h: Tensor = self.trunk(batch["x"])
        gate = torch.sigmoid(self.gate(h)).squeeze(-1)
        aux = 1e-3 * h.pow(2).mean()
        return ModelOutput(logits=self.heads(h), aux_loss=aux, extras={"gate": gate})


class SleepCallback:
    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        time.sleep(self.seconds)


def run(run_dir: Path, epochs: int, sleep: float) -> dict:
    from memeops.training import TrainConfig, fit, seed_everything, strip_timing, weights_hash

    cfg = TrainConfig(  # a checkpoint after every epoch: the kill lands between saved epochs
        epochs=epochs, batch_size=16, lr=1e-2, warmup_epochs=1, patience=10, monitor="mean/macro_f1", seed=3,
        checkpoint_every_s=0,
    )
    seed_everything(cfg.seed)
    model = TinyModel()
    result = fit(
        model, SyntheticMemes(96, seed=1), SyntheticMemes(48, seed=2), SPECS, cfg, run_dir,
        callbacks=[SleepCallback(sleep)],
    )  # fmt: skip
    return {
        "best_value": result.best_value,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "history": strip_timing(result.history),
        "weights_hash": weights_hash(model),
        "resumed_from": result.resumed_from,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--sleep", type=float, default=0.0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # same kernels in every process: bitwise-equal results
    print(json.dumps(run(args.run_dir, args.epochs, args.sleep)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
