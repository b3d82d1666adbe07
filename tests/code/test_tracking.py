"""MLflow tracking layer: flattened params, lineage tags, system metrics, datasets, the trainer
callback and the diagnostic plots, against the per-session sqlite store set up by conftest."""

from __future__ import annotations

import csv
import math
import re
import subprocess
import time
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import BaseModel
from torch import nn

from memeops.evaluation.metrics import Predictions
from memeops.models.base import IGNORE_INDEX, MISSING_MULTI, ModelOutput, MultiTaskHeads, TaskSpec
from memeops.tracking.plots import (
    evaluation_plots,
    plot_confusion_matrix,
    plot_roc_curve,
    plot_training_curve,
    write_history_csv,
)
from memeops.tracking.runs import (
    MAX_PARAM_VALUE_LENGTH,
    MlflowCallback,
    fail_runs,
    flatten_metrics,
    flatten_params,
    git_commit,
    log_dataset,
    log_metrics,
    metric_name,
    open_run,
    tracked_run,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SPECS = [
    TaskSpec("hateful", "single", ("no", "yes")),
    TaskSpec("sentiment", "single", ("negative", "neutral", "positive")),
    TaskSpec("target", "multi", ("a", "b", "c")),
]


def _experiment() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def _run_kwargs(**overrides) -> dict:
    base = {
        "experiment": _experiment(),
        "run_name": "r",
        "stage": "train_gatedclip",
        "variant": "gatedclip",
        "seed": 3,
        "data_digest": "d1g3st",
        "params": {},
        "system_metrics": False,
    }
    return {**base, **overrides}


# --------------------------------------------------------------------------- helpers


class _Inner(BaseModel):
    lr: float = 1e-3
    layers: list[int] = [1, 2]


def test_flatten_params_nested_pydantic_lists_and_limits() -> None:
    flat = flatten_params(
        {
            "train": _Inner(),
            "model": {"name": "gatedclip", "gate": {"hidden": 64}},
            "empty": {},
            "none": None,
            "long": "x" * 7000,
        }
    )
    assert flat["train.lr"] == "0.001" and flat["train.layers"] == "[1, 2]"
    assert flat["model.name"] == "gatedclip" and flat["model.gate.hidden"] == "64"
    assert flat["empty"] == "{}" and flat["none"] == "None"
    assert len(flat["long"]) == MAX_PARAM_VALUE_LENGTH
    assert all(isinstance(v, str) for v in flat.values())
    assert flatten_params({"k" * 300: 1}).popitem()[0] == "k" * 250
    assert flatten_params({"a@b": {"c:d": 1}}) == {"a_b.c_d": "1"}


def test_metric_names_and_flatten_metrics() -> None:
    assert metric_name("val/hateful/auroc") == "val/hateful/auroc"
    assert metric_name("val//a:b@c/") == "val/a_b_c"
    assert metric_name("./x/../y") == "_/x/_/y"
    flat = flatten_metrics(
        {
            "test": {"hateful": {"auroc": np.float32(0.5), "n": 10}, "note": "skip me"},
            "nan": math.nan,
            "flag": True,
            "arr": np.zeros(3),
            "t": torch.tensor(2.0),
        }
    )
    assert flat == {
        "test/hateful/auroc": 0.5,
        "test/hateful/n": 10.0,
        "nan": pytest.approx(math.nan, nan_ok=True),
        "flag": 1.0,
        "t": 2.0,
    }


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True, capture_output=True
    )


def test_git_commit_clean_dirty_and_not_a_repo(tmp_path: Path, repo_root: Path) -> None:
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", git_commit(repo_root))
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    assert git_commit(repo) == "unknown"  # no commit yet
    (repo / "a.txt").write_text("1")
    _git(repo, "add", "a.txt")
    _git(repo, "commit", "-q", "-m", "one")
    sha = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout
    assert git_commit(repo) == sha.strip()
    (repo / "a.txt").write_text("2")
    assert git_commit(repo) == sha.strip() + "+dirty"
    plain = tmp_path / "plain"
    plain.mkdir()
    assert git_commit(plain) == "unknown"
    assert git_commit(tmp_path / "does-not-exist") == "unknown"


# --------------------------------------------------------------------------- runs


