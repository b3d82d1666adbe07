"""Evaluation: per-task metrics over labelled rows, flattened summaries, the evaluation of registered
models, ablation claims and diagnostics (every interval and test comes from :mod:`memeops.stats`).

Pure numpy / scikit-learn; no tracking or orchestration imports.
"""

from memeops.evaluation.metrics import (
    Predictions,
    all_metrics,
    binary_auroc,
    labelled,
    labelled_mask,
    task_metrics,
)

__all__ = [
    "Predictions",
    "all_metrics",
    "binary_auroc",
    "labelled",
    "labelled_mask",
    "task_metrics",
]
