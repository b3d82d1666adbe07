"""Per-task classification metrics under resample-count weights: one matmul per block of resamples.

A bootstrap resample of ``n`` rows is described by how often each row is drawn (a count vector);
a block of ``B`` resamples is a count matrix ``W [n, B]`` (rows first: gathers and cumulative sums
run over contiguous memory). Every metric here is computed for all ``B`` columns at once and equals
the metric of the resample the column describes (equivalently: sklearn's with
``sample_weight=counts``; tests pin both). ``W = ones [n, 1]`` gives the point value.

Conventions (those of :mod:`memeops.evaluation.metrics`): single-label predictions are the arg-max
class, macro averages run over the classes present in targets or predictions, undefined
precision / recall / F1 count as 0; multi-label predictions are ``prob >= 0.5`` per label; binary
AUROC scores label 1 and counts ties half. A resample with no labelled row gives NaN for every
metric, one without both classes NaN for AUROC.

Targets are encoded as in :mod:`memeops.models.base` (single-label: class index, negative =
missing; multi-label: 0/1 rows, all-negative rows = missing). Torch-free on purpose: specs are only
read for ``name``, ``kind``, ``num_labels`` and ``is_binary``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # a type only: models.base imports torch, this package must not
    from memeops.models.base import TaskSpec

MULTI_THRESHOLD = 0.5  # = memeops.evaluation.metrics.MULTI_THRESHOLD (a test pins it)
SINGLE_STATS = ("accuracy", "macro_f1", "weighted_f1", "weighted_precision", "weighted_recall")
MULTI_STATS = ("micro_f1", "macro_f1", "weighted_f1", "subset_accuracy")


def primary_statistic(spec: TaskSpec) -> str:
    """AUROC for binary tasks, macro-F1 otherwise (= :func:`memeops.evaluation.metrics.primary_metric`)."""
    return "auroc" if spec.is_binary else "macro_f1"


def task_statistics(spec: TaskSpec) -> tuple[str, ...]:
    """The statistics :func:`weighted_statistics` computes for a task of this kind."""
    if spec.kind == "multi":
        return MULTI_STATS
    return SINGLE_STATS + (("auroc",) if spec.is_binary else ())


def labelled_rows(targets: np.ndarray, spec: TaskSpec) -> np.ndarray:
    """Positions of the rows that carry a label (missing labels are negative, see module docstring)."""
    targets = np.asarray(targets)
    if spec.kind == "multi":
        return np.flatnonzero((targets >= 0).any(axis=-1))
    return np.flatnonzero(targets >= 0)


@dataclass
class WeightedTask:
    """One task's predictions prepared once for weighted metrics over its labelled rows."""

    spec: TaskSpec
    rows: np.ndarray  # [n] positions of the labelled rows in the caller's arrays
    # [n, 3L (+1)] float32 0/1: [hit | pred | true (| exact)]; ``indicators.T @ W`` gives every
    # confusion count of every resample: hit = true positives per label, pred = predicted per label
    # (arg-max one-hot or prob >= 0.5), true = gold per label, exact = all labels right (multi)
    indicators: np.ndarray
    # binary AUROC: rows sorted by score once, each row's tie group [start, end) in that order
    order: np.ndarray | None = None
    tie_start: np.ndarray | None = None
    tie_end: np.ndarray | None = None
    positive: np.ndarray | None = None  # [n, 1] float32 0/1 in sorted order


