"""Evaluation: per-task metrics over labelled rows, flattened summaries, the evaluation of registered
models, ablation claims and diagnostics (every interval and test comes from :mod:`memeops.stats`).

Pure numpy / scikit-learn; no tracking or orchestration imports.

The names below are re-exported lazily (on first attribute access), so importing a submodule such
as ``memeops.evaluation.compare`` does not import :mod:`memeops.evaluation.metrics` unless it uses it.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = ("Predictions", "all_metrics", "binary_auroc", "labelled", "labelled_mask", "task_metrics")

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'memeops.evaluation' has no attribute {name!r}")
    return getattr(importlib.import_module("memeops.evaluation.metrics"), name)
