"""The seeds of a variant, trained side by side: one worker process per seed, up to ``train.workers``.

Why processes: the trainer fits with one torch thread (``train.trainer.threads``: the heads' and
MGMCF's matrices are too small for a second thread to pay for its synchronisation), so one process
leaves the other core of a 2-core machine idle. Three seeds in three processes take about half the
time of three in a row (docs/bench.md). A seed's result does not depend on the process that trains
it (one thread, every generator seeded by the seed), so the outputs are those of the one-process run.

Each worker loads the meme table, the feature store and the encoder once (:class:`SeedContext`),
then trains :class:`SeedJob` s; every seed logs to its own MLflow run, nested under the variant's
run through ``parent_run_id``, with its per-epoch metrics as they happen. ``workers: 1`` (and every
DDP launch) trains in the calling process, inside the variant's active run.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from memeops.config import ConfigError
from memeops.config.train import TrainStageConfig
from memeops.data.consolidate import read_memes
from memeops.data.features import FeatureStore
from memeops.models.clip import load_clip
from memeops.threads import torch_threads
from memeops.tracking.promotion import log_eval_predictions
from memeops.tracking.runs import MlflowCallback, log_metrics, tracked_run
from memeops.training.experiment import (
    Family,
    VariantResult,
    clear_finished_run,
    family_inputs,
    run_dir_for,
    split_meme_ids,
    train_variant,
    variant_specs,
)


@dataclass(frozen=True)
class SeedData:
    """Where a worker finds its inputs, and the MLflow store it logs to (paths: cheap to send)."""

    memes_path: Path
    feature_dir: Path
    encoder_cfg: Any
    region_features: Any = None
    regions: Any = None
    tracking_uri: str | None = None
    registry_uri: str | None = None


@dataclass(frozen=True)
class SeedJob:
    """One seed of one variant: what :func:`train_seed` needs besides the loaded data."""

    variant: str
    seed: int
    cfg: TrainStageConfig
    fingerprint: Mapping[str, Any]
    work_dir: Path
    run_args: Mapping[str, Any]
    parent_run_id: str | None = None  # None: nest under the calling process's active run


@dataclass
class SeedOutcome:
    """One seed's trained variant and the MLflow run it was logged to."""

    seed: int
    result: VariantResult
    run_id: str


@dataclass
class SeedContext:
    """Per process: the meme table, the feature store, the encoder and each variant's MGMCF inputs."""

    data: SeedData
    memes: pd.DataFrame
    store: FeatureStore
    encoder: Any
    families: dict[str, Family | None] = field(default_factory=dict)

    @classmethod
    def load(cls, data: SeedData) -> SeedContext:
        encoder = load_clip(data.encoder_cfg)
        return cls(data, read_memes(data.memes_path), FeatureStore(data.feature_dir, encoder.spec_key), encoder)

    def family(self, variant: str, cfg: TrainStageConfig) -> Family | None:
        """The variant's MGMCF inputs (None for the feature-cache heads), built once per process."""
        if variant not in self.families:
            specs, _ = variant_specs(variant, self.memes, cfg)
            self.families[variant] = family_inputs(cfg.variant(variant), self.memes, self.store, specs, self.encoder,
                                                   self.data.region_features, self.data.regions)  # fmt: skip
        return self.families[variant]

    def train(self, job: SeedJob) -> SeedOutcome:
        """Train one seed in its own MLflow run and log its metrics and per-meme predictions."""
        cfg, variant, seed = job.cfg, job.variant, job.seed
        family = self.family(variant, cfg)
        trainer_cfg = cfg.trainer_config(variant, seed)
        run_dir = run_dir_for(job.work_dir, variant, {**job.fingerprint, "trainer": trainer_cfg.model_dump()})
        clear_finished_run(run_dir, trainer_cfg.epochs)
        params = {**job.run_args["params"], "trainer": trainer_cfg.model_dump()}
        with tracked_run(**{**job.run_args, "params": params}, run_name=f"{variant}-seed{seed}", seed=seed,
                         nested=True, parent_run_id=job.parent_run_id, system_metrics=False) as run:  # fmt: skip
            result = train_variant(variant, self.memes, self.store, self.encoder.dim, cfg, run_dir,
                                   callbacks=[MlflowCallback()], inputs=family.inputs if family is not None else None,
                                   seed=seed)  # fmt: skip
            log_metrics(result.metrics)  # {split: {task/metric}} -> split/task/metric
            log_metrics({"trainable_params": result.n_params})
            for split, preds in result.predictions.items():  # per-meme predictions: promotion's paired test
                log_eval_predictions(split, split_meme_ids(self.memes, split, preds), preds, result.specs)
            return SeedOutcome(seed, result, run.info.run_id)


