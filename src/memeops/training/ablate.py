"""Ablation arms over seeds: the training half of stage ``ablate`` (statistics: :mod:`memeops.stats`).

An **arm** is a model variant of ``train.variants`` with config / inputs / trainer overrides (MGMCF
without object-level features, GatedCLIP without its gate, ...) or another variant altogether (the
baselines). A **group** is the set of arms compared against one reference arm (``full``). Every arm
is trained once per seed of ``ablate.seeds`` under the group's protocol (the group's ``trainer``
overrides apply to all of its arms alike, so the comparison is fair even when the protocol is
cheaper than stage ``train``'s), fitted on TRAIN, selected on VAL, and scored once on
``ablate.split`` (test). The seed sets the weight initialisation and the shuffling order.

The (arm, seed) jobs are independent: they run on ``ablate.workers`` processes with one torch thread
each (2 processes on 2 cores train about twice as many tiny models per minute as one process with
two threads). Every job is deterministic given its seed, whichever worker runs it.
"""

from __future__ import annotations

import json
import multiprocessing
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from memeops.config.train import TrainerOverrides, TrainStageConfig, VariantConfig
from memeops.models.base import TaskSpec
from memeops.stats import ArmRun

if TYPE_CHECKING:  # the worker's inputs are stage train's (heavy imports: at run time only)
    from memeops.training.seed_pool import SeedData


class ArmSpec(BaseModel):
    """One arm: ``variant`` (default: the group's base) with its sections updated by these."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    variant: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, Any] = Field(default_factory=dict)
    trainer: TrainerOverrides = TrainerOverrides()
    description: str = ""


class AblationGroup(BaseModel):
    """Arms compared against ``reference``; ``trainer`` is the group's training protocol (every arm)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: str
    reference: str = "full"
    trainer: TrainerOverrides = TrainerOverrides()
    arms: dict[str, ArmSpec]

    @model_validator(mode="after")
    def _has_reference(self) -> AblationGroup:
        if self.reference not in self.arms:
            raise ValueError(f"reference arm {self.reference!r} is not among the arms ({', '.join(self.arms)})")
        return self


class Claim(BaseModel):
    """A mechanism a paper claims, as a paired comparison: ``better`` beats ``worse`` on ``metric``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    claim: str
    group: str
    better: str
    worse: str
    metric: str


class GateDiagnostics(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    group: str = "gatedclip"
    arm: str = "full"
    tasks: list[str] = Field(default_factory=lambda: ["hateful"])
    examples: int = Field(4, ge=0)


class RobustnessCurve(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    group: str = "mgmcf"
    levels: list[tuple[str, str]]  # (arm, x label), from the intact detector to the most degraded
    fallback: str  # the global-features-only arm
    metric: str = "mean/macro_f1"


class AblateConfig(BaseModel):
    """``params.ablate``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seeds: list[int] = Field(min_length=1)
    workers: int = Field(2, ge=1)
    split: str = "test"
    n_boot: int = Field(1000, ge=100)
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    bootstrap_seed: int = 0
    metrics: list[str] = Field(min_length=1)  # the first is the headline (tables, charts)
    groups: dict[str, AblationGroup]
    claims: list[Claim] = Field(default_factory=list)
    gate: GateDiagnostics | None = None
    robustness: RobustnessCurve | None = None

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"ablate.seeds has duplicates: {seeds}")
        return seeds

    @model_validator(mode="after")
    def _references_exist(self) -> AblateConfig:
        for claim in self.claims:
            group = self.groups.get(claim.group)
            missing = [a for a in (claim.better, claim.worse) if group is None or a not in group.arms]
            if missing:
                raise ValueError(f"claim {claim.claim!r}: group {claim.group!r} has no arm {missing[0]!r}")
        for name, diag in (("gate", self.gate), ("robustness", self.robustness)):
            if diag is not None and diag.group not in self.groups:
                raise ValueError(f"ablate.{name}.group {diag.group!r} is not an ablation group")
        if self.robustness is not None:
            arms = self.groups[self.robustness.group].arms
            for arm in [a for a, _ in self.robustness.levels] + [self.robustness.fallback]:
                if arm not in arms:
                    raise ValueError(f"ablate.robustness: arm {arm!r} is not in group {self.robustness.group!r}")
        return self


