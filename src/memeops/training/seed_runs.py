"""Several seeds of one model: the validation-only selection rule, the per-seed predictions file, and
the multi-seed summary every reported number comes from.

* **Selection** (:func:`select_seed`): the registered model of a variant is the seed whose
  validation monitor value is the median over its seeds (for an even count the lower-ranked of the
  two middle seeds in the monitor's direction, i.e. the more conservative one; ties keep
  ``train.seeds`` order; an undefined value ranks worst). Only validation values enter the rule,
  so the choice never sees test data, and the median rather than the best seed keeps the
  registered model typical of the variant instead of its luckiest draw. The rule's name,
  :data:`SELECTION_RULE`, is tagged on the MLflow run.
* **Summary** (:func:`memeops.stats.summarise_seeds`): per metric the mean over seeds, the standard
  deviation over seeds (ddof=1) and a 95% percentile bootstrap interval that resamples seeds and
  test memes together, so it covers run-to-run and test-sample variation.
* **Predictions file** (:func:`predictions_table` / :func:`runs_from_table`): every seed's per-meme
  probabilities on the test splits, long form, one row per (split, seed, meme, task): stage
  ``compare`` reads it for its paired tests between variants, and anyone can re-analyse it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from memeops.evaluation.metrics import Predictions
from memeops.models.base import IGNORE_INDEX, MISSING_MULTI, TaskSpec
from memeops.stats import ArmRun, summarise_seeds
from memeops.training.ablate import predictions_long

__all__ = ["SELECTION_RULE", "predictions_table", "runs_from_table", "select_seed", "summarise_seeds"]

SELECTION_RULE = "median-val"


def select_seed(val_values: Mapping[int, float], mode: str = "max") -> int:
    """The seed whose validation value is the median (see the module docstring for the exact rule)."""
    if not val_values:
        raise ValueError("no seeds to select from")
    sign = 1.0 if mode == "max" else -1.0
    order = list(val_values)

    def rank_key(seed: int) -> tuple[float, int]:
        value = val_values[seed]
        score = -math.inf if value is None or math.isnan(value) else sign * float(value)
        return score, -order.index(seed)  # equal scores: the earlier seed ranks higher

    ranked = sorted(order, key=rank_key)  # worst first
    return ranked[(len(ranked) - 1) // 2]


# --------------------------------------------------------------------------- the predictions file


def predictions_table(runs_by_split: Mapping[str, Sequence[ArmRun]]) -> pd.DataFrame:
    """Long table of every seed's per-meme probabilities: ``split, group, arm, seed, meme_id, task,
    probs, target`` (``target``: JSON of the encoded target, as stage ``ablate`` writes it)."""
    frames = [predictions_long(runs).assign(split=split) for split, runs in runs_by_split.items() if runs]
    if not frames:
        return pd.DataFrame(columns=["split", "group", "arm", "seed", "meme_id", "task", "probs", "target"])
    table = pd.concat(frames, ignore_index=True)
    return table[["split", *[c for c in table.columns if c != "split"]]]


def _target_array(values: Sequence[object], spec: TaskSpec, n: int) -> np.ndarray:
    """Encoded targets from their JSON cells; a meme without one is unlabelled for the task."""
    if spec.kind == "multi":
        out = np.full((n, spec.num_labels), MISSING_MULTI, dtype=np.float64)
    else:
        out = np.full(n, IGNORE_INDEX, dtype=np.int64)
    for i, cell in enumerate(values):
        if isinstance(cell, str):
            out[i] = json.loads(cell)
    return out


def runs_from_table(
    table: pd.DataFrame, split: str, specs: Mapping[str, TaskSpec], meme_ids: Sequence[str], *, group: str
) -> list[ArmRun]:  # fmt: skip
    """The ``split`` rows of a :func:`predictions_table` as one :class:`ArmRun` per (arm, seed), every
    task aligned to ``meme_ids`` (the split's memes in table order): a meme a run did not score for a
    task (a VLM scores labelled memes only) is unlabelled there, with uniform probabilities."""
    rows = table[table["split"] == split]
    index = {str(m): i for i, m in enumerate(meme_ids)}
    n = len(meme_ids)
    runs = []
    for (arm, seed), run_rows in rows.groupby(["arm", "seed"], sort=False):
        probs, targets = {}, {}
        for task, task_rows in run_rows.groupby("task", sort=False):
            spec = specs.get(str(task))
            if spec is None:
                continue
            pos = task_rows["meme_id"].astype(str).map(index)
            if pos.isna().any():
                raise ValueError(f"{arm}/seed {seed}/{task}: predictions for memes outside the {split} split")
            at = pos.to_numpy(dtype=np.int64)
            p = np.full((n, spec.num_labels), 1.0 / spec.num_labels)
            p[at] = np.asarray(task_rows["probs"].tolist(), dtype=np.float64)
            t = _target_array([None] * n, spec, n)
            t[at] = _target_array(task_rows["target"].tolist(), spec, len(task_rows))
            probs[str(task)], targets[str(task)] = p, t
        preds = Predictions(probs=probs, targets=targets, meme_ids=[str(m) for m in meme_ids])
        runs.append(ArmRun(group, str(arm), int(seed), preds, {}, 0, 0.0))
    return runs
