"""Stage ``train_detector``: the object detector MGMCF's region views come from.

Default: a small random-init YOLO (ultralytics, offline) trained on SynthMeme's YOLO-format boxes,
train split to fit, val split for ultralytics' model selection; then scored ONCE on test (mAP50 /
mAP50-95 over all classes and the 16 key classes, key-object recall@k). With ``detector.train:
false`` and ``detector.weights`` (or backend torchvision / grid) the weights are packaged as they
are. Writes models/detector/ (weights + detector_config.json), reports/metrics/detector.json and
reports/plots/detector.csv; one MLflow run (ultralytics' own MLflow logging is off).
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

from memeops.config import load_params
from memeops.tracking.runs import log_metrics, tracked_run
from memeops.training.experiment import TrainStageConfig
from memeops.vision.train import (
    DetectorStageConfig,
    build_detector,
    data_digest,
    evaluate_detector,
    evaluation_detector,
)  # fmt: skip
from memeops.vision.yolo import read_class_names
from stages import run_stage

METRICS, PLOTS = Path("reports/metrics/detector.json"), Path("reports/plots/detector.csv")
PLOT_COLUMNS = ("epoch", "time", "train_box_loss", "train_cls_loss", "train_dfl_loss", "val_precision",
                "val_recall", "val_map50", "val_map50_95")  # fmt: skip


def detector_data_dir(params: Any, cfg: DetectorStageConfig) -> Path | None:
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


def main() -> int:
    start = time.perf_counter()
    params = load_params()
    cfg = params.section("detector", DetectorStageConfig)
    data_dir = detector_data_dir(params, cfg)
    experiment = params.section("train", TrainStageConfig).experiment
    logged = {"detector": cfg.model_dump(mode="json"), "data_dir": str(data_dir)}
    with tracked_run(experiment=experiment, run_name="train_detector", stage="train_detector", variant=None,
                     seed=cfg.yolo.seed, data_digest=data_digest(data_dir), params=logged):  # fmt: skip
        build = build_detector(cfg, data_dir)
        for row in build.history:
            log_metrics(
                {k: v for k, v in row.items() if k != "epoch"}, prefix="epoch", step=int(row.get("epoch", 0))
            )
        metrics: dict[str, Any] = {"backend": cfg.backend, "trained": build.trained,
                                   "build_seconds": round(build.seconds, 2), **build.info}  # fmt: skip
        has_split = data_dir is not None and (data_dir / f"{cfg.eval.split}.jsonl").is_file()
        if has_split:
            names = read_class_names(data_dir) if (data_dir / "classes.json").is_file() else None
            metrics["test"] = evaluate_detector(
                evaluation_detector(cfg.output_dir, cfg.eval), data_dir, cfg.eval, names
            )
        metrics["seconds"] = round(time.perf_counter() - start, 2)
        log_metrics({k: v for k, v in metrics.items() if k != "test"})
        if "test" in metrics:
            log_metrics({k: v for k, v in metrics["test"].items() if k != "ap50_per_class"}, prefix="test")
        METRICS.parent.mkdir(parents=True, exist_ok=True)
        METRICS.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        write_plots(build.history, PLOTS)
        import mlflow

        mlflow.log_artifacts(cfg.output_dir, artifact_path="detector")
        mlflow.log_artifact(str(METRICS), artifact_path="metrics")
        mlflow.log_artifact(str(PLOTS), artifact_path="metrics")
    test = metrics.get("test", {})
    nan = float("nan")
    how = "trained" if build.trained else "packaged"
    print(f"train_detector: {cfg.backend} ({how}) in {metrics['seconds']:.0f} s; test mAP50 "
          f"{test.get('map50', nan):.3f} (key {test.get('key_map50', nan):.3f}), key recall@4 "
          f"{test.get('key_recall', {}).get('at_4', nan):.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage("train_detector", main))
