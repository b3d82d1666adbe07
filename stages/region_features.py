"""Stage ``region_features``: encode every region view's crops with the frozen region CNN.

For each view in ``region_features.views`` (materialised by stage ``regions``) every crop and its
mirror image are encoded patch by patch (:mod:`memeops.models.region_cnn`) into
``<cache_dir>/<cnn spec_key>/<view>.safetensors``; MGMCF trains on these.
"""

from __future__ import annotations

from pathlib import Path

from memeops.data.mgmcf_inputs import RegionFeaturesConfig, encode_region_views
from memeops.models.region_cnn import build_region_cnn
from memeops.stage_context import StageContext
from memeops.vision.extract import VIEWS_DIR, RegionsConfig
from stages import run_stage


def main() -> int:
    ctx = StageContext()
    cfg = ctx.section("region_features", RegionFeaturesConfig)
    regions_cfg = ctx.section("regions", RegionsConfig)
    cnn = build_region_cnn(cfg.cnn, ctx.encoder())
    ctx.write_metrics("region_features", encode_region_views(cfg, Path(regions_cfg.output_dir) / VIEWS_DIR, cnn))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage("region_features", main))