# --------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class ArmJob:
    """One training run: an arm of a group at one seed, as a one-variant TrainStageConfig."""

    group: str
    arm: str
    seed: int
    variant: str  # the train.variants key the arm is built from (its tasks, its model family)
    train: TrainStageConfig  # variants == {variant: the arm's merged VariantConfig}
    cost: float  # relative expected cost, for scheduling the longest jobs first


def _merged(base: Mapping[str, Any], *updates: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for update in updates:
        out.update(update)
    return out


def arm_variant(train: TrainStageConfig, group: AblationGroup, arm: ArmSpec, seed: int) -> tuple[str, VariantConfig]:
    """The arm's variant name and config: its variant's sections updated by the arm's, the group's
    protocol (``group.trainer``) over the trainer, then the seed."""
    name = arm.variant or group.base
    base = train.variant(name)
    trainer = base.trainer.updated(arm.trainer, group.trainer, {"seed": seed})
    merged = base.model_copy(update={
        "config": _merged(base.config, arm.config), "inputs": _merged(base.inputs, arm.inputs), "trainer": trainer,
    })  # fmt: skip
    return name, VariantConfig.model_validate(merged.model_dump())


def build_jobs(cfg: AblateConfig, train: TrainStageConfig) -> list[ArmJob]:
    """Every (group, arm, seed), longest expected first (MGMCF's token attention costs most)."""
    jobs = []
    for group_name, group in cfg.groups.items():
        for arm_name, arm in group.arms.items():
            for seed in cfg.seeds:
                variant, vcfg = arm_variant(train, group, arm, seed)
                # bootstrap_samples 0: the stage computes its own intervals over seeds; per-run ones go unused
                one = train.model_copy(update={"variants": {variant: vcfg}, "bootstrap_samples": 0})
                epochs = one.trainer_config(variant).epochs
                cost = epochs * (8.0 if vcfg.model == "mgmcf" else 1.0)
                jobs.append(ArmJob(group_name, arm_name, seed, variant, one, cost))
    return sorted(jobs, key=lambda j: -j.cost)


# --------------------------------------------------------------------------- running


class ArmWorker:
    """Per-process state: the meme table, the feature store, the encoder and the MGMCF / lexical inputs."""

    def __init__(self, memes: pd.DataFrame, store: Any, feature_dim: int, encoder: Any = None,
                 region_features: Any = None, regions: Any = None):  # fmt: skip
        self.memes, self.store, self.feature_dim = memes, store, feature_dim
        self.encoder, self.region_features, self.regions = encoder, region_features, regions
        self._inputs: dict[str, Any] = {}

    @classmethod
    def load(cls, data: SeedData) -> ArmWorker:
        from memeops.training.seed_pool import SeedContext

        seeds = SeedContext.load(data)  # what stage train's seed workers load, loaded the same way
        return cls(seeds.memes, seeds.store, seeds.encoder.dim, seeds.encoder, data.region_features, data.regions)

    def inputs_for(self, job: ArmJob, specs: list[TaskSpec]) -> Any:
        from memeops.training.experiment import family_inputs

        vcfg = job.train.variant(job.variant)
        if vcfg.model != "mgmcf" and not vcfg.inputs:  # the feature cache (train_variant's default)
            return None
        key = json.dumps([vcfg.inputs, [s.name for s in specs]], sort_keys=True)
        if key not in self._inputs:  # region features of a view / the n-gram table are built once per process
            family = family_inputs(vcfg, self.memes, self.store, specs, self.encoder, self.region_features,
                                    self.regions)  # fmt: skip
            self._inputs[key] = family.inputs if family is not None else None
        return self._inputs[key]

    def run(self, job: ArmJob, split: str) -> ArmRun:
        from memeops.training.experiment import split_meme_ids, train_variant, variant_specs

        specs, _ = variant_specs(job.variant, self.memes, job.train)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="memeops-ablate-") as tmp:
            result = train_variant(job.variant, self.memes, self.store, self.feature_dim, job.train, Path(tmp),
                                   inputs=self.inputs_for(job, specs))  # fmt: skip
        if split not in result.predictions:
            raise ValueError(f"ablate: no {split!r} memes to score")
        preds = result.predictions[split]
        if preds.meme_ids is None:  # aligned by meme id across arms, whatever their datasets carry
            preds.meme_ids = split_meme_ids(self.memes, split, preds)
        best = result.fit.history[result.fit.best_epoch - 1] if result.fit.history else {}
        val = {k.removeprefix("val/"): float(v) for k, v in best.items() if k.startswith("val/")}
        return ArmRun(job.group, job.arm, job.seed, preds, val, result.fit.best_epoch,
                      round(time.perf_counter() - start, 2))  # fmt: skip


