"""The trainer on a tiny synthetic multi-task problem: learning, schedule, early stopping, best
weights, determinism, crash-safe checkpoints, and kill-and-resume with a real process."""

from __future__ import annotations

import inspect
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # the shared helper, whatever pytest's import mode
from _resume_script import SPECS, SyntheticMemes, TinyModel

from memeops.training import (
    TrainConfig,
    fit,
    lr_factor,
    predict,
    resolve_amp,
    seed_everything,
    strip_timing,
    weights_hash,
)
from memeops.training import checkpoint as ckpt
from memeops.training.optim import make_scheduler

pytestmark = pytest.mark.usefixtures("torch_globals")  # conftest: deterministic mode and threads restored

RESUME_SCRIPT = Path(__file__).with_name("_resume_script.py")
SLEEP = 0.4  # seconds per epoch in the victim, so the kill lands mid-run
TRAIN = SyntheticMemes(64, seed=1)
VAL = SyntheticMemes(32, seed=2)


def config(**overrides) -> TrainConfig:
    base = dict(epochs=4, batch_size=16, lr=1e-2, warmup_epochs=1, patience=10, monitor="mean/macro_f1")
    base["seed"] = 5
    return TrainConfig(**{**base, **overrides})


def new_model(cfg: TrainConfig) -> TinyModel:
    seed_everything(cfg.seed)
    return TinyModel()


def run_fit(cfg: TrainConfig, run_dir: Path, **kwargs):
    model = new_model(cfg)
    return model, fit(model, TRAIN, VAL, SPECS, cfg, run_dir, **kwargs)


def summary(model, result) -> dict:
    return {
        "history": strip_timing(result.history),
        "best_value": result.best_value,
        "best_epoch": result.best_epoch,
        "weights": weights_hash(model),
    }


