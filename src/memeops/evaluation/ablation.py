"""Ablation statistics, mechanism checks, GatedCLIP / MGMCF diagnostics and the ablation report files.

Stage ``ablate`` trains every ablation arm over several seeds, selects each run on the validation
split and hands this module one :class:`ArmRun` per (group, arm, seed) with that run's TEST-split
predictions. Everything here is a pure function of those predictions (no training, no tracking).

Statistics (:func:`summarise`):

* an arm's value is the mean over its seeds of the metric on the whole test split; ``std`` is the
  standard deviation over seeds (ddof=1, 0 for one seed): the **seed variability**;
* its interval is a percentile bootstrap over test memes: each resample draws meme indices with
  replacement and applies the *same* indices to every seed's predictions, then averages over seeds.
  This captures **test-set sampling variability** with the seeds averaged out (it does not widen
  for seed noise; ``std`` reports that);
* arm A vs arm B is paired: the same resampled memes for both arms and all their seeds; the
  two-sided p-value is ``min(1, 2 * min((1 + #{delta* <= 0}) / (1 + n_valid),
  (1 + #{delta* >= 0}) / (1 + n_valid)))``, where resamples with an undefined metric (e.g. AUROC
  of a one-class resample) are skipped and counted; within a group and metric the p-values of the
  non-reference arms are Holm-Bonferroni adjusted.

The resample indices depend only on (number of memes, ``n_boot``, ``seed``), so the same settings
give the same resamples in :func:`summarise`, :func:`check_claims` and :func:`robustness_verdict`:
their raw p-values for the same pair of arms agree.

Speed: metrics are computed for a whole block of resamples at once from a resample-count matrix
``W [B, N]`` (how often each meme is drawn): weighted confusion counts are ``W @ one_hot`` and
AUROC is a weighted Mann-Whitney statistic over the scores sorted once (ties averaged), so a
group of ~10 arms x 3 seeds x 10 tasks x 400 memes x 1000 resamples takes seconds.

Report files (:func:`write_ablation_reports`) follow the contract of :mod:`memeops.evaluation.report`
(``ablations.csv``, ``ablations.md``, ``figures/*.png``); every sentence of the Markdown is generated
from the numbers.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from memeops.evaluation.metrics import MULTI_THRESHOLD, Predictions, labelled_mask
from memeops.models.base import TaskSpec

MEAN_MACRO_F1 = "mean/macro_f1"
SUPPORTED, NOT_SIGNIFICANT, CONTRADICTED, NOT_RUN = "supported", "not significant", "contradicted", "not run"
FALLS_BACK, COLLAPSES = "falls back to global features", "collapses below global-only"
SUMMARY_COLUMNS = (
    "group",
    "arm",
    "metric",
    "n_seeds",
    "mean",
    "std",
    "ci_low",
    "ci_high",
    "delta",
    "delta_ci_low",
    "delta_ci_high",
    "p_value",
    "p_holm",
    "significant",
)
CSV_COLUMNS = (
    "group",
    "arm",
    "description",
    "n_seeds",
    "mean",
    "std",
    "ci_low",
    "ci_high",
    "delta",
    "p_value",
    "p_holm",
    "significant",
)
# Elements of one resample block ([B, N] count matrix): bounds memory for large test splits.
_BLOCK_ELEMENTS = 2_000_000


@dataclass(frozen=True)
class ArmRun:
    """One trained run of an ablation arm: its TEST-split predictions and how it was selected."""

    group: str  # e.g. "mgmcf", "gatedclip"
    arm: str  # e.g. "full", "no_object_level", "text_only"
    seed: int
    predictions: Predictions  # TEST split; every run of a group covers the same memes in the same order
    val_metrics: Mapping[str, float]  # "task/metric" -> value on val (what selection saw)
    best_epoch: int
    seconds: float


# --------------------------------------------------------------------------- metrics by name


def parse_metric(name: str, specs: Mapping[str, TaskSpec]) -> tuple[str | None, str]:
    """``(task or None for "mean", statistic)``; raises ValueError for names no run could have.

    Supported: ``mean/macro_f1``; ``<task>/macro_f1`` (single- and multi-label); ``<task>/accuracy``
    (single-label); ``<task>/subset_accuracy`` (multi-label); ``<task>/auroc`` (binary only). A task
    the *specs* lack is a configuration error; a task an *arm* lacks is NaN (see :func:`metric_value`).
    """
    if name == MEAN_MACRO_F1:
        return None, "macro_f1"
    task, sep, stat = name.rpartition("/")
    if not sep or task not in specs:
        raise ValueError(f"metric {name!r}: expected 'mean/macro_f1' or '<task>/<metric>' with a known task")
    spec = specs[task]
    allowed = {"macro_f1", "accuracy"} | ({"auroc"} if spec.is_binary else set())
    if spec.kind == "multi":
        allowed = {"macro_f1", "subset_accuracy"}
    if stat not in allowed:
        raise ValueError(f"metric {name!r}: {spec.kind}-label task {task!r} supports {sorted(allowed)}")
    return task, stat


@dataclass
class _Task:
    """One task of one run prepared for weighted (resample-count) metrics over its labelled rows."""

    spec: TaskSpec
    rows: np.ndarray  # [n] positions of the labelled memes
    # [n, 3L (+1)]: [hit | pred | true (| exact)], so one matmul with the counts gives every
    # confusion count: hit = pred * true (true positives), pred = one-hot arg-max (single) or
    # prob >= 0.5 (multi), true = gold one-hot / 0-1 labels, exact = all labels right (multi)
    indicators: np.ndarray  # float32: exact for 0/1 values and counts below 2**24
    # binary AUROC: rows sorted by score; each row's tie group [start, end) in that order
    order: np.ndarray | None = None
    tie_start: np.ndarray | None = None
    tie_end: np.ndarray | None = None
    positive: np.ndarray | None = None  # [n, 1] 0/1, sorted order


def _prepare_task(probs: np.ndarray, targets: np.ndarray, spec: TaskSpec) -> _Task:
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets)
    if probs.ndim != 2 or probs.shape[1] != spec.num_labels or len(probs) != len(targets):
        raise ValueError(f"{spec.name}: probs {probs.shape} do not match targets {targets.shape} / spec")
    rows = np.flatnonzero(labelled_mask(targets, spec))
    p, y = probs[rows], targets[rows]
    n_labels = spec.num_labels
    if spec.kind == "multi":
        pred = (p >= MULTI_THRESHOLD).astype(np.float64)
        true = y.astype(np.float64)
        exact = (pred == true).all(axis=1, keepdims=True).astype(np.float64)
        return _Task(spec, rows, np.hstack([pred * true, pred, true, exact]).astype(np.float32))
    y = y.astype(np.int64)
    if len(y) and (y.min() < 0 or y.max() >= n_labels):
        raise ValueError(f"{spec.name}: targets outside 0..{n_labels - 1}")
    eye = np.eye(n_labels)
    pred, true = eye[p.argmax(axis=1)], eye[y]
    task = _Task(spec, rows, np.hstack([pred * true, pred, true]).astype(np.float32))
    if spec.is_binary:
        # AUROC uses P(label 1) as the score (the project's convention); ties are found once here.
        scores = p[:, 1]
        order = np.argsort(scores, kind="stable")
        _, first, inverse, counts = np.unique(
            scores[order], return_index=True, return_inverse=True, return_counts=True
        )
        task.order, task.tie_start = order, first[inverse]
        task.tie_end = task.tie_start + counts[inverse]
        task.positive = (y[order] == 1).astype(np.float32)[:, None]
    return task


class _Block:
    """One block of resamples as meme counts ``[N, B]`` (float32: integer counts are exact below 2**24;
    memes on the first axis so row gathers and cumulative sums run over contiguous memory), with its
    gathers per labelled-row set: the runs of a group usually share each task's labelled rows (same
    memes, same targets), so ``counts[rows]`` is gathered once per task and block, not once per run.
    """

    def __init__(self, counts: np.ndarray):
        self.counts = counts
        self._rows: dict[bytes, np.ndarray] = {}

    def __len__(self) -> int:
        return self.counts.shape[1]

    def rows(self, rows: np.ndarray) -> np.ndarray:
        key = rows.tobytes()
        if key not in self._rows:
            self._rows[key] = self.counts[rows]
        return self._rows[key]


def _weighted_auroc(task: _Task, weights: np.ndarray) -> np.ndarray:
    """``[B]`` AUROC for count-weighted rows: sum over (pos, neg) pairs of w_p w_n ([s_p > s_n] + .5 [tie])
    over W_pos * W_neg = the Mann-Whitney U of the resample with average ranks for ties (sklearn's
    value). NaN where a resample has a single class."""
    assert task.order is not None and task.positive is not None
    assert task.tie_start is not None and task.tie_end is not None
    w = weights[task.order]  # [n, B], rows by ascending score
    pos_w = w * task.positive
    neg_w = w - pos_w
    neg_before = np.zeros((w.shape[0] + 1, w.shape[1]), dtype=w.dtype)
    np.cumsum(neg_w, axis=0, out=neg_before[1:])  # neg_before[k] = negative weight of rows < k
    below = neg_before[task.tie_start]  # negatives with a strictly lower score
    tied = neg_before[task.tie_end] - below  # negatives with the same score (count half)
    # counts and half-counts are exact in float32; their products need float64
    num = (pos_w.astype(np.float64) * (below + 0.5 * tied)).sum(axis=0)
    denom = pos_w.sum(axis=0, dtype=np.float64) * neg_w.sum(axis=0, dtype=np.float64)
    return np.divide(num, denom, out=np.full(w.shape[1], np.nan), where=denom > 0)


def _task_stat(task: _Task, stat: str, block: _Block, cache: dict[str, np.ndarray]) -> np.ndarray:
    """``[B]`` values of one statistic for each resample of ``block``; ``cache`` holds this task's
    confusion counts for the block, so accuracy and macro-F1 share one matmul."""
    w = block.rows(task.rows)
    if stat == "auroc":
        return _weighted_auroc(task, w)
    if "conf" not in cache:
        cache["conf"] = (task.indicators.T @ w).T.astype(np.float64)  # [B, 3L (+1)] weighted counts
        cache["n"] = w.sum(axis=0, dtype=np.float64)
    conf, n = cache["conf"], cache["n"]
    n_labels = task.spec.num_labels
    tp, n_pred, n_true = (conf[:, i * n_labels : (i + 1) * n_labels] for i in range(3))
    nan = np.full(len(n), np.nan)
    if stat == "accuracy":
        return np.divide(tp.sum(axis=1), n, out=nan, where=n > 0)
    if stat == "subset_accuracy":
        return np.divide(conf[:, -1], n, out=nan, where=n > 0)
    denom = n_pred + n_true
    f1 = np.divide(2.0 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    if task.spec.kind == "multi":  # sklearn macro with zero_division=0: every label counts
        return np.where(n > 0, f1.mean(axis=1), np.nan)
    present = (denom > 0).sum(axis=1)  # sklearn: the classes in targets or predictions
    return np.divide(f1.sum(axis=1), present, out=nan, where=present > 0)


class _Scorer:
    """Metrics of one run's predictions under resample-count weights (tasks prepared once)."""

    def __init__(self, predictions: Predictions, specs: Mapping[str, TaskSpec]):
        self.specs = specs
        self.tasks: dict[str, _Task] = {}
        for name, spec in specs.items():
            if name in predictions.probs and name in predictions.targets:
                self.tasks[name] = _prepare_task(predictions.probs[name], predictions.targets[name], spec)

    def scores(self, metrics: Sequence[str], block: _Block) -> dict[str, np.ndarray]:
        """``{metric: [B]}``; a task this run does not predict gives NaN."""
        stats: dict[tuple[str, str], np.ndarray] = {}
        task_cache: dict[str, dict[str, np.ndarray]] = {}

        def stat_of(task: str, stat: str) -> np.ndarray:
            if task not in self.tasks:
                return np.full(len(block), np.nan)
            if (task, stat) not in stats:
                stats[(task, stat)] = _task_stat(
                    self.tasks[task], stat, block, task_cache.setdefault(task, {})
                )
            return stats[(task, stat)]

        out = {}
        for metric in metrics:
            task, stat = parse_metric(metric, self.specs)
            if task is not None:
                out[metric] = stat_of(task, stat)
                continue
            # mean/macro_f1: over the tasks with labelled rows (in this resample), as all_metrics does
            if not self.specs:
                out[metric] = np.full(len(block), np.nan)
                continue
            per_task = np.array([stat_of(t, "macro_f1") for t in self.specs]).reshape(len(self.specs), -1)
            valid = ~np.isnan(per_task)
            k = valid.sum(axis=0)
            total = np.where(valid, per_task, 0.0).sum(axis=0)
            out[metric] = np.divide(total, k, out=np.full(len(block), np.nan), where=k > 0)
        return out


