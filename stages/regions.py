"""Stage ``regions``: detect once per meme image, materialise every region view of ``regions.views``.

Writes data/regions/detections.parquet, data/regions/views/<name>/ (sharded crops + boxes, read with
memeops.vision.regions.RegionStore) and reports/metrics/regions.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from memeops.config import load_params
from memeops.data.consolidate import read_memes
from memeops.vision.detector_dir import load_detector_dir
from memeops.vision.extract import RegionsConfig, extract_regions, summarise
from stages import run_stage

METRICS = Path("reports/metrics/regions.json")


def main() -> int:
    params = load_params()
    cfg = params.section("regions", RegionsConfig)
    memes = read_memes(Path(params.data.output_dir) / "memes.parquet")
    needs_detector = any(view.source == "detector" for view in cfg.views.values())
    detector = (
        load_detector_dir(cfg.detector_dir) if needs_detector or Path(cfg.detector_dir).is_dir() else None
    )
    metrics = extract_regions(memes, detector, cfg)
    METRICS.parent.mkdir(parents=True, exist_ok=True)
    METRICS.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    print(summarise(metrics))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage("regions", main))