_WORKER: ArmWorker | None = None


def _init_worker(data: SeedData) -> None:
    global _WORKER
    _WORKER = ArmWorker.load(data)


def _run_in_worker(job: ArmJob, split: str) -> ArmRun:
    assert _WORKER is not None, "worker not initialised"
    return _WORKER.run(job, split)


def run_jobs(
    jobs: Sequence[ArmJob], data: SeedData | ArmWorker, *, workers: int, split: str = "test",
    on_done: Callable[[ArmJob, ArmRun, int], None] | None = None,
) -> list[ArmRun]:  # fmt: skip
    """Train every job (``workers`` processes; 1 = in this process); runs in ``jobs`` order.

    ``data``: the paths and configs each worker process loads, or (in-process only) a loaded worker.

    ``on_done(job, run, n_done)`` is called in this process as each job finishes (progress lines).
    A failing job fails the whole call with its arm and seed in the message.
    """
    runs: dict[int, ArmRun] = {}
    if isinstance(data, ArmWorker) or workers <= 1 or len(jobs) <= 1:
        worker = data if isinstance(data, ArmWorker) else ArmWorker.load(data)
        for i, job in enumerate(jobs):
            runs[i] = worker.run(job, split)
            if on_done:
                on_done(job, runs[i], len(runs))
    else:
        # spawn, not fork: the parent holds torch / MLflow threads a forked child must not inherit
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(data,)) as pool:  # fmt: skip
            futures = {pool.submit(_run_in_worker, job, split): i for i, job in enumerate(jobs)}
            for future in as_completed(futures):
                i = futures[future]
                try:
                    runs[i] = future.result()
                except Exception as exc:
                    job = jobs[i]
                    raise RuntimeError(f"ablate: arm {job.group}/{job.arm} seed {job.seed} failed: {exc}") from exc
                if on_done:
                    on_done(jobs[i], runs[i], len(runs))
    return [runs[i] for i in range(len(jobs))]


def ordered_runs(runs: Sequence[ArmRun], cfg: AblateConfig) -> list[ArmRun]:
    """Runs in params order (group, arm, seed): the order tables and charts show."""
    rank = {(g, a): (gi, ai) for gi, (g, grp) in enumerate(cfg.groups.items()) for ai, a in enumerate(grp.arms)}
    return sorted(runs, key=lambda r: (*rank[(r.group, r.arm)], cfg.seeds.index(r.seed)))


def runs_frame(runs: Sequence[ArmRun], reused: AbstractSet[tuple[str, str, int]] = frozenset()) -> pd.DataFrame:
    """One row per run: group, arm, seed, where it was trained (``ablate``, or ``train`` for a run
    read from stage train: :mod:`memeops.training.ablate_reuse`), best epoch and the val score
    selection saw. No seconds: the table is a DVC out and must repeat byte for byte (each run's
    seconds are on its MLflow run)."""
    rows = []
    for run in runs:
        trained_in = "train" if (run.group, run.arm, run.seed) in reused else "ablate"
        row = {"group": run.group, "arm": run.arm, "seed": run.seed, "trained_in": trained_in,
               "best_epoch": run.best_epoch}  # fmt: skip
        row.update({f"val/{k}": v for k, v in sorted(run.val_metrics.items()) if k.endswith(("macro_f1", "auroc"))})
        rows.append(row)
    return pd.DataFrame(rows)


def predictions_long(runs: Sequence[ArmRun]) -> pd.DataFrame:
    """Every run's per-meme test probabilities and targets, long form (one row per run, meme, task):
    the raw material of every number in the ablation report, kept for re-analysis."""
    frames = []
    for run in runs:
        preds = run.predictions
        ids = preds.meme_ids or [str(i) for i in range(len(preds))]
        for task, probs in preds.probs.items():
            target = preds.targets.get(task)
            frames.append(pd.DataFrame({
                "group": run.group, "arm": run.arm, "seed": run.seed, "meme_id": ids, "task": task,
                "probs": [list(map(float, p)) for p in probs],
                "target": [json.dumps(t.tolist()) if hasattr(t, "tolist") else json.dumps(t) for t in target]
                if target is not None else None,
            }))  # fmt: skip
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
