"""Evaluation: per-task metrics over labelled rows, flattened summaries, bootstrap intervals.

Pure numpy / scikit-learn; no tracking or orchestration imports.
"""

from memeops.evaluation.metrics import (
    Predictions,
    all_metrics,
    binary_auroc,
    bootstrap_ci,
    labelled,
    labelled_mask,
    task_metrics,
)

__all__ = [
    "Predictions",
    "all_metrics",
    "binary_auroc",
    "bootstrap_ci",
    "labelled",
    "labelled_mask",
    "task_metrics",
]