def test_tracked_run_logs_tags_params_and_keeps_artifacts_next_to_db(state_dir: Path) -> None:
    params = {"train": {"lr": 0.01, "epochs": 3}, "model": {"name": "gatedclip"}}
    kwargs = _run_kwargs(params=params, extra_tags={"memeops.note": "hi"})
    with tracked_run(**kwargs) as run:
        run_id = run.info.run_id
        logged = log_metrics({"test": {"hateful": {"auroc": 0.75}}, "label": "text"})
    assert logged == {"test/hateful/auroc": 0.75}
    got = mlflow.MlflowClient().get_run(run_id)
    assert got.info.status == "FINISHED" and got.info.run_name == "r"
    assert got.data.params == {"train.lr": "0.01", "train.epochs": "3", "model.name": "gatedclip"}
    tags = got.data.tags
    assert tags["memeops.dvc_stage"] == "train_gatedclip" and tags["memeops.data_digest"] == "d1g3st"
    assert tags["memeops.variant"] == "gatedclip" and tags["memeops.seed"] == "3"
    assert tags["memeops.note"] == "hi"
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?|unknown", tags["memeops.git_commit"])
    assert got.data.metrics == {"test/hateful/auroc": 0.75}
    artifacts = Path(got.info.artifact_uri.removeprefix("file://"))
    assert artifacts.is_relative_to(state_dir.resolve()), artifacts  # not ./mlruns in the cwd


def test_tracked_run_marks_failure_and_leaves_out_none_tags() -> None:
    with (
        pytest.raises(RuntimeError, match="boom"),
        tracked_run(**_run_kwargs(variant=None, seed=None)) as run,
    ):
        raise RuntimeError("boom")
    got = mlflow.MlflowClient().get_run(run.info.run_id)
    assert got.info.status == "FAILED"
    assert "memeops.variant" not in got.data.tags and "memeops.seed" not in got.data.tags
    assert mlflow.active_run() is None


def test_opened_run_is_resumed_and_ended_with_its_tags_params_and_children() -> None:
    """open_run: a RUNNING run, not active, that runs of other processes can nest under; tracked_run
    (run_id=...) resumes and ends it; fail_runs ends the ones never resumed, and only those."""
    kwargs = _run_kwargs(params={"train": {"lr": 0.01}}, seed=None)
    opened = open_run(**{k: v for k, v in kwargs.items() if k != "system_metrics"})
    never = open_run(**{k: v for k, v in kwargs.items() if k != "system_metrics"})
    client = mlflow.MlflowClient()
    assert mlflow.active_run() is None and client.get_run(opened).info.status == "RUNNING"
    with tracked_run(**_run_kwargs(seed=3, run_name="child"), parent_run_id=opened) as child:
        pass
    with tracked_run(**kwargs, run_id=opened) as run:
        assert run.info.run_id == opened
        log_metrics({"test": {"acc": 0.5}})
    fail_runs([opened, never])
    got = client.get_run(opened)
    assert got.info.status == "FINISHED" and got.info.run_name == "r" and got.data.metrics == {"test/acc": 0.5}
    assert got.data.params == {"train.lr": "0.01"} and got.data.tags["memeops.dvc_stage"] == "train_gatedclip"
    assert "mlflow.user" in got.data.tags and "memeops.seed" not in got.data.tags
    assert client.get_run(child.info.run_id).data.tags["mlflow.parentRunId"] == opened
    assert client.get_run(never).info.status == "FAILED"


def test_system_metrics_are_sampled_in_a_short_run() -> None:
    with tracked_run(**_run_kwargs(system_metrics=True, system_metrics_interval=0.2)) as run:
        time.sleep(0.8)
    metrics = mlflow.MlflowClient().get_run(run.info.run_id).data.metrics
    assert any(k.startswith("system/cpu_utilization") for k in metrics), sorted(metrics)
    assert "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL" not in __import__("os").environ


def test_log_dataset_records_digest_and_light_columns() -> None:
    df = pd.DataFrame(
        {
            "meme_id": ["a:1", "a:2"],
            "split": ["train", "train"],
            "language": ["en", "zh"],
            "text": ["hi", "你好"],
            "label_hateful": ["no", None],
            "label_target": [["a", "b"], []],
            "image_path": ["x.png", "y.png"],
        }
    )
    with tracked_run(**_run_kwargs()) as run:
        log_dataset(df, name="memes-train", digest="abc123", context="train")
    inputs = mlflow.MlflowClient().get_run(run.info.run_id).inputs.dataset_inputs
    assert len(inputs) == 1
    ds = inputs[0].dataset
    assert (ds.name, ds.digest) == ("memes-train", "abc123")
    assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == "train"
    assert "image_path" not in ds.schema and "label_target" in ds.schema and "meme_id" in ds.schema


# --------------------------------------------------------------------------- trainer callback


class _Toy(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 6, generator=g)
        self.y = (self.x[:, 0] > 0).long()
        self.y[:3] = IGNORE_INDEX
        self.s = self.x[:, 1:4].argmax(1)
        self.t = (self.x[:, 3:6] > 0).float()
        self.t[-2:] = MISSING_MULTI

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {
            "x": self.x[i],
            "targets": {"hateful": self.y[i], "sentiment": self.s[i], "target": self.t[i]},
        }


