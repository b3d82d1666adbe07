"""Stage ``regions``: detect once per meme image, materialise every region view of ``regions.views``.

Writes data/regions/detections.parquet, data/regions/views/<name>/ (sharded crops + boxes, read with
memeops.vision.regions.RegionStore) and reports/metrics/regions.json.
"""

from __future__ import annotations

from pathlib import Path

from memeops.stage_context import StageContext
from memeops.vision.detector_dir import load_detector_dir
from memeops.vision.extract import RegionsConfig, extract_regions, summarise
from stages import run_stage


def main() -> int:
    ctx = StageContext()
    cfg = ctx.section("regions", RegionsConfig)
    memes = ctx.memes()
    needs_detector = any(view.source == "detector" for view in cfg.views.values())
    detector = (
        load_detector_dir(cfg.detector_dir) if needs_detector or Path(cfg.detector_dir).is_dir() else None
    )
    metrics = extract_regions(memes, detector, cfg)
    ctx.write_metrics("regions", metrics)
    print(summarise(metrics))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage("regions", main))
