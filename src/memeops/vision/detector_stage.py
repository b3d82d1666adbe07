"""Stage ``train_detector``'s work: build the detector, score it once on test, log and write it.

:func:`memeops.vision.train.build_detector` trains (or packages) the detector into
``detector.output_dir``; this module finds its data, logs the epochs and the test scores to the
active MLflow run, writes the per-epoch plot CSV and logs the detector folder as artifacts.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

from memeops.config import Params
from memeops.tracking.runs import log_metrics
from memeops.vision.train import DetectorBuild, DetectorStageConfig, build_detector, evaluate_detector
from memeops.vision.train import evaluation_detector
from memeops.vision.yolo import read_class_names

#: The per-epoch plot's columns: no ``time`` (wall clock; the plot is a DVC out and must repeat; the
#: epoch rows logged to the MLflow run keep it).
PLOT_COLUMNS = ("epoch", "train_box_loss", "train_cls_loss", "train_dfl_loss", "val_precision",
                "val_recall", "val_map50", "val_map50_95")  # fmt: skip


def detector_data_dir(params: Params, cfg: DetectorStageConfig) -> Path | None:
    """``detector.data``, else the first ``synthmeme`` source in ``data.sources``, else None."""
    if cfg.data:
        return Path(cfg.data)
    for source in params.data.sources:
        if source.format == "synthmeme":
            return Path(source.path)
    return None


def write_plots(history: list[dict[str, float]], path: Path) -> None:
    """Per-epoch rows (ultralytics' results.csv, renamed) for ``dvc plots``; header only when not trained."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(PLOT_COLUMNS)
        for row in history:
            writer.writerow(
                [int(row["epoch"]) if c == "epoch" and c in row else row.get(c, "") for c in PLOT_COLUMNS]
            )


def build_and_score(cfg: DetectorStageConfig, data_dir: Path | None, start: float) -> tuple[DetectorBuild, dict[str, Any]]:
    """Build the detector, score it once on ``detector.eval.split`` when the data has that split, log
    the epochs and the metrics to the active run; returns the build and the stage's metrics (the
    seconds counted from ``start``, a ``time.perf_counter`` value)."""
    build = build_detector(cfg, data_dir)
    for row in build.history:
        log_metrics({k: v for k, v in row.items() if k != "epoch"}, prefix="epoch", step=int(row.get("epoch", 0)))
    metrics: dict[str, Any] = {"backend": cfg.backend, "trained": build.trained,
                               "build_seconds": round(build.seconds, 2), **build.info}  # fmt: skip
    if data_dir is not None and (data_dir / f"{cfg.eval.split}.jsonl").is_file():
        names = read_class_names(data_dir) if (data_dir / "classes.json").is_file() else None
        metrics["test"] = evaluate_detector(evaluation_detector(cfg.output_dir, cfg.eval), data_dir, cfg.eval, names)
    metrics["seconds"] = round(time.perf_counter() - start, 2)
    log_metrics({k: v for k, v in metrics.items() if k != "test"})
    if "test" in metrics:
        log_metrics({k: v for k, v in metrics["test"].items() if k != "ap50_per_class"}, prefix="test")
    return build, metrics


def log_outputs(cfg: DetectorStageConfig, history: list[dict[str, float]], metrics_path: Path, plots_path: Path) -> None:
    """Write the plot CSV; log the detector folder, the metrics file and the plot CSV to the active run."""
    write_plots(history, plots_path)
    import mlflow  # heavy: only once the run is open

    mlflow.log_artifacts(cfg.output_dir, artifact_path="detector")
    mlflow.log_artifact(str(metrics_path), artifact_path="metrics")
    mlflow.log_artifact(str(plots_path), artifact_path="metrics")


def summary_line(cfg: DetectorStageConfig, build: DetectorBuild, metrics: dict[str, Any]) -> str:
    """The stage's last line: how the detector was made and its test mAP50 / key recall@4."""
    test, nan = metrics.get("test", {}), float("nan")
    how = "trained" if build.trained else "packaged"
    return (f"train_detector: {cfg.backend} ({how}) in {metrics['seconds']:.0f} s; test mAP50 "
            f"{test.get('map50', nan):.3f} (key {test.get('key_map50', nan):.3f}), key recall@4 "
            f"{test.get('key_recall', {}).get('at_4', nan):.3f}")  # fmt: skip
