"""Stage ``train``: the CLIP-feature head variants, one after another in one process.

``python -m stages.train <variant> [<variant> ...]``: for each variant and every seed of
``train.seeds`` fits on train, selects on val, scores val/test/test_unseen once; writes
reports/metrics/<variant>.json (mean +- std over seeds, intervals over seeds and test memes),
data/train/<variant>.parquet (every seed's test predictions) and reports/plots/train/<variant>.csv;
saves the median-validation seed's model folder models/<variant>/, logs the runs to MLflow and
registers ``memeops-<variant>`` with alias ``challenger`` (see memeops.training.variant_stage).
One process for all of them: python start, imports, the feature store and MLflow's set-up are paid
once (about 15 s a variant on 2 cores; docs/bench.md); every variant's seeds are queued on the
workers at once, so they train while this process packages the variants before them. Stage
``train_mgmcf`` is this module with ``mgmcf``.

Data-parallel on several GPUs / nodes: ``torchrun --nproc-per-node 2 -m stages.train <variant>``
(or ``accelerate launch --multi_gpu --num_processes 2 -m stages.train <variant>``). Rank 0 runs
the stage as above, its fit in DDP with the other ranks; every other rank builds the same model
and datasets and joins the fit only: no MLflow run, no reports, no model folder, no registration,
no checkpoint (see docs/ddp.md).
"""

from __future__ import annotations

import sys

from memeops.config import ConfigError
from memeops.stage_context import StageContext
from memeops.training import distributed as ddp
from memeops.training.optim import resolve_device
from memeops.training.seed_pool import SeedData, seed_runner, worker_count
from memeops.training.tuned import with_tuned
from memeops.training.variant_stage import follow_variant, run_variants
from stages import run_stage

# The DVC stage that trains each variant (the runs' stage tag); every other variant: stage ``train``.
DVC_STAGES = {"mgmcf": "train_mgmcf"}


def main() -> int:
    variants, ctx = sys.argv[1:], StageContext()
    unknown = [v for v in variants if v not in ctx.train.variants]
    if not variants or unknown:  # one line (run_stage), before anything trains
        raise ConfigError(f"usage: python -m stages.train <variant> [<variant> ...]; unknown: "
                          f"{unknown or 'none given'}; train.variants has: {', '.join(ctx.train.variants)}")  # fmt: skip
    cfg = with_tuned(ctx.train, variants)  # stage tune's best params (docs/tuning.md); no file: unchanged
    inputs = {"memes_path": ctx.memes_path, "feature_dir": ctx.feature_dir, **ctx.region_inputs()}
    # One process unless launched by torchrun / accelerate (WORLD_SIZE > 1): then the process group.
    dist = ddp.init_from_env(resolve_device(cfg.trainer_config(variants[0]).device))
    try:
        if not dist.is_main:
            for variant in variants:
                follow_variant(variant, cfg, ctx.encoder_config, dist.rank, **inputs)
            return 0
        data = SeedData(encoder_cfg=ctx.encoder_config, **inputs)
        # seeds in worker processes (train.workers), loaded once for every variant; under DDP in this one
        workers = 1 if dist.enabled else worker_count(cfg.workers, len(variants) * len(cfg.seeds))
        with seed_runner(data, workers) as runner:
            for variant, report in run_variants(variants, cfg, ctx.encoder_config, runner, stages=DVC_STAGES,
                                                memes_path=ctx.memes_path, validation_report=ctx.validation_report):  # fmt: skip
                shown = ", ".join(f"{k} {v:.3f}" for k, v in report.get("test", {}).items()
                                  if k.endswith("/auroc") and v is not None)  # fmt: skip
                print(f"train {variant}: seeds {report['seeds']}, registered seed "
                      f"{report['selection']['selected_seed']} ({report['selection']['rule']}); "
                      f"test mean over seeds: {shown}", flush=True)  # fmt: skip
    finally:
        ddp.cleanup(dist)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage("train", main))
