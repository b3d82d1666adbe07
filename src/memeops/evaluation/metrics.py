"""Per-task classification metrics over labelled rows and their flattened summary (point values;
intervals and tests: :mod:`memeops.stats`).

Inputs are what :func:`memeops.training.predict` returns: probabilities per task (``[N, L]``) and
targets encoded as in :mod:`memeops.models.base` (single-label: int ``[N]`` with
:data:`IGNORE_INDEX` for missing; multi-label: ``[N, L]`` 0/1 with all-:data:`MISSING_MULTI` rows
for missing). Missing rows are dropped before any metric, so one evaluation set may mix sources
that annotate different tasks.

Conventions (so numbers are comparable across runs and papers):
- single-label predictions are the arg-max class; macro/weighted averages are sklearn's, over the
  classes present in targets or predictions; undefined precision/recall/F1 count as 0;
- binary AUROC uses the probability of label index 1 as the score, and is NaN (not an error) when
  only one class is present;
- multi-label predictions are ``prob >= 0.5`` per label; subset accuracy is exact-match;
- a task with no labelled rows yields NaN metrics and ``n = 0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from memeops.models.base import IGNORE_INDEX, MISSING_MULTI, TaskSpec

MULTI_THRESHOLD = 0.5
SINGLE_METRICS = ("accuracy", "macro_f1", "weighted_f1", "weighted_precision", "weighted_recall")
MULTI_METRICS = ("micro_f1", "macro_f1", "weighted_f1", "subset_accuracy")


@dataclass
class Predictions:
    """Model outputs over a dataset, in dataset order.

    ``probs[task]``: float ``[N, L]``; ``targets[task]``: as encoded in the batches (absent when the
    dataset carries no targets for the task); ``meme_ids``: when batches carry ``meme_id``;
    ``extras[name]``: ``ModelOutput.extras`` concatenated over batches (e.g. ``gate`` ``[N]``).
    """

    probs: dict[str, np.ndarray]
    targets: dict[str, np.ndarray] = field(default_factory=dict)
    meme_ids: list[str] | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.probs.values()))) if self.probs else 0


def primary_metric(spec: TaskSpec) -> str:
    """AUROC for binary tasks, macro-F1 otherwise: what leaderboards, tuning reports and promotion compare."""
    return "auroc" if spec.is_binary else "macro_f1"


def labelled_mask(targets: np.ndarray, spec: TaskSpec) -> np.ndarray:
    """Bool ``[N]``: rows that carry a label (mirrors :func:`memeops.models.base.target_mask`)."""
    targets = np.asarray(targets)
    if spec.kind == "single":
        return targets != IGNORE_INDEX
    return (targets != MISSING_MULTI).any(axis=-1)


def labelled(probs: np.ndarray, targets: np.ndarray, spec: TaskSpec) -> tuple[np.ndarray, np.ndarray]:
    """Only the labelled rows of ``probs`` and ``targets`` (before any resampling: unlabelled rows are no sample)."""
    mask = labelled_mask(targets, spec)
    return np.asarray(probs)[mask], np.asarray(targets)[mask]


def _nan_metrics(spec: TaskSpec) -> dict[str, float]:
    names = MULTI_METRICS if spec.kind == "multi" else SINGLE_METRICS + (("auroc",) if spec.is_binary else ())
    return {**{name: math.nan for name in names}, "n": 0.0}


def binary_auroc(scores: np.ndarray, y: np.ndarray) -> float:
    """AUROC of ``scores`` for ``y == 1``; NaN when ``y`` has a single class (AUROC is undefined)."""
    if len(np.unique(y)) < 2:
        return math.nan
    # sklearn.metrics costs ~1 s to import (scipy, sklearn.utils); the metrics of single-label tasks
    # and the stages that only read predictions (compare, report) never need it.
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, scores))


def _single_metrics(probs: np.ndarray, y: np.ndarray, spec: TaskSpec) -> dict[str, float]:
    """sklearn's single-label metrics (tests pin the equality), from one confusion count in numpy:
    sklearn's input validation cost ~14 ms per task, a third of a small head's fit at one call per
    epoch and task."""
    pred = probs.argmax(axis=1).astype(np.int64)
    n_labels = max(probs.shape[1], int(y.max()) + 1)
    tp = np.bincount(y[pred == y], minlength=n_labels).astype(np.float64)
    n_pred = np.bincount(pred, minlength=n_labels).astype(np.float64)
    support = np.bincount(y, minlength=n_labels).astype(np.float64)
    present = (n_pred + support) > 0  # sklearn's labels: those in y or pred
    precision = np.divide(tp, n_pred, out=np.zeros_like(tp), where=n_pred > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    f1 = np.divide(2 * tp, n_pred + support, out=np.zeros_like(tp), where=present)
    n = support.sum()
    out = {
        "accuracy": float(tp.sum() / n),
        "macro_f1": float(f1[present].mean()),
        "weighted_f1": float((f1 * support).sum() / n),
        "weighted_precision": float((precision * support).sum() / n),
        "weighted_recall": float((recall * support).sum() / n),
    }
    if spec.is_binary:
        out["auroc"] = fast_binary_auroc(probs[:, 1], y)
    return out


def _multi_metrics(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score  # ~1 s import: see binary_auroc

    pred = (probs >= MULTI_THRESHOLD).astype(int)
    y = y.astype(int)
    return {
        "micro_f1": float(f1_score(y, pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y, pred, average="weighted", zero_division=0)),
        "subset_accuracy": float(accuracy_score(y, pred)),
    }


def task_metrics(probs: np.ndarray, targets: np.ndarray, spec: TaskSpec) -> dict[str, float]:
    """Metrics of one task over its labelled rows (see module docstring for the conventions)."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets)
    if probs.ndim != 2 or probs.shape[1] != spec.num_labels or len(probs) != len(targets):
        raise ValueError(f"{spec.name}: probs {probs.shape} do not match targets {targets.shape} / spec")
    p, y = labelled(probs, targets, spec)
    if len(y) == 0:
        return _nan_metrics(spec)
    out = _single_metrics(p, y.astype(np.int64), spec) if spec.kind == "single" else _multi_metrics(p, y)
    out["n"] = float(len(y))
    return out


