"""Stage ``region_features``: encode every region view's crops with the frozen region CNN.

For each view in ``region_features.views`` (materialised by stage ``regions``) every crop and its
mirror image are encoded patch by patch (:mod:`memeops.models.region_cnn`) into
``<cache_dir>/<cnn spec_key>/<view>.safetensors``; MGMCF trains on these.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from memeops.config import load_params
from memeops.data.mgmcf_inputs import RegionFeaturesConfig, encode_regions, region_features_path, save_region_features
from memeops.models.clip import ClipEncoderConfig, load_clip, resolve_encoder_config
from memeops.models.region_cnn import build_region_cnn
from memeops.threads import torch_threads
from memeops.vision.extract import VIEWS_DIR, RegionsConfig
from memeops.vision.regions import RegionStore
from stages import run_stage


def main() -> int:
    params = load_params()
    cfg = params.section("region_features", RegionFeaturesConfig)
    regions_cfg = params.section("regions", RegionsConfig)
    clip = load_clip(resolve_encoder_config(params.section("encoders.clip", ClipEncoderConfig)))
    cnn = build_region_cnn(cfg.cnn, clip)
    report: dict[str, object] = {"cnn": cnn.spec_key, "dim": cnn.dim, "patches_per_region": cnn.patches_per_region}
    total_start = time.perf_counter()
    with torch_threads(cfg.threads):
        for view in cfg.views:
            start = time.perf_counter()
            store = RegionStore(Path(regions_cfg.output_dir) / VIEWS_DIR / view)
            regions = store.get(store.keys())
            rf = encode_regions(regions.keys, regions.crops, regions.boxes, regions.scores, regions.valid, cnn,
                                regions.classes)
            path = save_region_features(region_features_path(cfg.cache_dir, cnn.spec_key, view), rf,
                                        {"view": view, "cnn": cnn.spec_key})  # fmt: skip
            seconds = time.perf_counter() - start
            crops = int(regions.valid.sum())
            report[view] = {"images": len(regions), "regions": crops, "seconds": round(seconds, 2),
                            "regions_per_s": round(2 * crops / max(seconds, 1e-9), 1), "file": str(path)}  # fmt: skip
            print(f"region_features {view}: {len(regions)} images, {crops} regions in {seconds:.1f}s")
    report["seconds"] = round(time.perf_counter() - total_start, 2)
    Path("reports/metrics").mkdir(parents=True, exist_ok=True)
    Path("reports/metrics/region_features.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage("region_features", main))