class _ToyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
        self.heads = MultiTaskHeads(8, SPECS)

    def forward(self, batch: dict) -> ModelOutput:
        return ModelOutput(logits=self.heads(self.trunk(batch["x"])))


@pytest.fixture
def _torch_globals():
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


@pytest.mark.usefixtures("_torch_globals")
def test_callback_logs_every_epoch_metric_and_history_artifacts(tmp_path: Path) -> None:
    from memeops.training import TrainConfig, fit

    cfg = TrainConfig(
        epochs=3, batch_size=16, lr=1e-2, warmup_epochs=0, monitor="mean/macro_f1", device="cpu"
    )
    with tracked_run(**_run_kwargs()) as run:
        result = fit(
            _ToyModel(), _Toy(48, 1), _Toy(24, 2), SPECS, cfg, tmp_path, callbacks=[MlflowCallback()]
        )
    client = mlflow.MlflowClient()
    run_id = run.info.run_id
    for key in ("train/loss", "val/hateful/auroc", "val/mean/macro_f1", "val/target/micro_f1", "train/lr"):
        history = client.get_metric_history(run_id, key)
        assert [m.step for m in history] == [1, 2, 3], key
        assert [m.value for m in history] == pytest.approx([rec[key] for rec in result.history], nan_ok=True)
    metrics = client.get_run(run_id).data.metrics
    assert metrics["best/epoch"] == result.best_epoch
    assert metrics["best/val/mean/macro_f1"] == pytest.approx(result.best_value)
    names = {a.path for a in client.list_artifacts(run_id, "training")}
    assert names == {"training/history.csv", "training/training_curve.png"}


def test_callback_replays_history_on_resume() -> None:
    history = [{"epoch": 1, "train/loss": 1.0, "val/x": 0.1}, {"epoch": 2, "train/loss": 0.5, "val/x": 0.2}]
    with tracked_run(**_run_kwargs()) as run:
        callback = MlflowCallback(log_artifacts=False)
        callback.on_fit_start(2, history)
        callback.on_epoch_end(3, {"train/loss": 0.25, "val/x": 0.3, "note": "not numeric"})  # type: ignore[dict-item]
        callback.flush()  # epoch points are logged asynchronously (on_fit_end flushes in a real fit)
    client = mlflow.MlflowClient()
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss")] == [
        (1, 1.0),
        (2, 0.5),
        (3, 0.25),
    ]
    assert client.get_run(run.info.run_id).data.tags["memeops.resumed_from"] == "2"


def test_callback_without_run_fails_clearly() -> None:
    with pytest.raises(RuntimeError, match="no active MLflow run"):
        MlflowCallback().on_epoch_end(1, {"train/loss": 1.0})


# --------------------------------------------------------------------------- plots


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def test_plots_write_pngs_and_history_csv(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    probs2 = rng.dirichlet([1, 1], size=40)
    y2 = rng.integers(0, 2, size=40)
    y2[:5] = IGNORE_INDEX
    probs3 = rng.dirichlet([1, 1, 1], size=40)
    y3 = rng.integers(0, 3, size=40)
    start = time.perf_counter()
    assert _is_png(plot_confusion_matrix(probs3, y3, SPECS[1], tmp_path / "cm.png"))
    assert _is_png(plot_confusion_matrix(probs3, y3, SPECS[1], tmp_path / "cmn.png", normalize=True))
    assert _is_png(plot_roc_curve(probs2, y2, SPECS[0], tmp_path / "roc.png"))
    assert _is_png(plot_roc_curve(probs2, np.zeros(40, int), SPECS[0], tmp_path / "roc1.png"))  # one class
    history = [
        {"epoch": e, "train/loss": 1 / e, "val/hateful/auroc": 0.5 + e / 10, "train/lr": 0.1}
        for e in (1, 2, 3)
    ]
    assert _is_png(plot_training_curve(history, "hateful/auroc", tmp_path / "curve.png"))
    written = evaluation_plots(
        Predictions(probs={"hateful": probs2, "sentiment": probs3}, targets={"hateful": y2, "sentiment": y3}),
        SPECS,
        tmp_path / "eval",
    )
    assert sorted(p.name for p in written) == [
        "confusion_hateful.png",
        "confusion_sentiment.png",
        "roc_hateful.png",
    ]
    assert all(_is_png(p) for p in written)
    assert time.perf_counter() - start < 15
    with pytest.raises(ValueError, match="binary"):
        plot_roc_curve(probs3, y3, SPECS[1], tmp_path / "x.png")
    with pytest.raises(ValueError, match="single-label"):
        plot_confusion_matrix(probs3, y3, SPECS[2], tmp_path / "x.png")
    rows = list(csv.DictReader(write_history_csv(history, tmp_path / "h" / "history.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"] and float(rows[1]["train/loss"]) == 0.5
