"""Stage ``train`` (a DVC matrix over ``train.variants``): one model variant on the cached features.

``python -m stages.train <variant>``: for every seed of ``train.seeds`` fits on train, selects on
val, scores val/test/test_unseen once; writes reports/metrics/<variant>.json (mean +- std over
seeds, intervals over seeds and test memes), data/train/<variant>.parquet (every seed's test
predictions) and reports/plots/train/<variant>.csv; saves the median-validation seed's model folder
models/<variant>/, logs the runs to MLflow and registers ``memeops-<variant>`` with alias
``challenger`` (see memeops.training.variant_stage).

Data-parallel on several GPUs / nodes: ``torchrun --nproc-per-node 2 -m stages.train <variant>``
(or ``accelerate launch --multi_gpu --num_processes 2 -m stages.train <variant>``). Rank 0 runs
the stage as above, its fit in DDP with the other ranks; every other rank builds the same model
and datasets and joins the fit only: no MLflow run, no reports, no model folder, no registration,
no checkpoint (see docs/ddp.md).
"""

from __future__ import annotations

import sys

from memeops.stage_context import StageContext
from memeops.training import distributed as ddp
from memeops.training.optim import resolve_device
from memeops.training.tuned import with_tuned
from memeops.training.variant_stage import follow_variant, run_variant
from stages import run_stage

# Variants trained by a stage of their own in dvc.yaml (not the train@<variant> matrix).
DVC_STAGES = {"mgmcf": "train_mgmcf"}


def main() -> int:
    if len(sys.argv) != 2:
        raise ValueError("usage: python -m stages.train <variant>  (a key of params train.variants)")
    variant = sys.argv[1]
    ctx = StageContext()
    cfg = ctx.train
    cfg.variant(variant)  # fail fast on an unknown variant
    cfg = with_tuned(cfg, [variant])  # stage tune's best params (docs/tuning.md); no file: unchanged
    encoder_cfg = ctx.encoder_config
    inputs = {"memes_path": ctx.memes_path, "feature_dir": ctx.feature_dir, **ctx.region_inputs()}
    # One process unless launched by torchrun / accelerate (WORLD_SIZE > 1): then the process group.
    dist = ddp.init_from_env(resolve_device(cfg.trainer_config(variant).device))
    try:
        if not dist.is_main:
            follow_variant(variant, cfg, encoder_cfg, dist.rank, **inputs)
            return 0
        report = run_variant(variant, cfg, encoder_cfg, validation_report=ctx.validation_report,
                             stage=DVC_STAGES.get(variant, f"train@{variant}"), **inputs)  # fmt: skip
    finally:
        ddp.cleanup(dist)
    test = report.get("test", {})
    shown = ", ".join(f"{k} {v:.3f}" for k, v in test.items() if k.endswith("/auroc") and v is not None)
    print(f"train {variant}: seeds {report['seeds']}, registered seed {report['selection']['selected_seed']} "
          f"({report['selection']['rule']}); test mean over seeds: {shown}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage("train", main))
