"""Intervals and paired tests of one model's per-task metrics on one split (stage ``evaluate`` and
promotion), on the resamples and weighted metrics of this package.

* :func:`task_intervals`: percentile intervals of every metric of one task (and its ECE), labelled
  rows resampled (the resamples of a textbook one-resample-at-a-time loop with the same
  seed);
* :func:`mean_primary`: the mean over tasks of each task's primary metric (AUROC for binary tasks,
  macro-F1 otherwise), observed and resampled with memes drawn jointly for all tasks (a meme
  labelled for several tasks stays one unit; each task uses the labelled memes among the draws).
  Two models scored on the same memes with the same ``seed`` share the resamples, so their
  resampled values are paired (promotion's test: :func:`memeops.stats.paired.one_sided_p`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from memeops.stats.resample import count_blocks, percentile_interval
from memeops.stats.weighted import (
    WeightedTask,
    point_statistics,
    prepare_task,
    primary_statistic,
    weighted_ece,
    weighted_statistics,
)

if TYPE_CHECKING:  # a type only: models.base imports torch, this package must not
    from memeops.models.base import TaskSpec


@dataclass
class TaskArrays:
    """One task's predictions of one model, rows in a shared meme order."""

    spec: TaskSpec
    probs: np.ndarray  # [N, L]
    targets: np.ndarray  # single: [N] int (negative: missing); multi: [N, L] (all-negative rows missing)
    mask: np.ndarray  # [N] bool, labelled rows


def primary_value(spec: TaskSpec, probs: np.ndarray, targets: np.ndarray) -> float:
    """The task's primary metric on its labelled rows: AUROC for binary tasks, macro-F1 otherwise
    (multi-label: per-label F1 at 0.5, averaged); NaN without labelled rows."""
    return point_statistics(probs, targets, spec)[primary_statistic(spec)]


def _primary(task: WeightedTask, weights: np.ndarray) -> np.ndarray:
    stat = primary_statistic(task.spec)
    return weighted_statistics(task, weights, [stat])[stat]


def task_intervals(
    spec: TaskSpec,
    probs: np.ndarray,
    targets: np.ndarray,
    *,
    n_boot: int,
    seed: int,
    metrics: Sequence[str] | None = None,
    confidence: float = 0.95,
    calibration: tuple[np.ndarray, np.ndarray, int] | None = None,
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of the task's statistics (``metrics``: a subset; None: all) over its
    labelled rows resampled with replacement; resamples where a metric is undefined are skipped.

    ``calibration = (confidence, correct, n_bins)`` of the same rows (multi-label: one entry per
    (meme, label), row-major) adds ``ece``. Empty when ``n_boot`` is 0 or no row is labelled.
    """
    task = prepare_task(probs, targets, spec)
    n = len(task.rows)
    if n_boot == 0 or n == 0:
        return {}
    wanted = None if metrics is None else [m for m in metrics if m != "ece"]
    with_ece = calibration is not None and (metrics is None or "ece" in metrics)
    collected: dict[str, list[np.ndarray]] = {}
    for counts in count_blocks(n, n_boot, seed):
        values = weighted_statistics(task, counts, wanted) if wanted is None or wanted else {}
        if with_ece:
            assert calibration is not None
            conf, correct, n_bins = calibration
            values["ece"] = weighted_ece(conf, correct, counts, n_bins, per_row=len(conf) // n)
        for name, v in values.items():
            collected.setdefault(name, []).append(v)
    return {name: percentile_interval(np.concatenate(parts), confidence) for name, parts in collected.items()}


def mean_primary(
    arrays: Mapping[str, TaskArrays],
    tasks: Sequence[str] | None = None,
    rows: np.ndarray | None = None,
    *,
    n_boot: int = 0,
    seed: int = 0,
) -> tuple[dict[str, float], np.ndarray]:
    """``({task: primary metric on rows}, [n_boot] resampled mean over tasks)`` for the memes ``rows``
    (None: all) resampled jointly for ``tasks`` (None: those with a labelled meme among ``rows``).
    A resample's mean is NaN when a task's metric is undefined on it."""
    n_all = len(next(iter(arrays.values())).mask) if arrays else 0
    rows = np.arange(n_all) if rows is None else np.asarray(rows)
    names = [t for t, a in arrays.items() if a.mask[rows].any()] if tasks is None else list(tasks)
    prepared, keeps = {}, {}
    for name in names:
        a = arrays[name]
        keeps[name] = np.flatnonzero(a.mask[rows])
        sel = rows[keeps[name]]
        prepared[name] = prepare_task(a.probs[sel], a.targets[sel], a.spec)
    observed = {
        name: float(_primary(task, np.ones((len(keeps[name]), 1), dtype=np.float32))[0])
        for name, task in prepared.items()
    }
    if n_boot == 0 or not names or len(rows) == 0:
        return observed, np.empty(0)
    parts = []
    for counts in count_blocks(len(rows), n_boot, seed):
        per_task = [_primary(task, counts[keeps[name]]) for name, task in prepared.items()]
        parts.append(np.mean(per_task, axis=0))  # NaN when a task is undefined on the resample
    return observed, np.concatenate(parts)


def mean_primary_interval(
    arrays: Mapping[str, TaskArrays], rows: np.ndarray | None = None, *, n_boot: int, seed: int,
    confidence: float = 0.95,
) -> tuple[float, float]:  # fmt: skip
    """The percentile interval of :func:`mean_primary` (NaN, NaN when nothing can be resampled)."""
    _, resampled = mean_primary(arrays, None, rows, n_boot=n_boot, seed=seed)
    return percentile_interval(resampled, confidence) if len(resampled) else (math.nan, math.nan)
