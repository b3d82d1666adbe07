"""Stage ``ablate``: every ablation arm over several seeds, with intervals, paired tests and diagnostics.

Run from the project root as ``python -m stages.ablate``. Settings: ``params.ablate``
(:class:`memeops.training.ablate.AblateConfig`; docs/ablations.md). Each arm of each group (MGMCF
without object-level features, with concatenation instead of CAP, ...; GatedCLIP without its gate,
projection or alignment term; the baselines) is trained once per seed under its group's protocol,
selected on VAL and scored once on TEST (:mod:`memeops.training.ablate`) -- or, when its settings
and seed are exactly those of a seed stage ``train`` trained, read from that stage's outputs
(:mod:`memeops.training.ablate_reuse`: the same run, not trained twice); the statistics, mechanism
checks, GatedCLIP gate diagnostics and MGMCF robustness curve come from :mod:`memeops.stats` and
:mod:`memeops.evaluation.ablation`, the report files from :mod:`memeops.reporting.ablation`, the
orchestration from :mod:`memeops.training.ablate_stage`. Tuned params
(``reports/tuning/<variant>.json``) apply to the arms built from a tuned variant, as they do in
stage ``train``.

Writes ``reports/ablations.csv`` / ``.md`` (what the report page shows), ``reports/ablate/runs.csv``
(one row per run: where it was trained, best epoch, val scores), ``reports/metrics/ablate.json`` (dvc metrics),
``reports/plots/ablate/<group>.csv`` (dvc plots), ``reports/figures/ablate/*.png`` and
``data/ablate/predictions.parquet`` (every run's per-meme test probabilities: the raw material of
every number). One MLflow parent run (stage ``ablate``, lineage tags) holds the summary metrics and
files; each (arm, seed) run is a child run with its overrides and test metrics.
"""

from __future__ import annotations

import time

from memeops.stage_context import StageContext
from memeops.training.ablate import AblateConfig, build_jobs
from memeops.training.ablate_stage import arm_variants, run_ablation
from memeops.training.seed_pool import SeedData
from memeops.training.tuned import with_tuned
from stages import run_stage


def main() -> int:
    start = time.perf_counter()
    ctx = StageContext()
    cfg = ctx.section("ablate", AblateConfig)
    train = with_tuned(ctx.train, arm_variants(cfg))  # stage tune's best params, for every variant of an arm
    jobs = build_jobs(cfg, train)
    data = SeedData(memes_path=ctx.memes_path, feature_dir=ctx.feature_dir, encoder_cfg=ctx.encoder_config,
                    **ctx.region_inputs())  # fmt: skip
    ctx.require_memes()
    print(f"ablate: {len(jobs)} runs ({len(cfg.groups)} groups x arms x {len(cfg.seeds)} seeds) "
          f"on {cfg.workers} worker process(es)", flush=True)  # fmt: skip
    runs, written = run_ablation(cfg, train, jobs, data, experiment=ctx.experiment, reports=ctx.reports)
    print(f"ablate: {len(runs)} runs, wrote {len(written)} files ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage("ablate", main))
