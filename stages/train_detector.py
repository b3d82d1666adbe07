"""Stage ``train_detector``: the object detector MGMCF's region views come from.

Default: a small random-init YOLO (ultralytics, offline) trained on SynthMeme's YOLO-format boxes,
train split to fit, val split for ultralytics' model selection; then scored ONCE on test (mAP50 /
mAP50-95 over all classes and the 16 key classes, key-object recall@k). With ``detector.train:
false`` and ``detector.weights`` (or backend torchvision / grid) the weights are packaged as they
are. Writes models/detector/ (weights + detector_config.json), reports/metrics/detector.json and
reports/plots/detector.csv; one MLflow run (ultralytics' own MLflow logging is off). The work:
memeops.vision.train and memeops.vision.detector_stage.
"""

from __future__ import annotations

import time
from pathlib import Path

from memeops.stage_context import StageContext
from memeops.vision.detector_stage import build_and_score, detector_data_dir, log_outputs, summary_line
from memeops.vision.train import DetectorStageConfig, data_digest
from stages import run_stage

PLOTS = Path("reports/plots/detector.csv")


def main() -> int:
    start = time.perf_counter()
    ctx = StageContext()
    cfg = ctx.section("detector", DetectorStageConfig)
    data_dir = detector_data_dir(ctx.params, cfg)
    logged = {"detector": cfg.model_dump(mode="json"), "data_dir": str(data_dir)}
    with ctx.tracked_run("train_detector", seed=cfg.yolo.seed, params=logged, data_digest=data_digest(data_dir)):
        build, metrics = build_and_score(cfg, data_dir, start)
        log_outputs(cfg, build.history, ctx.write_metrics("detector", metrics), PLOTS)
    print(summary_line(cfg, build, metrics))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage("train_detector", main))
