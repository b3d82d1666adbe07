"""The seed-and-meme bootstrap of a group of arms, paired comparisons, p-values and Holm.

An arm is trained over several seeds (:class:`ArmRun`: one run's TEST predictions). Its value is
the mean over its seeds of the metric on the whole split; ``std`` is the standard deviation over
seeds (ddof=1, 0 for one seed).

**The one way** to put an interval on such a value covers seed AND test-sample variation
(:func:`bootstrap_group`, ``resample_seeds=True``, the default): every resample draws the memes
with replacement (the same memes for every seed and arm) and, for each arm, draws its seeds with
replacement (the same draws for every arm with the same number of seeds, seeds paired by their
order: runs are sorted by seed), and the resampled value is the metric's mean over the drawn seeds
on the resampled memes. With one seed it is the plain meme bootstrap; with
``resample_seeds=False`` every seed counts once (test-sample variation only, seeds averaged out).

Arm A vs arm B is paired: the same resamples for both. The two-sided p-value is
``min(1, 2 * min((1 + #{delta* <= 0}) / (1 + n_valid), (1 + #{delta* >= 0}) / (1 + n_valid)))``,
where resamples with an undefined metric (e.g. AUROC of a one-class resample) are skipped and
counted. Multiple comparisons are Holm-Bonferroni adjusted (:func:`holm`).

Speed: metrics come for a whole block of resamples at once from count matrices
(:mod:`memeops.stats.weighted`), so ~10 arms x 3 seeds x 10 tasks x 400 memes x 1000 resamples
take seconds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from memeops.stats.named import CountBlock, PredictionScorer, parse_metric
from memeops.stats.resample import count_blocks, percentile_interval, seed_draws, seed_mean

if TYPE_CHECKING:  # types only: both modules import torch, this package must not
    from memeops.evaluation.metrics import Predictions
    from memeops.models.base import TaskSpec


@dataclass(frozen=True)
class ArmRun:
    """One trained run of an arm: its TEST-split predictions and how it was selected."""

    group: str  # e.g. "mgmcf", "gatedclip"
    arm: str  # e.g. "full", "no_object_level", "text_only"
    seed: int
    predictions: Predictions  # TEST split; every run of a group covers the same memes in the same order
    val_metrics: Mapping[str, float]  # "task/metric" -> value on val (what selection saw)
    best_epoch: int
    seconds: float


@dataclass
class GroupBootstrap:
    """Per-seed observed metrics and resampled seed-mean metrics of a group's arms.

    ``observed[(arm, metric)]``: ``[n_seeds]`` on the whole test split (runs in seed order);
    ``resampled[(arm, metric)]``: ``[n_boot]`` seed-mean metric per resample (NaN where a drawn
    seed's metric is undefined).
    """

    group: str
    arms: list[str]
    metrics: list[str]
    n_memes: int
    n_boot: int
    seed: int
    resample_seeds: bool = True
    observed: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    resampled: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class ArmStats:
    """One arm's metric: seed-mean, seed std, bootstrap interval."""

    n_seeds: int
    mean: float
    std: float
    ci_low: float
    ci_high: float
    n_valid: int  # resamples where the metric was defined


@dataclass(frozen=True)
class Comparison:
    """Arm A minus arm B on one metric (paired over the same resamples)."""

    mean_a: float
    mean_b: float
    delta: float
    ci_low: float
    ci_high: float
    p_value: float  # two-sided
    n_valid: int
    n_skipped: int  # resamples where either arm's metric was undefined


def runs_by_arm(runs: Sequence[ArmRun]) -> dict[str, list[ArmRun]]:
    """Runs per arm, arms in order of first appearance."""
    out: dict[str, list[ArmRun]] = {}
    for run in runs:
        out.setdefault(run.arm, []).append(run)
    return out


def runs_by_group(runs: Sequence[ArmRun]) -> dict[str, list[ArmRun]]:
    """Runs per group, groups in order of first appearance."""
    out: dict[str, list[ArmRun]] = {}
    for run in runs:
        out.setdefault(run.group, []).append(run)
    return out


def check_same_memes(group: str, runs: Sequence[ArmRun]) -> int:
    """The group's number of test memes; raises when runs cover different memes (pairing needs them)."""
    first = runs[0].predictions
    n = len(first)
    for run in runs[1:]:
        ids, first_ids = run.predictions.meme_ids, first.meme_ids
        if len(run.predictions) != n or (
            ids is not None and first_ids is not None and list(ids) != list(first_ids)
        ):
            raise ValueError(
                f"group {group!r}: run {run.arm}/seed {run.seed} does not cover the same memes "
                "in the same order"
            )
    return n


def bootstrap_group(
    runs: Sequence[ArmRun],
    specs: Mapping[str, TaskSpec],
    metrics: Sequence[str],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    resample_seeds: bool = True,
) -> GroupBootstrap:
    """Observed and resampled metrics of every arm in ``runs`` (one group), on shared resamples
    (memes, and with ``resample_seeds`` each arm's seeds: see the module docstring)."""
    if not runs:
        raise ValueError("no runs to bootstrap")
    groups = {r.group for r in runs}
    if len(groups) != 1:
        raise ValueError(f"bootstrap_group expects the runs of one group, got {sorted(groups)}")
    group = runs[0].group
    metrics = list(metrics)
    for metric in metrics:
        parse_metric(metric, specs)  # fail early on a misspelled metric
    n = check_same_memes(group, runs)
    by_arm = {arm: sorted(rs, key=lambda r: r.seed) for arm, rs in runs_by_arm(runs).items()}
    scorers = {arm: [PredictionScorer(r.predictions, specs) for r in rs] for arm, rs in by_arm.items()}
    out = GroupBootstrap(group, list(by_arm), metrics, n, n_boot, seed, resample_seeds)
    ones = CountBlock(np.ones((n, 1), dtype=np.float32))
    for arm, arm_scorers in scorers.items():
        per_seed = [s.scores(metrics, ones) for s in arm_scorers]
        for metric in metrics:
            out.observed[(arm, metric)] = np.array([v[metric][0] for v in per_seed])
    draws = {k: seed_draws(k, n_boot, seed) for k in {len(s) for s in scorers.values()}}
    blocks: dict[tuple[str, str], list[np.ndarray]] = {key: [] for key in out.observed}
    done = 0
    for counts in count_blocks(n, n_boot, seed):
        block = CountBlock(counts)
        for arm, arm_scorers in scorers.items():
            per_seed = [s.scores(metrics, block) for s in arm_scorers]
            arm_draws = draws[len(arm_scorers)][done : done + len(block)] if resample_seeds else None
            for metric in metrics:
                values = np.array([v[metric] for v in per_seed]).reshape(len(per_seed), len(block))
                blocks[(arm, metric)].append(seed_mean(values, arm_draws))
        done += len(block)
    out.resampled = {key: np.concatenate(parts) if parts else np.empty(0) for key, parts in blocks.items()}
    return out


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def arm_stats(boot: GroupBootstrap, arm: str, metric: str, confidence: float = 0.95) -> ArmStats:
    """Seed-mean value, seed std (ddof=1; 0 for one seed) and percentile CI of the seed-mean."""
    observed = boot.observed[(arm, metric)]
    std = float(np.std(observed, ddof=1)) if len(observed) > 1 else 0.0
    resampled = boot.resampled[(arm, metric)]
    low, high = percentile_interval(resampled, confidence)
    return ArmStats(len(observed), _mean(observed), std, low, high, int((~np.isnan(resampled)).sum()))


def two_sided_p(deltas: np.ndarray) -> float:
    """Two-sided bootstrap p of "delta = 0" from valid resampled deltas (NaN when none):
    ``min(1, 2 * min((1 + #{d <= 0}) / (1 + n), (1 + #{d >= 0}) / (1 + n)))``. The +1s keep p > 0
    with a finite number of resamples."""
    n = len(deltas)
    if n == 0:
        return math.nan
    low = (1 + np.sum(deltas <= 0)) / (1 + n)
    high = (1 + np.sum(deltas >= 0)) / (1 + n)
    return float(min(1.0, 2.0 * min(low, high)))


def one_sided_p(deltas: np.ndarray, margin: float = 0.0) -> float:
    """One-sided bootstrap p of "delta <= margin" from valid resampled deltas (NaN when none):
    ``(1 + #{d <= margin}) / (1 + n)``; small when the advantage over ``margin`` is stable."""
    n = len(deltas)
    if n == 0:
        return math.nan
    return float((1 + np.sum(deltas <= margin)) / (1 + n))


def paired_comparison(
    boot: GroupBootstrap, arm_a: str, arm_b: str, metric: str, confidence: float = 0.95
) -> Comparison:
    """``seed-mean(A) - seed-mean(B)`` with its percentile CI and two-sided p over shared resamples."""
    obs_a, obs_b = boot.observed[(arm_a, metric)], boot.observed[(arm_b, metric)]
    mean_a, mean_b = _mean(obs_a), _mean(obs_b)
    deltas = boot.resampled[(arm_a, metric)] - boot.resampled[(arm_b, metric)]
    valid = deltas[~np.isnan(deltas)]
    low, high = percentile_interval(valid, confidence)
    return Comparison(
        mean_a, mean_b, mean_a - mean_b, low, high, two_sided_p(valid), len(valid), len(deltas) - len(valid)
    )


def compare_arms(
    runs_a: Sequence[ArmRun],
    runs_b: Sequence[ArmRun],
    specs: Mapping[str, TaskSpec],
    metric: str,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    resample_seeds: bool = True,
) -> Comparison:
    """Paired comparison of two arms' runs (same group, same test memes): A minus B."""
    arm_a, arm_b = {r.arm for r in runs_a}, {r.arm for r in runs_b}
    if len(arm_a) != 1 or len(arm_b) != 1 or arm_a == arm_b:
        raise ValueError("compare_arms expects the runs of two different arms")
    boot = bootstrap_group(
        [*runs_a, *runs_b], specs, [metric], n_boot=n_boot, seed=seed, resample_seeds=resample_seeds
    )
    return paired_comparison(boot, arm_a.pop(), arm_b.pop(), metric, confidence)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1); NaN stays NaN and does
    not count as a hypothesis."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = len(valid)
    running = 0.0
    for rank, i in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out