_CONTEXT: SeedContext | None = None


def _init_worker(data: SeedData) -> None:
    global _CONTEXT
    if data.tracking_uri:  # the parent's store, even when it was set in code rather than the environment
        mlflow.set_tracking_uri(data.tracking_uri)
    if data.registry_uri:
        mlflow.set_registry_uri(data.registry_uri)
    _CONTEXT = SeedContext.load(data)


def _train_in_worker(job: SeedJob) -> SeedOutcome:
    assert _CONTEXT is not None, "seed worker not initialised"
    return _CONTEXT.train(job)


class SeedRunner:
    """Trains :class:`SeedJob` s: in worker processes when given a pool, else in this process."""

    def __init__(self, context: SeedContext, pool: ProcessPoolExecutor | None = None):
        self.context, self.pool = context, pool

    @property
    def in_process(self) -> bool:
        return self.pool is None

    def train(self, jobs: Sequence[SeedJob]) -> list[SeedOutcome]:
        """Every job's outcome, in job order; a failing seed fails the call with its variant and seed."""
        return self.collect(jobs, self.submit(jobs))

    def submit(self, jobs: Sequence[SeedJob]) -> list[Future] | None:
        """Queue ``jobs`` on the workers (FIFO after what is already queued) and return at once;
        in process: nothing happens until :meth:`collect`."""
        if self.pool is None:
            return None
        return [self.pool.submit(_train_in_worker, job) for job in jobs]

    def collect(self, jobs: Sequence[SeedJob], futures: list[Future] | None) -> list[SeedOutcome]:
        """The outcomes of :meth:`submit`-ted ``jobs``, in job order, waiting for them (in process:
        trained here, now, under the active MLflow run)."""
        if futures is None:
            return [self.context.train(job) for job in jobs]
        outcomes = []
        for job, future in zip(jobs, futures):
            try:
                outcomes.append(future.result())
            except (ConfigError, FileNotFoundError):
                raise  # the user's params or a missing input: run_stage prints it as one line, as in process
            except Exception as exc:
                raise RuntimeError(f"train {job.variant} seed {job.seed} failed: {exc}") from exc
        return outcomes


def worker_count(most: int, jobs: int, cores: int | None = None) -> int:
    """How many seed workers for ``jobs`` queued jobs, at most ``most``: every job at once when they
    fit one round on the cores plus one (3 seeds on 2 cores: 1.5 seed-times instead of 2 in two
    rounds), else one per core (a longer queue keeps each core busy anyway; a third process there only
    adds switching: stage train's 24 jobs took the same wall time on 2 workers as on 3, with 7% less CPU)."""
    cores = cores or len(os.sched_getaffinity(0))
    return max(1, min(most, jobs if jobs <= cores + 1 else cores))


@contextmanager
def seed_runner(data: SeedData, workers: int) -> Iterator[SeedRunner]:
    """A :class:`SeedRunner` with ``workers`` processes (1: this process only), closed on exit."""
    context = SeedContext.load(data)
    if workers <= 1:
        yield SeedRunner(context)
        return
    data = replace(data, tracking_uri=mlflow.get_tracking_uri(), registry_uri=mlflow.get_registry_uri())
    # spawn, not fork: the parent holds torch / MLflow threads a forked child must not inherit
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(data,)) as pool:
        try:
            # this process packages variants while the workers train: one torch thread, so its model
            # checks do not contend with theirs in OpenMP barriers (no gain beyond noise measured alone)
            with torch_threads(1):
                yield SeedRunner(context, pool)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # a failed stage trains nothing more that was queued
            raise
