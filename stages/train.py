"""Stage ``train`` (a DVC matrix over ``train.variants``): one model variant on the cached features.

``python -m stages.train <variant>``: fits on train, selects on val, scores val/test/test_unseen
once, writes reports/metrics/<variant>.json and reports/plots/train/<variant>.csv, saves the
self-contained model folder models/<variant>/, logs the run to MLflow and registers
``memeops-<variant>`` with alias ``challenger`` (see memeops.training.experiment).

Data-parallel on several GPUs / nodes: ``torchrun --nproc-per-node 2 -m stages.train <variant>``
(or ``accelerate launch --multi_gpu --num_processes 2 -m stages.train <variant>``). Rank 0 runs
the stage as above, its fit in DDP with the other ranks; every other rank builds the same model
and datasets and joins the fit only: no MLflow run, no reports, no model folder, no registration,
no checkpoint (see docs/ddp.md).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from memeops.config import load_params
from memeops.data.features import FeatureConfig
from memeops.data.mgmcf_inputs import RegionFeaturesConfig
from memeops.models.clip import ClipEncoderConfig, resolve_encoder_config
from memeops.training import distributed as ddp
from memeops.training.experiment import TrainStageConfig, run_variant
from memeops.training.optim import resolve_device
from memeops.training.tune import apply_tuned
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
    tuned = Path("reports/tuning") / f"{variant}.json"
    if tuned.is_file():  # stage tune's best params (docs/tuning.md); no file: params unchanged
        cfg = apply_tuned(cfg, variant, json.loads(tuned.read_text(encoding="utf-8")))
    encoder_cfg = resolve_encoder_config(params.section("encoders.clip", ClipEncoderConfig))
    inputs = {
        "memes_path": Path(params.data.output_dir) / "memes.parquet",
        "feature_dir": Path(params.section("features", FeatureConfig).cache_dir),
        "region_features": params.section("region_features", RegionFeaturesConfig),
        "regions": params.section("regions", RegionsConfig),
    }
    # One process unless launched by torchrun / accelerate (WORLD_SIZE > 1): then the process group.
    ctx = ddp.init_from_env(resolve_device(cfg.trainer_config(variant).device))
    try:
        if not ctx.is_main:
            _follow_fit(variant, cfg, encoder_cfg, ctx, **inputs)
            return 0
        report = run_variant(
            variant, cfg, encoder_cfg, validation_report=Path("reports/validation.json"),
            stage=DVC_STAGES.get(variant, f"train@{variant}"), **inputs,
        )  # fmt: skip
    finally:
        ddp.cleanup(ctx)
    test = report.get("test", {})
    shown = ", ".join(f"{k} {v:.3f}" for k, v in test.items() if k.endswith("/auroc") and v is not None)
    print(f"train {variant}: best epoch {report['best_epoch']}, val {report['monitor']} "
          f"{report['val_best']:.3f}; test {shown}")  # fmt: skip
    return 0


def _follow_fit(
    variant: str, cfg: TrainStageConfig, encoder_cfg: Any, ctx: ddp.DistContext, *, memes_path: Path,
    feature_dir: Path, region_features: Any, regions: Any,
) -> None:  # fmt: skip
    """A DDP rank > 0: the model, datasets and trainer config rank 0's run_variant builds (the same
    train_variant call), in a throw-away run dir the trainer never writes to on this rank. Nothing
    is tracked, reported, saved or registered here."""
    from memeops.data.consolidate import read_memes
    from memeops.data.features import FeatureStore
    from memeops.models.clip import load_clip
    from memeops.training.experiment import _family_inputs, train_variant, variant_specs

    memes = read_memes(memes_path)
    encoder = load_clip(encoder_cfg)
    store = FeatureStore(feature_dir, encoder.spec_key)
    specs, _ = variant_specs(variant, memes, cfg)
    family = _family_inputs(cfg.variant(variant), memes, store, specs, encoder, region_features, regions)
    with tempfile.TemporaryDirectory(prefix=f"memeops-rank{ctx.rank}-") as tmp:
        train_variant(variant, memes, store, encoder.dim, cfg, Path(tmp),
                      inputs=family.inputs if family is not None else None)  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(run_stage("train", main))
