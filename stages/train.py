"""Stage ``train`` (a DVC matrix over ``train.variants``): one model variant on the cached features.

``python -m stages.train <variant>``: fits on train, selects on val, scores val/test/test_unseen
once, writes reports/metrics/<variant>.json and reports/plots/train/<variant>.csv, saves the
self-contained model folder models/<variant>/, logs the run to MLflow and registers
``memeops-<variant>`` with alias ``challenger`` (see memeops.training.experiment).
"""

from __future__ import annotations

import sys
from pathlib import Path

from memeops.config import load_params
from memeops.data.features import FeatureConfig
from memeops.data.mgmcf_inputs import RegionFeaturesConfig
from memeops.models.clip import ClipEncoderConfig, resolve_encoder_config
from memeops.training.experiment import TrainStageConfig, run_variant
from memeops.vision.extract import RegionsConfig
from stages import run_stage


# Variants trained by a stage of their own in dvc.yaml (not the train@<variant> matrix).
DVC_STAGES = {"mgmcf": "train_mgmcf"}


def main() -> int:
    if len(sys.argv) != 2:
        raise ValueError("usage: python -m stages.train <variant>  (a key of params train.variants)")
    variant = sys.argv[1]
    params = load_params()
    cfg = params.section("train", TrainStageConfig)
    cfg.variant(variant)  # fail fast on an unknown variant
    encoder_cfg = resolve_encoder_config(params.section("encoders.clip", ClipEncoderConfig))
    report = run_variant(
        variant, cfg, encoder_cfg,
        memes_path=Path(params.data.output_dir) / "memes.parquet",
        feature_dir=Path(params.section("features", FeatureConfig).cache_dir),
        validation_report=Path("reports/validation.json"),
        region_features=params.section("region_features", RegionFeaturesConfig),
        regions=params.section("regions", RegionsConfig),
        stage=DVC_STAGES.get(variant, f"train@{variant}"),
    )  # fmt: skip
    test = report.get("test", {})
    shown = ", ".join(f"{k} {v:.3f}" for k, v in test.items() if k.endswith("/auroc") and v is not None)
    print(f"train {variant}: best epoch {report['best_epoch']}, val {report['monitor']} "
          f"{report['val_best']:.3f}; test {shown}")  # fmt: skip
    return 0

if __name__ == "__main__":
    raise SystemExit(run_stage("train", main))
