"""Metrics by name (``"<task>/<statistic>"``, ``"mean/macro_f1"``) of one run's predictions, for a
block of resamples at once.

A :class:`PredictionScorer` prepares each task of a :class:`memeops.evaluation.metrics.Predictions`
once (:func:`memeops.stats.weighted.prepare_task`) and then scores any number of
:class:`CountBlock` s; :func:`metric_value` is the whole-split value (=
:func:`memeops.evaluation.metrics.all_metrics`, pinned by a test).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from memeops.stats.weighted import WeightedTask, prepare_task, task_statistics, weighted_statistics

if TYPE_CHECKING:  # types only: both modules import torch, this package must not
    from memeops.evaluation.metrics import Predictions
    from memeops.models.base import TaskSpec

MEAN_MACRO_F1 = "mean/macro_f1"


def parse_metric(name: str, specs: Mapping[str, TaskSpec]) -> tuple[str | None, str]:
    """``(task or None for "mean", statistic)``; raises ValueError for names no run could have.

    Supported: ``mean/macro_f1`` and ``<task>/<statistic>`` for every statistic of
    :func:`memeops.stats.weighted.task_statistics` (single-label: accuracy, macro_f1, weighted_f1 /
    precision / recall, auroc for binary tasks; multi-label: micro_f1, macro_f1, weighted_f1,
    subset_accuracy). A task the *specs* lack is a configuration error; a task an *arm* lacks is NaN
    (see :func:`metric_value`).
    """
    if name == MEAN_MACRO_F1:
        return None, "macro_f1"
    task, sep, stat = name.rpartition("/")
    if not sep or task not in specs:
        raise ValueError(f"metric {name!r}: expected 'mean/macro_f1' or '<task>/<metric>' with a known task")
    spec = specs[task]
    allowed = task_statistics(spec)
    if stat not in allowed:
        raise ValueError(f"metric {name!r}: {spec.kind}-label task {task!r} supports {sorted(allowed)}")
    return task, stat


class CountBlock:
    """One block of resamples as row counts ``[N, B]`` (float32) with its gathers per labelled-row
    set: the runs of a group usually share each task's labelled rows (same memes, same targets), so
    ``counts[rows]`` is gathered once per task and block, not once per run."""

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


class PredictionScorer:
    """Named metrics of one run's predictions under resample-count weights (tasks prepared once)."""

    def __init__(self, predictions: Predictions, specs: Mapping[str, TaskSpec]):
        self.specs = specs
        self.tasks: dict[str, WeightedTask] = {
            name: prepare_task(predictions.probs[name], predictions.targets[name], spec)
            for name, spec in specs.items()
            if name in predictions.probs and name in predictions.targets
        }

    def scores(self, metrics: Sequence[str], block: CountBlock) -> dict[str, np.ndarray]:
        """``{metric: [B]}``; a task this run does not predict gives NaN."""
        parsed = {metric: parse_metric(metric, self.specs) for metric in metrics}
        wanted: dict[str, set[str]] = {}
        for task, stat in parsed.values():
            for name in [task] if task is not None else list(self.specs):
                wanted.setdefault(name, set()).add(stat)
        stats: dict[str, dict[str, np.ndarray]] = {
            name: weighted_statistics(self.tasks[name], block.rows(self.tasks[name].rows), sorted(w))
            for name, w in wanted.items()
            if name in self.tasks
        }
        nan = np.full(len(block), np.nan)
        out = {}
        for metric, (task, stat) in parsed.items():
            if task is not None:
                out[metric] = stats[task][stat] if task in stats else nan
                continue
            # mean/macro_f1: over the tasks with labelled rows in this resample, as all_metrics does
            per_task = np.array([stats[t]["macro_f1"] if t in stats else nan for t in self.specs])
            per_task = per_task.reshape(len(self.specs), len(block))
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
    block = CountBlock(np.ones((len(predictions), 1), dtype=np.float32))
    return float(PredictionScorer(predictions, specs).scores([name], block)[name][0])
