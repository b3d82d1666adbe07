"""MlflowCallback logs epoch metrics without blocking the epoch loop, yet live: a point is in the
tracking store while the fit is still running, and every point is there when it ends."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import mlflow
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "model"))  # the trainer tests' tiny model and data
from _resume_script import SPECS, SyntheticMemes, TinyModel

from memeops.tracking.runs import MlflowCallback, tracked_run
from memeops.training import TrainConfig, fit, seed_everything

pytestmark = pytest.mark.usefixtures("torch_globals")  # conftest: deterministic mode and threads restored

EPOCHS = 4
WAIT_S = 30.0  # how long the probe waits for epoch 1's point (it is async; usually milliseconds)


class StoreProbe:
    """Placed after MlflowCallback: at the end of epoch ``at``, reads the run's ``train/loss``
    points from the tracking store (polling until epoch 1's appears, or ``WAIT_S``)."""

    def __init__(self, run_id: str, at: int = 2):
        self.run_id, self.at = run_id, at
        self.seen: list[int] | None = None
        self.fit_ended_before_probe = False

    def _steps(self) -> list[int]:
        return [m.step for m in mlflow.MlflowClient().get_metric_history(self.run_id, "train/loss")]

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        if epoch != self.at:
            return
        deadline = time.monotonic() + WAIT_S
        steps = self._steps()
        while 1 not in steps and time.monotonic() < deadline:
            time.sleep(0.02)
            steps = self._steps()
        self.seen = steps

    def on_fit_end(self, result) -> None:
        self.fit_ended_before_probe = self.seen is None


def test_epoch_metrics_are_in_the_store_before_the_fit_ends(tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=EPOCHS, batch_size=16, lr=1e-2, warmup_epochs=1, monitor="mean/macro_f1",
                      device="cpu", seed=3, patience=10)  # fmt: skip
    seed_everything(cfg.seed)
    model = TinyModel()
    with tracked_run(experiment=f"test-live-{uuid.uuid4().hex[:8]}", run_name="live", stage="train@test",
                     variant="tiny", seed=cfg.seed, data_digest="d", params={}, system_metrics=False) as run:  # fmt: skip
        probe = StoreProbe(run.info.run_id)
        result = fit(model, SyntheticMemes(64, seed=1), SyntheticMemes(32, seed=2), SPECS, cfg, tmp_path,
                     callbacks=[MlflowCallback(log_artifacts=False), probe])  # fmt: skip
    assert not probe.fit_ended_before_probe
    assert probe.seen is not None and 1 in probe.seen, probe.seen  # live: epoch 1 while epoch 2 ran

    # on_fit_end waited for every point: same keys and steps as the history, values included
    client = mlflow.MlflowClient()
    logged = client.get_run(run.info.run_id).data.metrics
    for key in result.history[0]:
        if key == "epoch":
            continue
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == list(range(1, EPOCHS + 1)), key
        assert [m.value for m in history] == pytest.approx([r[key] for r in result.history], nan_ok=True)
        assert key in logged
    assert logged["best/epoch"] == result.best_epoch


def test_epoch_points_are_batched_between_flushes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first epoch goes at once (the UI shows the run has started); the later ones of a fast fit
    wait for ``flush_every_s`` and go in one call; nothing is lost at the end."""
    calls: list[list[int]] = []
    original = mlflow.MlflowClient.log_batch

    def counting(self, run_id, metrics=(), *args, **kwargs):
        calls.append(sorted({m.step for m in metrics}))
        return original(self, run_id, metrics, *args, **kwargs)

    monkeypatch.setattr(mlflow.MlflowClient, "log_batch", counting)
    cfg = TrainConfig(epochs=EPOCHS, batch_size=16, lr=1e-2, warmup_epochs=1, monitor="mean/macro_f1",
                      device="cpu", seed=3, patience=10)  # fmt: skip
    seed_everything(cfg.seed)
    with tracked_run(experiment=f"test-batch-{uuid.uuid4().hex[:8]}", run_name="batched", stage="train@test",
                     variant="tiny", seed=cfg.seed, data_digest="d", params={}, system_metrics=False) as run:  # fmt: skip
        result = fit(TinyModel(), SyntheticMemes(64, seed=1), SyntheticMemes(32, seed=2), SPECS, cfg, tmp_path,
                     callbacks=[MlflowCallback(log_artifacts=False, flush_every_s=3600.0)])  # fmt: skip
    # epoch 1 alone, epochs 2..4 together at fit end, then the summary (at step epochs_run)
    assert calls == [[1], [2, 3, 4], [result.epochs_run]], calls
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == list(range(1, EPOCHS + 1))
