"""Stage ``ablate`` reads, rather than retrains, the runs stage ``train`` already made.

An ablation job is **the same run** as one of stage ``train``'s seeds when its resolved settings
equal that seed's: the same variant with the same model, config, inputs and tasks, and the same
trainer settings (protocol, seed) once every override of the arm and its group is applied. Training
is deterministic given those (one torch thread, every generator seeded; docs/reproducibility.md),
so its test predictions would come out identical: they are read from ``data/train/<variant>.parquet``
(every seed's per-meme probabilities) and the seed's best epoch and validation scores from
``reports/metrics/<variant>.json`` (``seed_runs``). Both files are dependencies of stage ``ablate``
in ``dvc.yaml``, so a retrained variant re-runs the ablation.

Never reused: runs whose diagnostics need more than predictions -- the gate arm (GatedCLIP's gate
per meme) and every arm of the robustness group (MGMCF's attention) -- and jobs scored on a split
stage ``train`` does not keep per meme (``val``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from memeops.config.train import TrainStageConfig
from memeops.models.base import TaskSpec
from memeops.stats import ArmRun
from memeops.training.ablate import AblateConfig, ArmJob
from memeops.training.experiment import TEST_SPLITS
from memeops.training.seed_runs import runs_from_table

TRAIN_PREDICTIONS = Path("data/train")
TRAIN_REPORTS = Path("reports/metrics")


def needs_extras(cfg: AblateConfig, job: ArmJob) -> bool:
    """Whether the job's diagnostics read per-meme model internals (gate values, attention)."""
    gate = cfg.gate is not None and (job.group, job.arm) == (cfg.gate.group, cfg.gate.arm)
    return gate or (cfg.robustness is not None and job.group == cfg.robustness.group)


def same_as_train_seed(job: ArmJob, train: TrainStageConfig) -> bool:
    """Whether ``job`` resolves to exactly the settings stage ``train`` trains the job's seed with."""
    if job.variant not in train.variants or job.seed not in train.seeds:
        return False
    mine, theirs = job.train.variant(job.variant), train.variant(job.variant)
    same_model = (mine.model, mine.config, mine.inputs) == (theirs.model, theirs.config, theirs.inputs)
    same_tasks = job.train.tasks_for(job.variant) == train.tasks_for(job.variant)
    same_trainer = job.train.trainer_config(job.variant) == train.trainer_config(job.variant, job.seed)
    return same_model and same_tasks and same_trainer


def reusable_jobs(cfg: AblateConfig, jobs: Sequence[ArmJob], train: TrainStageConfig) -> list[ArmJob]:
    """The jobs stage ``train`` has already run (see the module docstring)."""
    if cfg.split not in TEST_SPLITS:
        return []
    return [j for j in jobs if not needs_extras(cfg, j) and same_as_train_seed(j, train)]


def load_train_runs(jobs: Sequence[ArmJob], split: str, specs: Mapping[str, TaskSpec], memes: pd.DataFrame, *,
                    predictions_dir: Path = TRAIN_PREDICTIONS, reports_dir: Path = TRAIN_REPORTS) -> list[ArmRun]:  # fmt: skip
    """One :class:`ArmRun` per job, read from stage ``train``'s outputs (``seconds`` 0: nothing ran);
    a missing file or seed is a one-line error naming it."""
    meme_ids = memes.loc[memes["split"] == split, "meme_id"].astype(str).tolist()
    runs = []
    for variant in dict.fromkeys(j.variant for j in jobs):
        table_path, report_path = predictions_dir / f"{variant}.parquet", reports_dir / f"{variant}.json"
        for path in (table_path, report_path):
            if not path.is_file():
                raise FileNotFoundError(f"ablate: {path} is missing (stage train writes it: dvc repro train)")
        seeds = json.loads(report_path.read_text(encoding="utf-8")).get("seed_runs", {})
        by_seed = {r.seed: r for r in runs_from_table(pd.read_parquet(table_path), split, specs, meme_ids, group="train")}
        for job in (j for j in jobs if j.variant == variant):
            if job.seed not in by_seed or str(job.seed) not in seeds:
                raise ValueError(f"ablate: {table_path} / {report_path} hold no seed {job.seed} "
                                 f"(train.seeds must include ablate.seeds)")  # fmt: skip
            seed = seeds[str(job.seed)]
            runs.append(ArmRun(job.group, job.arm, job.seed, by_seed[job.seed].predictions,
                               {k: float(v) for k, v in seed["val"].items()}, int(seed["best_epoch"]), 0.0))  # fmt: skip
    return runs