def prepare_task(probs: np.ndarray, targets: np.ndarray, spec: TaskSpec) -> WeightedTask:
    """Labelled rows, confusion indicators and (binary tasks) the score order with its ties."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets)
    if probs.ndim != 2 or probs.shape[1] != spec.num_labels or len(probs) != len(targets):
        raise ValueError(f"{spec.name}: probs {probs.shape} do not match targets {targets.shape} / spec")
    rows = labelled_rows(targets, spec)
    p, y = probs[rows], targets[rows]
    if spec.kind == "multi":
        pred = (p >= MULTI_THRESHOLD).astype(np.float64)
        true = (y >= 0.5).astype(np.float64)
        exact = (pred == true).all(axis=1, keepdims=True).astype(np.float64)
        return WeightedTask(spec, rows, np.hstack([pred * true, pred, true, exact]).astype(np.float32))
    y = y.astype(np.int64)
    if len(y) and y.max() >= spec.num_labels:
        raise ValueError(f"{spec.name}: targets outside 0..{spec.num_labels - 1}")
    eye = np.eye(spec.num_labels)
    pred, true = eye[p.argmax(axis=1)], eye[y]
    task = WeightedTask(spec, rows, np.hstack([pred * true, pred, true]).astype(np.float32))
    if spec.is_binary:
        scores = p[:, 1]
        order = np.argsort(scores, kind="stable")
        _, first, inverse, counts = np.unique(
            scores[order], return_index=True, return_inverse=True, return_counts=True
        )
        task.order, task.tie_start = order, first[inverse]
        task.tie_end = task.tie_start + counts[inverse]
        task.positive = (y[order] == 1).astype(np.float32)[:, None]
    return task


def weighted_auroc(task: WeightedTask, weights: np.ndarray) -> np.ndarray:
    """``[B]`` AUROC for the row weights ``[n, B]`` of a binary task: the sum over (positive,
    negative) pairs of ``w_p w_n ([s_p > s_n] + 0.5 [s_p = s_n])`` over ``W_pos W_neg``, i.e. the
    Mann-Whitney U with average ranks (sklearn's value). NaN where a resample has one class."""
    if task.order is None or task.positive is None or task.tie_start is None or task.tie_end is None:
        raise ValueError(f"{task.spec.name}: AUROC needs a binary single-label task")
    w = weights[task.order]  # [n, B], rows by ascending score
    pos_w = w * task.positive
    neg_w = w - pos_w
    neg_before = np.zeros((w.shape[0] + 1, w.shape[1]), dtype=np.float64)
    np.cumsum(neg_w, axis=0, out=neg_before[1:])  # neg_before[k] = negative weight of rows < k
    below = neg_before[task.tie_start]  # negatives with a strictly lower score
    tied = neg_before[task.tie_end] - below  # negatives with the same score (count half)
    num = (pos_w.astype(np.float64) * (below + 0.5 * tied)).sum(axis=0)
    denom = pos_w.sum(axis=0, dtype=np.float64) * neg_w.sum(axis=0, dtype=np.float64)
    return np.divide(num, denom, out=np.full(w.shape[1], np.nan), where=denom > 0)


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with 0 where ``den`` is 0 (sklearn's ``zero_division=0``)."""
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def weighted_statistics(
    task: WeightedTask, weights: np.ndarray, stats: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """``{statistic: [B]}`` for the labelled-row weights ``weights [n, B]`` (``n = len(task.rows)``);
    ``stats`` a subset of :func:`task_statistics` (None: all). One matmul gives every count."""
    names = task_statistics(task.spec) if stats is None else tuple(stats)
    unknown = [s for s in names if s not in task_statistics(task.spec)]
    if unknown:
        raise ValueError(f"{task.spec.name}: no statistic {unknown} for a {task.spec.kind}-label task")
    n = weights.sum(axis=0, dtype=np.float64)
    values: dict[str, np.ndarray] = {}
    if "auroc" in names:
        values["auroc"] = weighted_auroc(task, weights)
    if any(name != "auroc" for name in names):
        _confusion_statistics(task, weights, n, [s for s in names if s != "auroc"], values)
    return {k: np.where(n > 0, values[k], np.nan) for k in names}


def _confusion_statistics(
    task: WeightedTask,
    weights: np.ndarray,
    n: np.ndarray,
    names: Sequence[str],
    values: dict[str, np.ndarray],
) -> None:
    """The count-based statistics ``names`` into ``values`` (one matmul for all of them)."""
    conf = (task.indicators.T @ weights).T.astype(np.float64)  # [B, 3L (+1)] weighted counts
    n_labels = task.spec.num_labels
    tp, n_pred, n_true = (conf[:, i * n_labels : (i + 1) * n_labels] for i in range(3))
    f1 = _div(2.0 * tp, n_pred + n_true)
    for name in names:
        if name == "accuracy":
            values[name] = _div(tp.sum(axis=1), n)
        elif name == "subset_accuracy":
            values[name] = _div(conf[:, -1], n)
        elif name == "micro_f1":
            values[name] = _div(2.0 * tp.sum(axis=1), (n_pred + n_true).sum(axis=1))
        elif name == "macro_f1" and task.spec.kind == "multi":  # every label counts
            values[name] = f1.mean(axis=1)
        elif name == "macro_f1":  # the classes in targets or predictions
            present = (n_pred + n_true) > 0
            values[name] = np.divide(
                f1.sum(axis=1), present.sum(axis=1), out=np.full(len(n), np.nan), where=present.any(axis=1)
            )
        elif name == "weighted_f1":
            values[name] = _div((n_true * f1).sum(axis=1), n_true.sum(axis=1))
        elif name == "weighted_precision":
            values[name] = _div((n_true * _div(tp, n_pred)).sum(axis=1), n_true.sum(axis=1))
        else:  # weighted_recall
            values[name] = _div((n_true * _div(tp, n_true)).sum(axis=1), n_true.sum(axis=1))


def point_statistics(probs: np.ndarray, targets: np.ndarray, spec: TaskSpec) -> dict[str, float]:
    """Every statistic of the task on its labelled rows (weights 1), plus ``n``."""
    task = prepare_task(probs, targets, spec)
    values = weighted_statistics(task, np.ones((len(task.rows), 1), dtype=np.float32))
    return {**{k: float(v[0]) for k, v in values.items()}, "n": float(len(task.rows))}


def weighted_ece(
    confidence: np.ndarray, correct: np.ndarray, weights: np.ndarray, n_bins: int, per_row: int = 1
) -> np.ndarray:
    """``[B]`` expected calibration error (equal-width bins, right-closed) under row weights
    ``[n, B]``; ``confidence`` / ``correct`` hold ``per_row`` consecutive entries per row (multi-label:
    one per (meme, label)), each carrying its row's weight. NaN where a resample has no row."""
    if per_row > 1:
        weights = np.repeat(weights, per_row, axis=0)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.searchsorted(edges[1:-1], np.clip(confidence, 0.0, 1.0), side="left")
    onehot = np.zeros((len(confidence), n_bins))
    onehot[np.arange(len(confidence)), idx] = 1.0
    w = weights.T.astype(np.float64)  # [B, m]
    count = w @ onehot
    right = onehot * np.asarray(correct, dtype=np.float64)[:, None]
    gap = np.abs(w @ right - w @ (onehot * confidence[:, None]))  # |sum right - sum confidence| per bin
    total = count.sum(axis=1)
    return np.divide(gap.sum(axis=1), total, out=np.full(len(total), np.nan), where=total > 0)
