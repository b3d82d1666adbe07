"""Checkpoints throttled by wall time (``TrainConfig.checkpoint_every_s``): which epochs are saved,
the best weights kept in memory (restored, and written into the checkpoint), resuming from a
throttled checkpoint, and results bit-identical whatever the interval."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))  # the shared helper, whatever pytest's import mode
from _resume_script import SPECS, SyntheticMemes, TinyModel

from memeops.training import TrainConfig, fit, seed_everything, strip_timing, weights_hash
from memeops.training import checkpoint as ckpt
from memeops.training import trainer as trainer_module

pytestmark = pytest.mark.usefixtures("torch_globals")  # conftest: deterministic mode and threads restored

TRAIN = SyntheticMemes(64, seed=1)
VAL = SyntheticMemes(32, seed=2)
NEVER = 1e9  # seconds: no checkpoint but the final one


@pytest.fixture
def saved_epochs(monkeypatch) -> list[int]:
    """The epochs whose checkpoint the trainer writes (the real save still runs)."""
    epochs: list[int] = []
    real = ckpt.save_checkpoint

    def save(directory, **kwargs):
        epochs.append(int(kwargs["state"]["epoch"]))
        real(directory, **kwargs)

    monkeypatch.setattr(ckpt, "save_checkpoint", save)
    return epochs


def config(**overrides) -> TrainConfig:
    # Validation loss in "max" mode makes an early epoch the best, so best != last.
    base = dict(epochs=6, batch_size=16, lr=1e-2, warmup_epochs=1, patience=10, monitor="loss",
                monitor_mode="max", seed=5)  # fmt: skip
    return TrainConfig(**{**base, **overrides})


class Snapshots:
    """Records the model's weights at every epoch end."""

    def __init__(self, model: nn.Module):
        self.model, self.weights = model, {}

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.weights[epoch] = {k: v.clone() for k, v in self.model.state_dict().items()}


def run(cfg: TrainConfig, run_dir: Path, callbacks=()) -> tuple[TinyModel, object, Snapshots]:
    seed_everything(cfg.seed)
    model = TinyModel()
    snaps = Snapshots(model)
    result = fit(model, TRAIN, VAL, SPECS, cfg, run_dir, callbacks=[snaps, *callbacks])
    return model, result, snaps


def summary(model: nn.Module, result) -> str:
    return json.dumps({"history": strip_timing(result.history), "best_value": result.best_value,
                       "best_epoch": result.best_epoch, "weights": weights_hash(model)}, sort_keys=True)  # fmt: skip


def equal_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> bool:
    state = model.state_dict()
    return state.keys() == weights.keys() and all(torch.equal(state[k], weights[k]) for k in state)


def from_file(path: Path) -> TinyModel:
    model = TinyModel()
    ckpt.load_weights(model, path)
    return model


def test_the_interval_is_not_part_of_a_run_identity() -> None:
    """Runtime-only: left out of dumps (so of the resume hash and the stage fingerprints)."""
    assert TrainConfig().checkpoint_every_s == 60.0
    assert "checkpoint_every_s" not in config(checkpoint_every_s=0).model_dump()
    assert config(checkpoint_every_s=0).model_dump() == config(checkpoint_every_s=NEVER).model_dump()
    with pytest.raises(ValueError):
        config(checkpoint_every_s=-1)


@pytest.mark.parametrize("interval", [0, NEVER])
def test_saved_epochs_and_best_weights(tmp_path: Path, saved_epochs: list[int], interval: float) -> None:
    model, result, snaps = run(config(checkpoint_every_s=interval), tmp_path)
    last = result.epochs_run
    assert saved_epochs == (list(range(1, last + 1)) if interval == 0 else [last])
    assert 1 <= result.best_epoch < last
    assert equal_weights(model, snaps.weights[result.best_epoch])  # restored from memory
    directory = tmp_path / "checkpoints"
    assert equal_weights(from_file(directory / ckpt.BEST_WEIGHTS), snaps.weights[result.best_epoch])
    assert equal_weights(from_file(directory / ckpt.LAST_WEIGHTS), snaps.weights[last])
    state = json.loads((directory / ckpt.STATE_FILE).read_text())
    assert (state["epoch"], state["best_epoch"]) == (last, result.best_epoch)


