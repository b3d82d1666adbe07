"""One table of every arm's statistics and its paired comparison with the group's reference arm."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from memeops.stats.paired import (
    ArmRun,
    arm_stats,
    bootstrap_group,
    holm,
    paired_comparison,
    runs_by_arm,
    runs_by_group,
)

if TYPE_CHECKING:  # a type only: models.base imports torch, this package must not
    from memeops.models.base import TaskSpec

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


def summarise(
    runs: Sequence[ArmRun],
    specs: Mapping[str, TaskSpec],
    metrics: Sequence[str],
    reference: str = "full",
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    references: Mapping[str, str] | None = None,
    resample_seeds: bool = True,
) -> pd.DataFrame:
    """One row per (group, arm, metric): seed-mean, seed std, bootstrap CI and the paired comparison
    with the group's reference arm (Holm-adjusted over the group's other arms per metric).

    The reference is ``references[group]`` when given, else ``reference``. Intervals and tests
    resample memes and (``resample_seeds``) seeds: :func:`memeops.stats.paired.bootstrap_group`.

    Columns :data:`SUMMARY_COLUMNS`; groups and arms in order of first appearance in ``runs``. The
    reference arm's delta / p are NaN and ``significant`` False. Settings are kept in ``.attrs``.
    ``mean/macro_f1`` of an arm that predicts fewer tasks averages over the tasks it has: compare
    such arms on per-task metrics.
    """
    rows: list[dict[str, Any]] = []
    alpha = 1.0 - confidence
    group_refs: dict[str, str] = {}
    for group, group_runs in runs_by_group(runs).items():
        arms = list(runs_by_arm(group_runs))
        ref = group_refs[group] = (references or {}).get(group, reference)
        if ref not in arms:
            raise ValueError(f"group {group!r} has no reference arm {ref!r} (arms: {', '.join(arms)})")
        boot = bootstrap_group(
            group_runs, specs, metrics, n_boot=n_boot, seed=seed, resample_seeds=resample_seeds
        )
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
            "resample_seeds": resample_seeds,
        }
    )
    return frame