def all_metrics(predictions: Predictions, specs: list[TaskSpec]) -> dict[str, float]:
    """``{"task/metric": value}`` for every task with targets, plus ``"mean/macro_f1"``.

    ``mean/macro_f1`` averages macro-F1 over tasks that have labelled rows (NaN when none do): the
    default model-selection score when no single task dominates.
    """
    out: dict[str, float] = {}
    macro: list[float] = []
    for spec in specs:
        if spec.name not in predictions.targets or spec.name not in predictions.probs:
            continue
        metrics = task_metrics(predictions.probs[spec.name], predictions.targets[spec.name], spec)
        out.update({f"{spec.name}/{name}": value for name, value in metrics.items()})
        if metrics["n"] > 0:
            macro.append(metrics["macro_f1"])
    out["mean/macro_f1"] = float(np.mean(macro)) if macro else math.nan
    return out


# --- fast forms for bootstrap loops (equal to the sklearn versions above; tested against them) ---------


def fast_binary_auroc(scores: np.ndarray, y: np.ndarray) -> float:
    """AUROC as the Mann-Whitney U statistic with average ranks for ties (= sklearn's roc_auc_score)."""
    from scipy.stats import rankdata

    y = np.asarray(y).astype(bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(scores)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def fast_macro_f1(pred: np.ndarray, y: np.ndarray, n_labels: int) -> float:
    """Single-label macro-F1 over the classes present in ``y`` or ``pred`` (sklearn's convention)."""
    pred, y = np.asarray(pred, dtype=np.int64), np.asarray(y, dtype=np.int64)
    tp = np.bincount(y[pred == y], minlength=n_labels).astype(np.float64)
    n_pred = np.bincount(pred, minlength=n_labels).astype(np.float64)
    n_true = np.bincount(y, minlength=n_labels).astype(np.float64)
    present = (n_pred + n_true) > 0
    denom = n_pred + n_true
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1[present].mean()) if present.any() else math.nan