def same(a: dict, b: dict) -> bool:
    """Equality that treats NaN == NaN (JSON round trip keeps NaN)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


# --------------------------------------------------------------------------- learning


def test_loss_decreases_and_model_learns(tmp_path: Path) -> None:
    cfg = config(epochs=10, lr=3e-2, monitor="hateful/auroc")
    model, result = run_fit(cfg, tmp_path)
    losses = [rec["train/loss"] for rec in result.history]
    assert losses[-1] < 0.6 * losses[0]
    assert result.history[-1]["val/loss"] < result.history[0]["val/loss"]
    assert result.best_value > 0.8
    assert result.best_value == max(r["val/hateful/auroc"] for r in result.history)
    assert result.epochs_run == 10 and not result.stopped_early and result.resumed_from is None
    assert result.device == "cpu" and result.amp == "off" and result.train_samples_per_s > 0
    rec = result.history[0]
    expected_keys = {
        "train/loss", "train/lr", "train/epoch_seconds", "train/samples_per_s", "val/loss",
        "val/hateful/auroc", "val/sentiment/macro_f1", "val/target/micro_f1", "val/mean/macro_f1",
    }  # fmt: skip
    assert expected_keys <= set(rec)
    files = {p.name for p in (tmp_path / "checkpoints").iterdir()}
    assert files == {"last.safetensors", "best.safetensors", "optim.pt", "rng.pt", "state.json"}


def test_early_stopping_triggers_after_patience(tmp_path: Path) -> None:
    # lr = 0: weights never change, so the monitored metric never improves after epoch 1.
    _, result = run_fit(config(epochs=10, lr=0.0, patience=2), tmp_path)
    assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 1
    assert len(result.history) == 3


def test_warmup_cosine_schedule_values() -> None:
    # 4 warm-up steps of 16: linear (s+1)/4, then cosine from 1 to 0.
    assert [lr_factor(s, 4, 16) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 4, 16) == 1.0
    assert lr_factor(10, 4, 16) == pytest.approx(0.5)  # half-way through the cosine
    assert lr_factor(16, 4, 16) == pytest.approx(0.0)
    assert lr_factor(0, 0, 10) == 1.0  # no warm-up
    cfg = config(epochs=4, warmup_epochs=1, lr=0.1)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = make_scheduler(opt, cfg, steps_per_epoch=4)
    seen = []
    for _ in range(16):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.1 * lr_factor(s, 4, 16) for s in range(16)])


def test_history_lr_follows_schedule(tmp_path: Path) -> None:
    # 64 samples / batch 16 = 4 steps per epoch; history lr = lr of each epoch's last step.
    _, result = run_fit(config(epochs=4, warmup_epochs=1, lr=0.01), tmp_path)
    expected = [0.01 * lr_factor(4 * e - 1, 4, 16) for e in (1, 2, 3, 4)]
    assert [r["train/lr"] for r in result.history] == pytest.approx(expected)
    assert expected[1] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi / 4)))


def test_best_weights_are_restored(tmp_path: Path) -> None:
    # Monitoring val loss in "max" mode makes an early epoch the best, so best != last.
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    cfg = config(epochs=5, monitor="loss", monitor_mode="max")
    model = new_model(cfg)

    class Snapshot:
        def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
            snapshots[epoch] = {k: v.clone() for k, v in model.state_dict().items()}

    result = fit(model, TRAIN, VAL, SPECS, cfg, tmp_path, callbacks=[Snapshot()])
    losses = [r["val/loss"] for r in result.history]
    assert result.best_epoch == int(np.argmax(losses)) + 1 < result.epochs_run
    final = model.state_dict()
    assert all(torch.equal(final[k], snapshots[result.best_epoch][k]) for k in final)
    assert not all(torch.equal(final[k], snapshots[result.epochs_run][k]) for k in final)


def test_fit_never_sees_a_test_split() -> None:
    params = inspect.signature(fit).parameters
    assert list(params)[:3] == ["model", "train_set", "val_set"]
    assert not any("test" in name for name in params)


def test_callbacks_receive_epochs_and_result(tmp_path: Path) -> None:
    events: list[tuple] = []

    class Recorder:
        def on_fit_start(self, resumed_from, history) -> None:
            events.append(("start", resumed_from, len(history)))

        def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
            events.append(("epoch", epoch, metrics["val/mean/macro_f1"]))

        def on_fit_end(self, result) -> None:
            events.append(("end", result.best_epoch))

    _, result = run_fit(config(epochs=2), tmp_path, callbacks=[Recorder()])
    assert [e[0] for e in events] == ["start", "epoch", "epoch", "end"]
    assert events[1][1:] == (1, result.history[0]["val/mean/macro_f1"])


def test_predict_returns_aligned_arrays(tmp_path: Path) -> None:
    model, _ = run_fit(config(epochs=1), tmp_path)
    preds = predict(model, VAL, SPECS, batch_size=10, device="cpu")
    assert preds.probs["hateful"].shape == (32, 2) and preds.probs["target"].shape == (32, 4)
    np.testing.assert_allclose(preds.probs["sentiment"].sum(1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(preds.targets["hateful"], VAL.hateful.numpy())
    assert preds.meme_ids == [f"m{i:04d}" for i in range(32)]
    assert preds.extras["gate"].shape == (32,)
    rng_before = torch.get_rng_state()
    predict(model, VAL, SPECS, batch_size=10, device="cpu")
    assert torch.equal(rng_before, torch.get_rng_state())  # scoring never perturbs training RNG


def test_config_is_strict_and_amp_resolves_on_cpu() -> None:
    with pytest.raises(ValueError):
        TrainConfig(epochs=3, bogus=1)
    with pytest.raises(ValueError):
        TrainConfig(epochs=1, warmup_epochs=2)
    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu) == "off" and resolve_amp("bf16", cpu) == "bf16"
    with pytest.raises(ValueError):
        resolve_amp("fp16", cpu)


# --------------------------------------------------------------------------- determinism & resume


def test_same_seed_same_history_and_weights(tmp_path: Path) -> None:
    cfg = config(epochs=3)
    a = summary(*run_fit(cfg, tmp_path / "a"))
    b = summary(*run_fit(cfg, tmp_path / "b"))
    assert same(a, b)
    c = summary(*run_fit(config(epochs=3, seed=6), tmp_path / "c"))
    assert c["weights"] != a["weights"]


def test_num_workers_do_not_change_results(tmp_path: Path) -> None:
    """num_workers is resume-neutral (not in the config hash), so it must not alter the maths."""
    a = summary(*run_fit(config(epochs=2, num_workers=0), tmp_path / "w0"))
    b = summary(*run_fit(config(epochs=2, num_workers=2), tmp_path / "w2"))
    assert same(a, b)


class Crash(Exception):
    pass


@pytest.mark.parametrize("phase", ["before_commit", "after_commit"])
def test_crash_inside_checkpoint_write_resumes_exactly(tmp_path: Path, monkeypatch, phase: str) -> None:
    """A crash while epoch 3's checkpoint is half written: before the state.json commit the run
    resumes after epoch 2 (pending files discarded); after it, after epoch 3 (renames finished)."""
    cfg = config(epochs=5, checkpoint_every_s=0)  # a checkpoint after every epoch
    reference = summary(*run_fit(cfg, tmp_path / "ref"))

    with monkeypatch.context() as patch:
        if phase == "before_commit":
            real = ckpt.atomic_write_json

            def write(path, obj):
                if obj.get("epoch") == 3:
                    raise Crash
                real(path, obj)

            patch.setattr(ckpt, "atomic_write_json", write)
        else:
            real_promote = ckpt._promote

            def promote(directory, epoch):
                if epoch == 3:
                    pending = directory / ckpt._pending_name(ckpt.OPTIM_FILE, 3)
                    os.replace(pending, directory / ckpt.OPTIM_FILE)
                    raise Crash  # one file renamed, the rest still pending
                real_promote(directory, epoch)

            patch.setattr(ckpt, "_promote", promote)
        with pytest.raises(Crash):
            run_fit(cfg, tmp_path / "run")
    assert any(p.name.endswith(".pending") for p in (tmp_path / "run" / "checkpoints").iterdir())

    model, result = run_fit(cfg, tmp_path / "run")
    assert result.resumed_from == (2 if phase == "before_commit" else 3)
    assert same(summary(model, result), reference)
    assert not any(p.name.endswith(".pending") for p in (tmp_path / "run" / "checkpoints").iterdir())


def test_finished_run_resumes_to_same_result_and_mismatch_starts_fresh(tmp_path: Path) -> None:
    cfg = config(epochs=2)
    first = summary(*run_fit(cfg, tmp_path))
    model, again = run_fit(cfg, tmp_path)
    assert again.resumed_from == 2 and same(summary(model, again), first)
    _, other = run_fit(config(epochs=2, lr=5e-3), tmp_path)
    assert other.resumed_from is None
    _, fresh = run_fit(cfg, tmp_path, resume=False)
    assert fresh.resumed_from is None


def _start(run_dir: Path, env: dict[str, str], sleep: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(RESUME_SCRIPT), str(run_dir), "--epochs", "6", "--sleep", str(sleep)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=RESUME_SCRIPT.parent,
    )  # fmt: skip


def _final_json(proc: subprocess.Popen, timeout: float = 60) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def _committed_epoch(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "checkpoints" / "state.json").read_text())["epoch"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def test_sigkill_and_restart_matches_uninterrupted_run(tmp_path: Path, subprocess_env: dict) -> None:
    """SIGKILL a real training process after >= 2 committed epochs, restart it with the same
    arguments, and compare with an uninterrupted process: best value, history, weights."""
    victim_dir, reference_dir = tmp_path / "victim", tmp_path / "reference"
    victim = _start(victim_dir, subprocess_env, sleep=SLEEP)
    reference = _start(reference_dir, subprocess_env, sleep=0.0)  # runs alongside to save time
    try:
        deadline = time.monotonic() + 60
        while _committed_epoch(victim_dir) < 2:
            assert victim.poll() is None, victim.communicate()[1]
            assert time.monotonic() < deadline, "victim never reached epoch 2"
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == -signal.SIGKILL
    killed_at = _committed_epoch(victim_dir)
    assert 2 <= killed_at < 6

    resumed = _final_json(_start(victim_dir, subprocess_env, sleep=SLEEP))
    expected = _final_json(reference)
    assert resumed["resumed_from"] == killed_at and expected["resumed_from"] is None
    assert resumed["epochs_run"] == expected["epochs_run"] == 6
    for key in ("best_value", "best_epoch", "history", "weights_hash"):
        assert json.dumps(resumed[key]) == json.dumps(expected[key]), key
