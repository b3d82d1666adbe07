"""MLflow tracking: runs with lineage tags, plots, the registry (packing and serving models is
:mod:`memeops.serving`'s).

Submodules import mlflow lazily, and this package re-exports lazily too, so importing
``memeops.tracking.plots`` (matplotlib only) costs no mlflow import.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "tracked_run": "runs", "log_params": "runs", "log_metrics": "runs", "log_dataset": "runs",
    "MlflowCallback": "runs", "flatten_params": "runs", "flatten_metrics": "runs", "git_commit": "runs",
    "ensure_experiment": "runs", "metric_name": "runs",
    "plot_confusion_matrix": "plots", "plot_roc_curve": "plots", "plot_training_curve": "plots",
    "write_history_csv": "plots", "evaluation_plots": "plots",
    "register_and_alias": "registry", "registered_model_name": "registry", "alias_version": "registry",
    "alias_uri": "registry", "promote": "registry",
}  # fmt: skip

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'memeops.tracking' has no attribute {name!r}")
    return getattr(importlib.import_module(f"memeops.tracking.{_EXPORTS[name]}"), name)