def metric_value(name: str, predictions: Predictions, specs: Mapping[str, TaskSpec]) -> float:
    """One metric by name on the whole split (= :func:`memeops.evaluation.metrics.all_metrics`).

    ``mean/macro_f1`` averages macro-F1 over the tasks with labelled rows (multi-label: per-label
    F1 at 0.5, averaged); a task the predictions lack is NaN, never an error.
    """
    block = _Block(np.ones((len(predictions), 1), dtype=np.float32))
    return float(_Scorer(predictions, specs).scores([name], block)[name][0])


# --------------------------------------------------------------------------- the bootstrap


def bootstrap_indices(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Resampled meme indices in blocks ``[b, n]`` (b <= n_boot, all blocks = n_boot rows).

    Depends only on (n, n_boot, seed): every comparison with the same settings sees the same
    resamples. Blocks bound the memory of the count matrices for large test splits.
    """
    rng = np.random.default_rng(seed)
    block = max(1, min(n_boot, _BLOCK_ELEMENTS // max(n, 1)))
    done = 0
    while done < n_boot:
        b = min(block, n_boot - done)
        yield rng.integers(0, n, size=(b, n))
        done += b


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """``[n, b]`` how often each meme is drawn in each of the ``b`` resamples of ``idx [b, n]`` (the
    weights of the weighted metrics)."""
    b = len(idx)
    flat = (idx * b + np.arange(b)[:, None]).ravel()
    return np.bincount(flat, minlength=n * b).reshape(n, b).astype(np.float32)


@dataclass
class GroupBootstrap:
    """Per-seed observed metrics and resampled seed-mean metrics of a group's arms.

    ``observed[(arm, metric)]``: ``[n_seeds]`` on the whole test split; ``resampled[(arm, metric)]``:
    ``[n_boot]`` seed-mean metric per resample (NaN where some seed's metric is undefined).
    """

    group: str
    arms: list[str]
    metrics: list[str]
    n_memes: int
    n_boot: int
    seed: int
    observed: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    resampled: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)


def _runs_by_arm(runs: Sequence[ArmRun]) -> dict[str, list[ArmRun]]:
    """Runs per arm, arms in order of first appearance."""
    out: dict[str, list[ArmRun]] = {}
    for run in runs:
        out.setdefault(run.arm, []).append(run)
    return out


def _runs_by_group(runs: Sequence[ArmRun]) -> dict[str, list[ArmRun]]:
    out: dict[str, list[ArmRun]] = {}
    for run in runs:
        out.setdefault(run.group, []).append(run)
    return out


def _check_same_memes(group: str, runs: Sequence[ArmRun]) -> int:
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
) -> GroupBootstrap:
    """Observed and resampled metrics of every arm in ``runs`` (one group), on shared resamples."""
    if not runs:
        raise ValueError("no runs to bootstrap")
    groups = {r.group for r in runs}
    if len(groups) != 1:
        raise ValueError(f"bootstrap_group expects the runs of one group, got {sorted(groups)}")
    group = runs[0].group
    metrics = list(metrics)
    for metric in metrics:
        parse_metric(metric, specs)  # fail early on a misspelled metric
    n = _check_same_memes(group, runs)
    by_arm = _runs_by_arm(runs)
    scorers = {arm: [_Scorer(r.predictions, specs) for r in arm_runs] for arm, arm_runs in by_arm.items()}
    out = GroupBootstrap(group, list(by_arm), metrics, n, n_boot, seed)
    ones = _Block(np.ones((n, 1), dtype=np.float32))
    for arm, arm_scorers in scorers.items():
        per_seed = [s.scores(metrics, ones) for s in arm_scorers]
        for metric in metrics:
            out.observed[(arm, metric)] = np.array([v[metric][0] for v in per_seed])
    blocks: dict[tuple[str, str], list[np.ndarray]] = {key: [] for key in out.observed}
    for idx in bootstrap_indices(n, n_boot, seed):
        block = _Block(_counts(idx, n))
        for arm, arm_scorers in scorers.items():
            per_seed = [s.scores(metrics, block) for s in arm_scorers]
            for metric in metrics:
                # a plain mean: one undefined seed makes the resample's seed-mean undefined (skipped)
                blocks[(arm, metric)].append(np.mean([v[metric] for v in per_seed], axis=0))
    out.resampled = {key: np.concatenate(parts) if parts else np.empty(0) for key, parts in blocks.items()}
    return out


@dataclass(frozen=True)
class ArmStats:
    """One arm's metric: seed-mean, seed std, bootstrap interval over test memes."""

    n_seeds: int
    mean: float
    std: float
    ci_low: float
    ci_high: float
    n_valid: int  # resamples where the metric was defined


@dataclass(frozen=True)
class Comparison:
    """Arm A minus arm B on one metric (paired over memes, seeds averaged)."""

    mean_a: float
    mean_b: float
    delta: float
    ci_low: float
    ci_high: float
    p_value: float  # two-sided
    n_valid: int
    n_skipped: int  # resamples where either arm's metric was undefined


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return math.nan, math.nan
    alpha = 1.0 - confidence
    low, high = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def _nanless_mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def arm_stats(boot: GroupBootstrap, arm: str, metric: str, confidence: float = 0.95) -> ArmStats:
    """Seed-mean value, seed std (ddof=1; 0 for one seed) and percentile CI of the seed-mean."""
    observed = boot.observed[(arm, metric)]
    std = float(np.std(observed, ddof=1)) if len(observed) > 1 else 0.0
    resampled = boot.resampled[(arm, metric)]
    low, high = _percentiles(resampled, confidence)
    return ArmStats(len(observed), _nanless_mean(observed), std, low, high, int((~np.isnan(resampled)).sum()))


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


def paired_comparison(
    boot: GroupBootstrap, arm_a: str, arm_b: str, metric: str, confidence: float = 0.95
) -> Comparison:
    """``seed-mean(A) - seed-mean(B)`` with its percentile CI and two-sided p over shared resamples."""
    obs_a, obs_b = boot.observed[(arm_a, metric)], boot.observed[(arm_b, metric)]
    mean_a, mean_b = _nanless_mean(obs_a), _nanless_mean(obs_b)
    deltas = boot.resampled[(arm_a, metric)] - boot.resampled[(arm_b, metric)]
    valid = deltas[~np.isnan(deltas)]
    low, high = _percentiles(valid, confidence)
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
) -> Comparison:
    """Paired comparison of two arms' runs (same group, same test memes): A minus B."""
    arm_a, arm_b = {r.arm for r in runs_a}, {r.arm for r in runs_b}
    if len(arm_a) != 1 or len(arm_b) != 1 or arm_a == arm_b:
        raise ValueError("compare_arms expects the runs of two different arms")
    boot = bootstrap_group([*runs_a, *runs_b], specs, [metric], n_boot=n_boot, seed=seed)
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


# --------------------------------------------------------------------------- the summary


def summarise(
    runs: Sequence[ArmRun],
    specs: Mapping[str, TaskSpec],
    metrics: Sequence[str],
    reference: str = "full",
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    references: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """One row per (group, arm, metric): seed-mean, seed std, bootstrap CI and the paired comparison
    with the group's reference arm (Holm-adjusted over the group's other arms per metric).

    The reference is ``references[group]`` when given, else ``reference``.

    Columns :data:`SUMMARY_COLUMNS`; groups and arms in order of first appearance in ``runs``. The
    reference arm's delta / p are NaN and ``significant`` False. Settings are kept in ``.attrs``.
    ``mean/macro_f1`` of an arm that predicts fewer tasks averages over the tasks it has: compare
    such arms on per-task metrics.
    """
    rows: list[dict[str, Any]] = []
    alpha = 1.0 - confidence
    group_refs: dict[str, str] = {}
    for group, group_runs in _runs_by_group(runs).items():
        arms = list(_runs_by_arm(group_runs))
        ref = group_refs[group] = (references or {}).get(group, reference)
        if ref not in arms:
            raise ValueError(f"group {group!r} has no reference arm {ref!r} (arms: {', '.join(arms)})")
        boot = bootstrap_group(group_runs, specs, metrics, n_boot=n_boot, seed=seed)
        others = [a for a in arms if a != ref]
        for metric in metrics:
            comps = {arm: paired_comparison(boot, arm, ref, metric, confidence) for arm in others}
            adjusted = dict(zip(others, holm([comps[a].p_value for a in others]), strict=True))
            for arm in arms:
                st = arm_stats(boot, arm, metric, confidence)
                comp = comps.get(arm)
                p_holm = adjusted.get(arm, math.nan)
                rows.append(
                    {
                        "group": group,
                        "arm": arm,
                        "metric": metric,
                        "n_seeds": st.n_seeds,
                        "mean": st.mean,
                        "std": st.std,
                        "ci_low": st.ci_low,
                        "ci_high": st.ci_high,
                        "delta": comp.delta if comp else math.nan,
                        "delta_ci_low": comp.ci_low if comp else math.nan,
                        "delta_ci_high": comp.ci_high if comp else math.nan,
                        "p_value": comp.p_value if comp else math.nan,
                        "p_holm": p_holm,
                        "significant": bool(p_holm < alpha),  # NaN < x is False
                    }
                )
    frame = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    frame.attrs.update(
        {
            "reference": reference,
            "references": group_refs,
            "n_boot": n_boot,
            "seed": seed,
            "confidence": confidence,
        }
    )
    return frame


# --------------------------------------------------------------------------- mechanism checks


def _verdict(delta: float, p: float, alpha: float) -> str:
    if not math.isnan(p) and p < alpha:
        if delta > 0:
            return SUPPORTED
        if delta < 0:
            return CONTRADICTED
    return NOT_SIGNIFICANT


def check_claims(
    runs: Sequence[ArmRun],
    specs: Mapping[str, TaskSpec],
    claims: Sequence[Mapping[str, str]],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> list[dict[str, Any]]:
    """Test each pre-stated mechanism claim "``better`` beats ``worse`` on ``metric`` in ``group``".

    Verdict: "supported" (delta > 0, raw two-sided p < 1 - confidence), "contradicted" (delta < 0,
    p < 1 - confidence), "not significant", or "not run" (a group / arm is missing, or the metric is
    undefined for an arm) with the reason. The p-value is not multiplicity-adjusted: each claim is one
    stated hypothesis. Same resamples as :func:`summarise` with the same settings.
    """
    alpha = 1.0 - confidence
    by_group = {g: _runs_by_arm(rs) for g, rs in _runs_by_group(runs).items()}
    needed: dict[str, tuple[set[str], set[str]]] = {}
    records: list[dict[str, Any]] = []
    for claim in claims:
        absent = [k for k in ("group", "better", "worse", "metric") if k not in claim]
        if absent:
            raise ValueError(f"claim {claim.get('claim', claim)!r} lacks {', '.join(absent)}")
        rec: dict[str, Any] = {
            "claim": str(claim.get("claim", "")),
            "group": str(claim["group"]),
            "better": str(claim["better"]),
            "worse": str(claim["worse"]),
            "metric": str(claim["metric"]),
            "better_mean": math.nan,
            "worse_mean": math.nan,
            "delta": math.nan,
            "delta_ci_low": math.nan,
            "delta_ci_high": math.nan,
            "p_value": math.nan,
            "n_valid": 0,
            "alpha": alpha,
            "verdict": NOT_RUN,
            "reason": "",
        }
        parse_metric(rec["metric"], specs)
        arms = by_group.get(rec["group"])
        missing = [] if arms is None else [a for a in (rec["better"], rec["worse"]) if a not in arms]
        if arms is None:
            rec["reason"] = f"group {rec['group']!r} has no runs"
        elif missing:
            rec["reason"] = f"arm(s) {', '.join(missing)} not run in group {rec['group']!r}"
        else:
            arm_set, metric_set = needed.setdefault(rec["group"], (set(), set()))
            arm_set.update((rec["better"], rec["worse"]))
            metric_set.add(rec["metric"])
        records.append(rec)
    boots = {
        group: bootstrap_group(
            [r for a in by_group[group] if a in arm_set for r in by_group[group][a]],
            specs,
            sorted(metric_set),
            n_boot=n_boot,
            seed=seed,
        )
        for group, (arm_set, metric_set) in needed.items()
    }
    for rec in records:
        if rec["reason"]:
            continue
        comp = paired_comparison(boots[rec["group"]], rec["better"], rec["worse"], rec["metric"], confidence)
        rec.update(
            better_mean=comp.mean_a,
            worse_mean=comp.mean_b,
            delta=comp.delta,
            delta_ci_low=comp.ci_low,
            delta_ci_high=comp.ci_high,
            p_value=comp.p_value,
            n_valid=comp.n_valid,
        )
        if math.isnan(comp.delta):
            rec["reason"] = f"{rec['metric']} is undefined for {rec['better']} or {rec['worse']}"
            continue
        rec["verdict"] = _verdict(comp.delta, comp.p_value, alpha)
        rec["reason"] = (
            f"delta {comp.delta:+.4f} [{comp.ci_low:+.4f}, {comp.ci_high:+.4f}], "
            f"p={comp.p_value:.4g} vs alpha {alpha:g} ({comp.n_valid} valid resamples)"
        )
    return records


# --------------------------------------------------------------------------- GatedCLIP gate


def _one_arm(runs: Sequence[ArmRun], extra: str) -> list[ArmRun]:
    """The runs exposing ``extras[extra]``; they must all belong to one (group, arm)."""
    exposing = [r for r in runs if extra in r.predictions.extras]
    if not exposing:
        raise ValueError(f"no run exposes extras[{extra!r}]")
    arms = {(r.group, r.arm) for r in exposing}
    if len(arms) != 1:
        raise ValueError(f"expected the runs of one arm, got {sorted(arms)}")
    return exposing


def _meme_ids(run: ArmRun) -> list[str]:
    ids = run.predictions.meme_ids
    return [str(m) for m in ids] if ids is not None else [str(i) for i in range(len(run.predictions))]


def gate_per_meme(runs: Sequence[ArmRun]) -> pd.Series:
    """The GatedCLIP gate per test meme (1 = image, 0 = text), averaged over the arm's seeds; indexed by
    meme id. Averaging removes one seed's idiosyncrasies from the per-meme reading."""
    gated = _one_arm(runs, "gate")
    n = _check_same_memes(gated[0].group, gated)
    gates = np.stack([np.asarray(r.predictions.extras["gate"], dtype=np.float64).reshape(n) for r in gated])
    return pd.Series(gates.mean(axis=0), index=pd.Index(_meme_ids(gated[0]), name="meme_id"), name="gate")


def gate_class_values(
    runs: Sequence[ArmRun], specs: Mapping[str, TaskSpec], tasks: Sequence[str]
) -> dict[str, dict[str, np.ndarray]]:
    """``{task: {label: gates of the labelled test memes with that gold label}}`` (multi-label: memes
    with the label set; a meme counts once per label it has). Tasks without targets are left out."""
    gate = gate_per_meme(runs).to_numpy()
    preds = _one_arm(runs, "gate")[0].predictions
    out: dict[str, dict[str, np.ndarray]] = {}
    for task in tasks:
        if task not in specs:
            raise ValueError(f"unknown task {task!r}")
        spec = specs[task]
        if task not in preds.targets:
            continue
        targets = np.asarray(preds.targets[task])
        mask = labelled_mask(targets, spec)
        if spec.kind == "multi":
            out[task] = {lab: gate[mask & (targets[:, j] == 1)] for j, lab in enumerate(spec.labels)}
        else:
            out[task] = {lab: gate[mask & (targets == j)] for j, lab in enumerate(spec.labels)}
    return out


def _describe(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return dict.fromkeys(("mean", "std", "q25", "median", "q75"), math.nan)
    q25, median, q75 = np.percentile(values, [25, 50, 75])
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {
        "mean": float(values.mean()),
        "std": std,
        "q25": float(q25),
        "median": float(median),
        "q75": float(q75),
    }


def gate_by_class(
    runs: Sequence[ArmRun], specs: Mapping[str, TaskSpec], tasks: Sequence[str]
) -> pd.DataFrame:
    """Gate distribution per gold class over labelled test memes: task, label, n, mean, std (ddof=1,
    0 for one meme), q25, median, q75 (NaN stats for an empty class, kept so the table is complete)."""
    rows = [
        {"task": task, "label": label, "n": len(values), **_describe(values)}
        for task, per_label in gate_class_values(runs, specs, tasks).items()
        for label, values in per_label.items()
    ]
    return pd.DataFrame(rows, columns=["task", "label", "n", "mean", "std", "q25", "median", "q75"])


def _label_text(value: Any) -> str:
    """A gold label cell of the meme table as text (lists joined, null -> "")."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(str(v) for v in value)
    return str(value)


def gate_examples(runs: Sequence[ArmRun], memes: pd.DataFrame, k: int = 4) -> pd.DataFrame:
    """The ``k`` most image-leaning (highest gate) and ``k`` most text-leaning (lowest gate) test memes
    with their caption, language, image path and gold labels (``label_<task>`` columns of ``memes``).

    Columns: meme_id, leaning ("image" / "text"), gate, text, language, image_path (and
    source_root when the table has it), label_<task>... A meme is never listed under both leanings.
    """
    gate = gate_per_meme(runs)
    order = np.argsort(-gate.to_numpy(), kind="stable")
    image_pos = [int(p) for p in order[:k]]
    taken = set(image_pos)
    text_pos = [int(p) for p in order[::-1] if int(p) not in taken][:k]
    picked = pd.DataFrame(
        {
            "meme_id": [gate.index[p] for p in image_pos + text_pos],
            "leaning": ["image"] * len(image_pos) + ["text"] * len(text_pos),
            "gate": [float(gate.iloc[p]) for p in image_pos + text_pos],
        }
    )
    # the tasks the runs predict (the meme table carries every taxonomy task, most empty here)
    tasks = {t for run in runs for t in run.predictions.probs}
    label_cols = [c for c in memes.columns if str(c).startswith("label_") and str(c)[len("label_"):] in tasks]
    keep = [
        "meme_id",
        *[c for c in ("text", "language", "image_path", "source_root") if c in memes.columns],
        *label_cols,
    ]
    table = memes[keep].drop_duplicates("meme_id").assign(meme_id=lambda d: d["meme_id"].astype(str))
    out = picked.merge(table, on="meme_id", how="left")
    for col in ("text", "language", "image_path"):
        out[col] = out[col].fillna("") if col in out.columns else ""
    for col in label_cols:
        out[col] = out[col].map(_label_text)
    return out


@dataclass
class GateReport:
    """What the report shows about one GatedCLIP arm's gate."""

    group: str
    arm: str
    by_class: pd.DataFrame
    examples: pd.DataFrame
    values: dict[str, dict[str, np.ndarray]]
    image_root: Path | None = None
    figures: list[Path] = field(
        default_factory=list
    )  # drawn already (gate_report(figures_dir=)); else the writer draws


def gate_report(
    runs: Sequence[ArmRun],
    specs: Mapping[str, TaskSpec],
    tasks: Sequence[str],
    memes: pd.DataFrame | None = None,
    image_root: str | Path | None = None,
    k: int = 4,
    *,
    figures_dir: str | Path | None = None,
) -> GateReport:
    """Gate diagnostics of the runs of one arm (per-class table, examples when ``memes`` is given);
    with ``figures_dir``, also ``<group>_gate_by_class.png`` and (with examples)
    ``<group>_gate_examples.png`` drawn there."""
    gated = _one_arm(runs, "gate")
    examples = gate_examples(gated, memes, k) if memes is not None else pd.DataFrame()
    report = GateReport(
        gated[0].group,
        gated[0].arm,
        gate_by_class(gated, specs, tasks),
        examples,
        gate_class_values(gated, specs, tasks),
        Path(image_root) if image_root else None,
    )
    if figures_dir is not None:
        figs = Path(figures_dir)
        report.figures.append(
            plot_gate_by_class(report.values, figs / f"{slug(report.group)}_gate_by_class.png",
                               f"{report.group}/{report.arm}: gate by gold class")
        )  # fmt: skip
        if len(report.examples):
            report.figures.append(
                plot_gate_examples(report.examples, report.image_root, figs / f"{slug(report.group)}_gate_examples.png")
            )
    return report


# --------------------------------------------------------------------------- MGMCF robustness


def region_attention_mass(
    runs: Sequence[ArmRun], region_slots: slice | tuple[int, int], group: str | None = None
) -> dict[str, float]:
    """``{arm: mean attention mass on the region slots}``: ``extras["attention"][:, slots].sum(1)``
    averaged over memes and seeds. Arms without attention, or whose attention has no region slots
    (object level off), are left out rather than reported as 0."""
    slots = region_slots if isinstance(region_slots, slice) else slice(*region_slots)
    selected = [r for r in runs if group is None or r.group == group]
    if len({r.group for r in selected}) > 1:
        raise ValueError("region_attention_mass: runs of several groups; pass group=")
    out: dict[str, float] = {}
    for arm, arm_runs in _runs_by_arm(selected).items():
        masses = []
        for run in arm_runs:
            att = run.predictions.extras.get("attention")
            if att is None:
                continue
            att = np.asarray(att, dtype=np.float64)
            stop = slots.stop if slots.stop is not None else att.shape[1]
            if att.ndim != 2 or att.shape[1] < stop or att[:, slots].shape[1] == 0:
                continue
            masses.append(float(att[:, slots].sum(axis=1).mean()))
        if masses:
            out[arm] = float(np.mean(masses))
    return out


def _summary_group(summary: pd.DataFrame, group: str | None) -> pd.DataFrame:
    groups = list(dict.fromkeys(summary["group"]))
    if group is None:
        if len(groups) != 1:
            raise ValueError(f"summary has groups {groups}; pass group=")
        group = groups[0]
    return summary[summary["group"] == group]


def robustness_frame(
    summary: pd.DataFrame,
    levels: Sequence[tuple[str, str]],
    fallback_arm: str,
    metric: str,
    attention: Mapping[str, float] | None = None,
    group: str | None = None,
) -> pd.DataFrame:
    """The robustness curve: one row per level (level, arm, n_seeds, mean, ci_low, ci_high and, with
    ``attention``, region_attention), in the given order; a level whose arm was not run is NaN.
    ``.attrs["fallback"]`` holds the global-only arm's mean and CI (the band of the plot)."""
    sub = _summary_group(summary, group)
    sub = sub[sub["metric"] == metric].set_index("arm")
    if fallback_arm not in sub.index:
        raise ValueError(f"fallback arm {fallback_arm!r} has no {metric} in the summary")
    rows = []
    for arm, label in levels:
        rec = sub.loc[arm] if arm in sub.index else None
        row = {"level": label, "arm": arm, "n_seeds": int(rec["n_seeds"]) if rec is not None else 0}
        for col in ("mean", "ci_low", "ci_high"):
            row[col] = float(rec[col]) if rec is not None else math.nan
        if attention is not None:
            row["region_attention"] = float(attention.get(arm, math.nan))
        rows.append(row)
    frame = pd.DataFrame(rows)
    fb = sub.loc[fallback_arm]
    frame.attrs["fallback"] = {
        "arm": fallback_arm,
        "mean": float(fb["mean"]),
        "ci_low": float(fb["ci_low"]),
        "ci_high": float(fb["ci_high"]),
    }
    frame.attrs["metric"] = metric
    return frame


def robustness_verdict(
    runs: Sequence[ArmRun],
    specs: Mapping[str, TaskSpec],
    levels: Sequence[tuple[str, str]],
    fallback_arm: str,
    metric: str,
    *,
    group: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Does the most degraded region source fall back to global features or collapse below them?

    Compares the last level of ``levels`` that was run with ``fallback_arm`` (paired bootstrap,
    two-sided): "collapses below global-only" when it is significantly below (delta < 0,
    p < 1 - confidence), else "falls back to global features"; "not run" when an arm is missing.
    """
    alpha = 1.0 - confidence
    selected = [r for r in runs if group is None or r.group == group]
    if len({r.group for r in selected}) > 1:
        raise ValueError("robustness_verdict: runs of several groups; pass group=")
    by_arm = _runs_by_arm(selected)
    run_levels = [(arm, label) for arm, label in levels if arm in by_arm]
    out: dict[str, Any] = {
        "metric": metric,
        "fallback_arm": fallback_arm,
        "alpha": alpha,
        "verdict": NOT_RUN,
        "degraded_arm": None,
        "degraded_level": None,
        "degraded_mean": math.nan,
        "fallback_mean": math.nan,
        "delta": math.nan,
        "delta_ci_low": math.nan,
        "delta_ci_high": math.nan,
        "p_value": math.nan,
        "text": "",
    }
    if not run_levels or fallback_arm not in by_arm:
        out["text"] = (
            f"not run: needs a degraded level and {fallback_arm!r} (runs: {', '.join(by_arm) or 'none'})"
        )
        return out
    arm, label = run_levels[-1]
    comp = compare_arms(
        by_arm[arm], by_arm[fallback_arm], specs, metric, n_boot=n_boot, seed=seed, confidence=confidence
    )
    collapsed = comp.delta < 0 and comp.p_value < alpha
    out.update(
        degraded_arm=arm,
        degraded_level=label,
        degraded_mean=comp.mean_a,
        fallback_mean=comp.mean_b,
        delta=comp.delta,
        delta_ci_low=comp.ci_low,
        delta_ci_high=comp.ci_high,
        p_value=comp.p_value,
        verdict=COLLAPSES if collapsed else FALLS_BACK,
    )
    relation = "significantly below" if collapsed else "not significantly below"
    out["text"] = (
        f"{label} ({arm}) {metric} {comp.mean_a:.3f} vs global-only ({fallback_arm}) {comp.mean_b:.3f}: "
        f"delta {comp.delta:+.3f} [{comp.ci_low:+.3f}, {comp.ci_high:+.3f}], p={comp.p_value:.3g} "
        f"({relation} at alpha {alpha:g}) -> {out['verdict']}"
    )
    return out


@dataclass
class RobustnessReport:
    """The MGMCF robustness curve, its verdict and the global-only band."""

    group: str
    metric: str
    frame: pd.DataFrame
    verdict: dict[str, Any]
    fallback_arm: str
    fallback_mean: float
    fallback_ci: tuple[float, float]
    figure: Path | None = None  # drawn already (robustness_report(figures_dir=)); else the writer draws it


def robustness_report(
    runs: Sequence[ArmRun],
    specs: Mapping[str, TaskSpec],
    summary: pd.DataFrame,
    levels: Sequence[tuple[str, str]],
    fallback_arm: str,
    metric: str,
    group: str | None = None,
    region_slots: slice | tuple[int, int] | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    figures_dir: str | Path | None = None,
) -> RobustnessReport:
    """Curve (:func:`robustness_frame`) + verdict (:func:`robustness_verdict`) of one group (the
    runs' only group, or ``group``); with ``figures_dir``, ``<group>_robustness.png`` drawn there."""
    if group is None:
        groups = list(dict.fromkeys(r.group for r in runs))
        if len(groups) != 1:
            raise ValueError(f"robustness_report: runs of groups {groups}; pass group=")
        group = groups[0]
    attention = region_attention_mass(runs, region_slots, group) if region_slots is not None else None
    frame = robustness_frame(summary, levels, fallback_arm, metric, attention, group)
    verdict = robustness_verdict(
        runs,
        specs,
        levels,
        fallback_arm,
        metric,
        group=group,
        n_boot=n_boot,
        seed=seed,
        confidence=confidence,
    )
    fb = frame.attrs["fallback"]
    report = RobustnessReport(
        group, metric, frame, verdict, fallback_arm, fb["mean"], (fb["ci_low"], fb["ci_high"])
    )
    if figures_dir is not None:
        report.figure = plot_robustness(
            report.frame, report.fallback_mean, report.fallback_ci,
            Path(figures_dir) / f"{slug(group)}_robustness.png", metric,
        )  # fmt: skip
    return report


# --------------------------------------------------------------------------- figures


def _figure(width: float, height: float) -> Any:
    from memeops.evaluation.report import _figure as report_figure

    return report_figure(width, height)


def _save(fig: Any, path: Path) -> Path:
    from memeops.evaluation.report import _save as report_save

    return report_save(fig, Path(path))


def _font_for(text: str) -> Any:
    """A CJK-capable font when the text needs one (captions are multilingual), else None."""
    if not any(ord(ch) > 0x2FF for ch in text):
        return None
    from memeops.evaluation.report import _label_font

    return _label_font()


def _err(mean: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Error bar lengths; clipped at 0 because a seed-mean may sit just outside its percentile CI."""
    return np.clip(np.nan_to_num(np.vstack([mean - low, high - mean])), 0, None)


def plot_metric_bars(
    summary: pd.DataFrame, group: str, metric: str, path: str | Path, reference: str | None = None
) -> Path | None:
    """Horizontal bars per arm (seed-mean, CI error bars), the reference arm's mean as a dashed line,
    arms significantly different from it (Holm) marked with ``*`` and a different colour. None when
    the metric is undefined for every arm."""
    reference = (
        reference or summary.attrs.get("references", {}).get(group) or summary.attrs.get("reference", "full")
    )
    sub = summary[(summary["group"] == group) & (summary["metric"] == metric)]
    if sub.empty or sub["mean"].isna().all():
        return None
    mean = sub["mean"].to_numpy(float)
    err = _err(mean, sub["ci_low"].to_numpy(float), sub["ci_high"].to_numpy(float))
    sig = sub["significant"].to_numpy(bool)
    labels = [f"{arm} *" if s else str(arm) for arm, s in zip(sub["arm"], sig, strict=True)]
    colours = [
        "#dd8452" if s else ("#4c72b0" if a != reference else "#55a868")
        for a, s in zip(sub["arm"], sig, strict=True)
    ]
    fig = _figure(6.5, 0.45 * len(sub) + 1.4)
    ax = fig.subplots()
    y = np.arange(len(sub))[::-1]
    ax.barh(y, np.nan_to_num(mean), xerr=err, color=colours, capsize=3)
    ax.set_yticks(y, labels)
    ref = sub[sub["arm"] == reference]["mean"]
    if len(ref) and not math.isnan(float(ref.iloc[0])):
        ax.axvline(
            float(ref.iloc[0]), color="black", linestyle="--", linewidth=1, label=f"{reference} (reference)"
        )
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: bars reach any x
    ax.set_xlabel(f"{metric} (test, mean over seeds; 95% bootstrap CI)")
    ax.set_title(f"{group}: * = Holm-significant vs {reference}", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, Path(path))


def plot_gate_by_class(
    values: Mapping[str, Mapping[str, np.ndarray]],
    path: str | Path,
    title: str = "GatedCLIP gate by gold class",
) -> Path:
    """Box plots of the gate per gold class, one panel per task, a line at 0.5 (equal weighting).
    ``values`` as from :func:`gate_class_values`; classes without memes are left out of the panel."""
    tasks = list(values) or ["(no labelled task)"]
    fig = _figure(max(4.0, 3.2 * len(tasks)), 3.6)
    axes = np.atleast_1d(fig.subplots(1, len(tasks), sharey=True))
    for ax, task in zip(axes, tasks, strict=True):
        per_label = {lab: v for lab, v in values.get(task, {}).items() if len(v)}
        if per_label:
            ax.boxplot(
                list(per_label.values()), tick_labels=[f"{lab}\n(n={len(v)})" for lab, v in per_label.items()]
            )
        ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(task, fontsize=9)
        ax.tick_params(axis="x", labelsize=7, labelrotation=30)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("gate (1 = image, 0 = text)")
    fig.suptitle(title, fontsize=10)
    return _save(fig, Path(path))


def _resolve_image(row: Mapping[str, Any], image_root: Path | None) -> Path | None:
    """The meme's image file: absolute ``image_path``, ``image_root/image_path`` or
    ``image_root/source_root/image_path`` (the consolidated table's paths are relative to source_root)."""
    rel = str(row.get("image_path") or "")
    if not rel:
        return None
    candidates = [Path(rel)] if Path(rel).is_absolute() else []
    root = image_root or Path(".")
    candidates.append(root / rel)
    if row.get("source_root"):
        candidates.append(root / str(row["source_root"]) / rel)
    return next((c for c in candidates if c.is_file()), None)


def _tile(path: Path | None, size: int = 224) -> np.ndarray | None:
    """RGB thumbnail array, or None when the file is missing or unreadable (drawn as a grey tile)."""
    if path is None:
        return None
    try:
        from PIL import Image

        with Image.open(path) as img:
            img = img.convert("RGB")
            img.thumbnail((size, size))
            return np.asarray(img)
    except (OSError, ValueError):
        return None


def plot_gate_examples(
    examples: pd.DataFrame, image_root: str | Path | None, path: str | Path, caption_chars: int = 30
) -> Path:
    """A grid of the example memes (row 1 image-leaning, row 2 text-leaning), each titled with its
    leaning, gate and truncated caption; a missing image is a grey "image missing" tile."""
    root = Path(image_root) if image_root else None
    rows = [examples[examples["leaning"] == lean] for lean in ("image", "text")] if len(examples) else []
    rows = [r for r in rows if len(r)] or [examples]
    cols = max(1, max(len(r) for r in rows))
    fig = _figure(2.4 * cols, 2.9 * len(rows))
    axes = np.asarray(fig.subplots(len(rows), cols, squeeze=False))
    for ax in axes.ravel():
        ax.axis("off")
    for r, frame in enumerate(rows):
        for c, (_, rec) in enumerate(frame.iterrows()):
            ax = axes[r, c]
            tile = _tile(_resolve_image(rec, root))
            if tile is None:
                ax.imshow(np.full((224, 224, 3), 0.75))
                ax.text(112, 112, "image missing", ha="center", va="center", fontsize=8, color="#333333")
            else:
                ax.imshow(tile)
            caption = str(rec.get("text", "") or "").replace("\n", " ")
            caption = caption if len(caption) <= caption_chars else caption[: caption_chars - 1] + "…"
            title = f"{rec['leaning']}-leaning, gate {float(rec['gate']):.2f}\n{caption}"
            ax.set_title(title, fontsize=7, fontproperties=_font_for(title))
    fig.suptitle("GatedCLIP: most image- and text-leaning test memes", fontsize=10)
    return _save(fig, Path(path))


def plot_robustness(
    frame: pd.DataFrame,
    fallback_mean: float,
    fallback_ci: tuple[float, float],
    path: str | Path,
    metric: str | None = None,
) -> Path:
    """Metric vs region-source level with CI error bars, the global-only arm as a horizontal band
    (its CI) and line (its mean), and region attention mass on a twin axis when the frame has it."""
    metric = metric or frame.attrs.get("metric", "metric")
    fig = _figure(6.0, 3.8)
    ax = fig.subplots()
    x = np.arange(len(frame))
    mean = frame["mean"].to_numpy(float)
    ax.errorbar(
        x,
        mean,
        yerr=_err(mean, frame["ci_low"].to_numpy(float), frame["ci_high"].to_numpy(float)),
        marker="o",
        capsize=4,
        color="#4c72b0",
        label="with regions",
    )
    if not any(math.isnan(v) for v in fallback_ci):
        ax.axhspan(fallback_ci[0], fallback_ci[1], color="#dd8452", alpha=0.2)
    if not math.isnan(fallback_mean):
        ax.axhline(fallback_mean, color="#dd8452", linestyle="--", label="global features only")
    ax.set_xticks(x, [str(v) for v in frame["level"]])
    ax.set_ylabel(f"{metric} (test)")
    ax.set_xlabel("region source")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if "region_attention" in frame.columns and frame["region_attention"].notna().any():
        twin = ax.twinx()
        twin.plot(
            x,
            frame["region_attention"].to_numpy(float),
            marker="s",
            color="#55a868",
            linestyle=":",
            label="attention on regions",
        )
        twin.set_ylabel("mean attention mass on regions")
        twin.set_ylim(0, 1)
        more = twin.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, fontsize=7, loc="lower left")
    return _save(fig, Path(path))


# --------------------------------------------------------------------------- writers


def slug(text: str) -> str:
    """File-name-safe form of a metric / group name (``mean/macro_f1`` -> ``mean_macro_f1``)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "x"


def _f(value: Any, digits: int = 3, sign: bool = False) -> str:
    """A number for Markdown (``–`` for NaN / None)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "–"
    if math.isnan(v):
        return "–"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def _p(value: Any) -> str:
    v = float(value) if value is not None else math.nan
    if math.isnan(v):
        return "–"
    return "<0.001" if v < 0.001 else f"{v:.3f}"


def _cell(text: Any) -> str:
    """Markdown table cell text: the report's parser splits on every '|', so none may remain."""
    return str(text).replace("|", "/").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines + [""]


def value_cell(row: Mapping[str, Any]) -> str:
    """``mean ± std [ci_low, ci_high]`` as in ablations.md."""
    if math.isnan(float(row["mean"])):
        return "–"
    return f"{_f(row['mean'])} ± {_f(row['std'])} [{_f(row['ci_low'])}, {_f(row['ci_high'])}]"


def delta_cell(row: Mapping[str, Any]) -> str:
    """``Δ [CI], p (Holm)``, bold when Holm-significant; empty for the reference."""
    if math.isnan(float(row["delta"])):
        return "–"
    text = (
        f"{_f(row['delta'], sign=True)} [{_f(row['delta_ci_low'], sign=True)}, "
        f"{_f(row['delta_ci_high'], sign=True)}], p={_p(row['p_value'])} (Holm {_p(row['p_holm'])})"
    )
    return f"**{text}**" if bool(row["significant"]) else text


def _description(descriptions: Mapping[str, str] | None, group: str, arm: str) -> str:
    if not descriptions:
        return ""
    return str(descriptions.get(f"{group}/{arm}", descriptions.get(arm, "")))


def ablations_csv_frame(
    summary: pd.DataFrame, headline: str = MEAN_MACRO_F1, descriptions: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """The report page's ``ablations.csv``: one row per (group, arm) with the headline metric's
    statistics (:data:`CSV_COLUMNS`) and one column per other metric holding its mean."""
    if headline not in set(summary["metric"]):
        raise ValueError(f"headline metric {headline!r} is not in the summary")
    head = summary[summary["metric"] == headline].reset_index(drop=True)
    head = head.assign(
        description=[
            _description(descriptions, g, a) for g, a in zip(head["group"], head["arm"], strict=True)
        ]
    )
    out = head[list(CSV_COLUMNS)].copy()
    for metric in dict.fromkeys(summary["metric"]):
        if metric == headline:
            continue
        means = summary[summary["metric"] == metric].set_index(["group", "arm"])["mean"]
        out[metric] = [
            float(means.get((g, a), math.nan)) for g, a in zip(out["group"], out["arm"], strict=True)
        ]
    return out


def _rel(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


def _settings_line(summary: pd.DataFrame) -> str:
    attrs = summary.attrs
    seeds = sorted({int(v) for v in summary["n_seeds"]}) if len(summary) else []
    conf = attrs.get("confidence", 0.95)
    return (
        f"Test split; each arm is the mean over its seeds ({', '.join(map(str, seeds)) or '–'} per arm) "
        f"± the standard deviation over seeds; intervals are {conf:.0%} percentile bootstraps over test "
        f"memes ({attrs.get('n_boot', '?')} resamples, seed {attrs.get('seed', '?')}; the same memes for "
        f"every seed and arm: test-set sampling variability with seeds averaged). Δ is the paired "
        f"difference to the group's reference arm with a two-sided bootstrap p and its Holm adjustment "
        f"over the group's arms; **bold** = Holm p < {1 - conf:g}."
    )


def _group_markdown(
    summary: pd.DataFrame,
    group: str,
    reference: str,
    descriptions: Mapping[str, str] | None,
    charts: Sequence[Path],
    out_dir: Path,
) -> list[str]:
    """The group's table (one row per arm: ``mean ± std [CI]`` per metric, then ``Δ vs reference``
    per metric; split in two tables so each stays readable), findings, undefined metrics, charts."""
    sub = summary[summary["group"] == group]
    metrics = list(dict.fromkeys(sub["metric"]))
    arms = list(dict.fromkeys(sub["arm"]))
    has_desc = any(_description(descriptions, group, a) for a in arms)
    values, deltas = [], []
    for arm in arms:
        recs = sub[sub["arm"] == arm].set_index("metric")
        head: list[Any] = [arm, *([_description(descriptions, group, arm)] if has_desc else [])]
        values.append([*head, int(recs["n_seeds"].iloc[0]), *(value_cell(recs.loc[m]) for m in metrics)])
        if arm != reference:
            deltas.append([arm, *(delta_cell(recs.loc[m]) for m in metrics)])
    lines = [
        f"## {group}",
        "",
        "Test metrics, mean ± std over seeds [bootstrap CI]:",
        "",
        *_md_table(["arm", *(["description"] if has_desc else []), "seeds", *metrics], values),
    ]
    if deltas:
        lines += [
            f"Δ vs `{reference}` [CI], two-sided p (Holm):",
            "",
            *_md_table(["arm", *(f"Δ {m}" for m in metrics)], deltas),
        ]
    findings = []
    for metric in metrics:
        m = sub[(sub["metric"] == metric) & (sub["arm"] != reference)]
        sig = m[m["significant"]]
        if len(m):
            parts = [f"{a} ({_f(d, sign=True)})" for a, d in zip(sig["arm"], sig["delta"], strict=True)]
            findings.append(
                f"- {metric}: {len(sig)} of {len(m)} arms differ significantly from {reference} "
                f"after Holm" + (f": {', '.join(parts)}" if parts else "")
            )
    means = sub.set_index(["arm", "metric"])["mean"]
    for arm in arms:  # say which numbers are missing and why a mean over tasks may not be comparable
        undefined = [m for m in metrics if math.isnan(float(means[(arm, m)]))]
        if undefined:
            note = (
                f" (its {MEAN_MACRO_F1} averages only the tasks it predicts)"
                if MEAN_MACRO_F1 in metrics
                else ""
            )
            findings.append(f"- `{arm}` has no value for {', '.join(undefined)}{note}")
    lines += [*findings, ""] if findings else []
    for chart in charts:
        lines.append(f"- chart: `{_rel(chart, out_dir)}`")
    return [*lines, ""] if charts else lines


def _delta_with_ci(delta: Any, low: Any, high: Any) -> str:
    return f"{_f(delta, sign=True)} [{_f(low, sign=True)}, {_f(high, sign=True)}]"


def _claims_markdown(claims: Sequence[Mapping[str, Any]]) -> list[str]:
    if not claims:
        return []
    rows = [
        [
            c["claim"],
            c["group"],
            f"{c['better']} > {c['worse']}",
            c["metric"],
            f"{_f(c['better_mean'])} vs {_f(c['worse_mean'])}",
            _delta_with_ci(c["delta"], c["delta_ci_low"], c["delta_ci_high"]),
            _p(c["p_value"]),
            f"**{c['verdict']}**" + (f" ({c['reason']})" if c["verdict"] == NOT_RUN else ""),
        ]
        for c in claims
    ]
    alpha = next((c.get("alpha") for c in claims if c.get("alpha") is not None), 0.05)
    return [
        "## Mechanism checks",
        "",
        (
            f"Each claim is one paired two-sided test (raw p, alpha {alpha:g}): supported = better arm ahead "
            "and p < alpha; contradicted = behind and p < alpha."
        ),
        "",
        *_md_table(["claim", "group", "comparison", "metric", "means", "Δ [CI]", "p", "verdict"], rows),
    ]


def _gate_markdown(gate: GateReport, figures: Sequence[Path], out_dir: Path) -> list[str]:
    lines = [
        "## GatedCLIP gate",
        "",
        f"Gate of `{gate.group}/{gate.arm}` on labelled test memes, mean over seeds (1 = image, 0 = text).",
        "",
    ]
    rows = [
        [r.task, r.label, int(r.n), _f(r.mean), _f(r.std), _f(r.q25), _f(r.median), _f(r.q75)]
        for r in gate.by_class.itertuples()
    ]
    lines += _md_table(["task", "label", "n", "mean", "std", "q25", "median", "q75"], rows)
    for task, per in gate.by_class.groupby("task", sort=False):
        per = per.dropna(subset=["mean"])
        if len(per) >= 2:
            hi, lo = per.loc[per["mean"].idxmax()], per.loc[per["mean"].idxmin()]
            if hi["mean"] == lo["mean"]:
                lines.append(f"- {task}: every class has the same mean gate ({_f(hi['mean'])})")
                continue
            lines.append(
                f"- {task}: most image-weighted class {hi['label']} (mean {_f(hi['mean'])}), most "
                f"text-weighted {lo['label']} (mean {_f(lo['mean'])}); spread {_f(hi['mean'] - lo['mean'])}"
            )
    lines.append("")
    if len(gate.examples):
        label_cols = [c for c in gate.examples.columns if str(c).startswith("label_")]
        rows = [
            [
                r["leaning"],
                r["meme_id"],
                _f(r["gate"]),
                r.get("language", ""),
                str(r.get("text", ""))[:80],
                *[r[c] for c in label_cols],
            ]
            for _, r in gate.examples.iterrows()
        ]
        lines += [
            "Examples (highest and lowest gate):",
            "",
            *_md_table(["leaning", "meme", "gate", "language", "caption", *label_cols], rows),
        ]
    lines += [f"- figure: `{_rel(f, out_dir)}`" for f in figures]
    return [*lines, ""]


def _robustness_markdown(rob: RobustnessReport, figure: Path | None, out_dir: Path) -> list[str]:
    has_att = "region_attention" in rob.frame.columns
    rows = [
        [
            r["level"],
            r["arm"],
            _f(r["mean"]),
            f"[{_f(r['ci_low'])}, {_f(r['ci_high'])}]",
            *([_f(r["region_attention"])] if has_att else []),
        ]
        for _, r in rob.frame.iterrows()
    ]
    rows.append(
        [
            "global only",
            rob.fallback_arm,
            _f(rob.fallback_mean),
            f"[{_f(rob.fallback_ci[0])}, {_f(rob.fallback_ci[1])}]",
            *(["–"] if has_att else []),
        ]
    )
    header = ["level", "arm", rob.metric, "CI", *(["attention on regions"] if has_att else [])]
    v = rob.verdict
    lines = [
        "## MGMCF robustness",
        "",
        f"`{rob.group}`: {rob.metric} as the region source degrades.",
        "",
        *_md_table(header, rows),
        f"Verdict: **{v['verdict']}**. {v['text']}",
        "",
    ]
    if figure is not None:
        lines += [f"- figure: `{_rel(figure, out_dir)}`", ""]
    return lines


def write_ablation_reports(
    summary: pd.DataFrame,
    claims: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    headline: str = MEAN_MACRO_F1,
    gate: GateReport | None = None,
    robustness: RobustnessReport | None = None,
    figures_dir: str | Path | None = None,
    plots_dir: str | Path | None = None,
    descriptions: Mapping[str, str] | None = None,
    reference: str | None = None,
) -> list[Path]:
    """Write ``ablations.csv``, ``ablations.md``, per-group ``dvc plots`` CSVs and the PNG figures.

    Defaults: ``figures_dir = <out_dir>/figures`` (the report page embeds every PNG there),
    ``plots_dir = <out_dir>/plots/ablate``. ``descriptions`` maps ``arm`` or ``group/arm`` to a one-line
    description. Returns the written paths.
    """
    out = Path(out_dir)
    figs = Path(figures_dir) if figures_dir is not None else out / "figures"
    plots = Path(plots_dir) if plots_dir is not None else out / "plots" / "ablate"
    default_ref = reference or summary.attrs.get("reference", "full")
    group_refs = {} if reference else dict(summary.attrs.get("references", {}))
    for d in (out, figs, plots):
        d.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    csv_path = out / "ablations.csv"
    ablations_csv_frame(summary, headline, descriptions).to_csv(csv_path, index=False)
    written.append(csv_path)

    md = ["# Ablations", "", _settings_line(summary), ""]
    for group in dict.fromkeys(summary["group"]):
        ref = group_refs.get(group, default_ref)
        sub = summary[summary["group"] == group]
        long_path = plots / f"{slug(group)}.csv"
        sub[["arm", "metric", "mean", "ci_low", "ci_high"]].to_csv(long_path, index=False)
        charts = []
        for metric in dict.fromkeys(sub["metric"]):
            chart = plot_metric_bars(summary, group, metric, figs / f"{slug(group)}_{slug(metric)}.png", ref)
            if chart is not None:
                charts.append(chart)
        written += [long_path, *charts]
        md += _group_markdown(summary, group, ref, descriptions, charts, out)
    md += _claims_markdown(claims)
    if gate is not None and gate.figures:
        written += gate.figures
        md += _gate_markdown(gate, gate.figures, out)
    elif gate is not None:
        gate_figs = [
            plot_gate_by_class(
                gate.values,
                figs / f"{slug(gate.group)}_gate_by_class.png",
                f"{gate.group}/{gate.arm}: gate by gold class",
            )
        ]
        if len(gate.examples):
            gate_figs.append(
                plot_gate_examples(
                    gate.examples, gate.image_root, figs / f"{slug(gate.group)}_gate_examples.png"
                )
            )
        written += gate_figs
        md += _gate_markdown(gate, gate_figs, out)
    if robustness is not None and robustness.figure is not None:
        written.append(robustness.figure)
        md += _robustness_markdown(robustness, robustness.figure, out)
    elif robustness is not None:
        rob_fig = plot_robustness(
            robustness.frame,
            robustness.fallback_mean,
            robustness.fallback_ci,
            figs / f"{slug(robustness.group)}_robustness.png",
            robustness.metric,
        )
        written.append(rob_fig)
        md += _robustness_markdown(robustness, rob_fig, out)
    md_path = out / "ablations.md"
    md_path.write_text("\n".join(md).rstrip() + "\n", encoding="utf-8")
    written.append(md_path)
    return written


def _finite(value: Any) -> Any:
    """JSON-safe scalar: NaN / inf -> None, numpy -> Python."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def ablation_metrics_json(summary: pd.DataFrame, claims: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``reports/metrics/ablate.json`` for ``dvc metrics``: ``{group: {arm: {metric: mean}}}`` plus
    ``"claims": {slug(claim): {delta, delta_ci_low, delta_ci_high, p_value, verdict}}``; NaN -> None."""
    out: dict[str, Any] = {}
    for rec in summary.itertuples():
        out.setdefault(str(rec.group), {}).setdefault(str(rec.arm), {})[str(rec.metric)] = _finite(rec.mean)
    if claims:
        if "claims" in out:
            raise ValueError("a group named 'claims' collides with the claims entry of ablate.json")
        entries: dict[str, Any] = {}
        for i, c in enumerate(claims):
            key = slug(str(c.get("claim") or f"claim_{i}"))[:60]
            key = key if key not in entries else f"{key}_{i}"
            entries[key] = {
                k: _finite(c.get(k)) for k in ("delta", "delta_ci_low", "delta_ci_high", "p_value")
            }
            entries[key]["verdict"] = str(c.get("verdict", ""))
        out["claims"] = entries
    json.dumps(out, allow_nan=False)  # fails loudly here rather than as an invalid metrics file
    return out


__all__ = [
    "ArmRun",
    "ArmStats",
    "Comparison",
    "GateReport",
    "GroupBootstrap",
    "RobustnessReport",
    "ablation_metrics_json",
    "ablations_csv_frame",
    "arm_stats",
    "bootstrap_group",
    "bootstrap_indices",
    "check_claims",
    "compare_arms",
    "gate_by_class",
    "gate_class_values",
    "gate_examples",
    "gate_per_meme",
    "gate_report",
    "holm",
    "metric_value",
    "paired_comparison",
    "parse_metric",
    "plot_gate_by_class",
    "plot_gate_examples",
    "plot_metric_bars",
    "plot_robustness",
    "region_attention_mass",
    "robustness_frame",
    "robustness_report",
    "robustness_verdict",
    "summarise",
    "two_sided_p",
    "write_ablation_reports",
]