def test_a_large_interval_gives_the_same_run(tmp_path: Path) -> None:
    every = summary(*run(config(checkpoint_every_s=0), tmp_path / "every")[:2])
    final_only = summary(*run(config(checkpoint_every_s=NEVER), tmp_path / "final")[:2])
    assert final_only == every


def test_early_stopping_writes_the_final_checkpoint(tmp_path: Path, saved_epochs: list[int]) -> None:
    # lr = 0: the weights never change, so the monitor never improves after epoch 1.
    cfg = config(epochs=10, lr=0.0, patience=2, monitor="mean/macro_f1", checkpoint_every_s=NEVER)
    _, result, _ = run(cfg, tmp_path)
    assert result.stopped_early and result.epochs_run == 3 and saved_epochs == [3]
    assert json.loads((tmp_path / "checkpoints" / ckpt.STATE_FILE).read_text())["stopped_early"] is True


class Clock:
    """A fake ``time.monotonic`` for the trainer: ``10 * epoch`` seconds after each epoch's end."""

    def __init__(self, crash_at: int | None = None):
        self.now, self.crash_at = 0.0, crash_at

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.now = 10.0 * epoch
        if epoch == self.crash_at:
            raise KeyboardInterrupt  # a kill before this epoch's checkpoint


def fake_time(monkeypatch, clock: Clock) -> None:
    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(perf_counter=time.perf_counter,
                                                                monotonic=lambda: clock.now))  # fmt: skip


def test_saves_when_the_interval_has_passed_and_resumes_after_the_last_save(
    tmp_path: Path, monkeypatch, saved_epochs: list[int]
) -> None:
    cfg = config(epochs=7, checkpoint_every_s=25)
    reference_model, reference, _ = run(cfg, tmp_path / "reference")  # real clock: the final save only

    fake_time(monkeypatch, clock := Clock(crash_at=5))
    saved_epochs.clear()
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "run", callbacks=[clock])
    assert saved_epochs == [3]
    model, resumed, _ = run(cfg, tmp_path / "run", callbacks=[Clock()])
    assert resumed.resumed_from == 3
    assert summary(model, resumed) == summary(reference_model, reference)


def test_time_throttle_uses_the_clock(tmp_path: Path, monkeypatch, saved_epochs: list[int]) -> None:
    fake_time(monkeypatch, clock := Clock())
    run(config(epochs=7, checkpoint_every_s=25), tmp_path, callbacks=[clock])
    assert saved_epochs == [3, 6, 7]  # t = 30 (>= 25 after 0), 60 (>= 25 after 30), the final epoch


def test_a_finished_run_resumes_with_the_best_weights_from_its_checkpoint(tmp_path: Path) -> None:
    cfg = config(checkpoint_every_s=NEVER)  # best epoch < last: best.safetensors came from memory
    first_model, first, _ = run(cfg, tmp_path)
    model, again, _ = run(cfg, tmp_path)
    assert again.resumed_from == first.epochs_run and first.best_epoch < first.epochs_run
    assert summary(model, again) == summary(first_model, first)


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 4)
        self.out = nn.Linear(4, 5, bias=False)
        self.out.weight = self.embed.weight
        self.register_buffer("empty", torch.zeros(0))


def stored(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as fh:
        return fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118


def test_a_snapshot_is_a_copy_and_saves_as_the_model_does(tmp_path: Path) -> None:
    model = Tied()
    state = ckpt.snapshot_state(model)
    assert state["embed.weight"] is state["out.weight"]  # still tied in the copy
    ckpt.save_weights(model, tmp_path / "model.safetensors", metadata={"epoch": "1"})
    ckpt.save_state(state, tmp_path / "state.safetensors", metadata={"epoch": "1"})
    files = [tmp_path / "model.safetensors", tmp_path / "state.safetensors"]
    (meta_a, tensors_a), (meta_b, tensors_b) = (stored(path) for path in files)
    assert meta_a == meta_b == {"epoch": "1", "out.weight": "embed.weight"}  # (key order: random)
    assert tensors_a.keys() == tensors_b.keys() == {"embed.weight", "empty"}
    assert all(torch.equal(tensors_a[k], tensors_b[k]) for k in tensors_a)
    with torch.no_grad():
        model.embed.weight.add_(1.0)
    assert not torch.equal(state["embed.weight"], model.embed.weight)
    model.load_state_dict(state)
    assert torch.equal(model.out.weight, state["out.weight"])
