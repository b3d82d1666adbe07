"""A model's seeds on one split: per metric the mean over seeds, the standard deviation over seeds and
the 95% interval that resamples seeds and test memes together (:func:`memeops.stats.paired.bootstrap_group`).

This is the summary behind every reported number of a trained variant (stage ``train``, the VLM,
stage ``evaluate``): ``std`` is run-to-run variation alone, the interval covers run-to-run and
test-sample variation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from memeops.stats.named import MEAN_MACRO_F1
from memeops.stats.paired import ArmRun, arm_stats, bootstrap_group
from memeops.stats.weighted import primary_statistic


def report_metrics(specs: Sequence[object]) -> list[str]:
    """The metrics summarised per variant: each task's macro-F1 and primary metric, and the mean."""
    out: list[str] = []
    for spec in specs:
        out.append(f"{spec.name}/macro_f1")  # type: ignore[attr-defined]
        if primary_statistic(spec) != "macro_f1":  # type: ignore[arg-type]
            out.append(f"{spec.name}/{primary_statistic(spec)}")  # type: ignore[attr-defined,arg-type]
    return out + [MEAN_MACRO_F1]


def _clean(value: float) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 6)


@dataclass(frozen=True)
class SeedSummary:
    """One metric over a model's seeds."""

    n_seeds: int
    mean: float
    std: float
    ci_low: float
    ci_high: float
    per_seed: list[float]

    def as_json(self) -> dict[str, object]:
        return {"n_seeds": self.n_seeds, "mean": _clean(self.mean), "std": _clean(self.std),
                "ci95": [_clean(self.ci_low), _clean(self.ci_high)], "per_seed": [_clean(v) for v in self.per_seed]}  # fmt: skip


def summarise_seeds(
    runs: Sequence[ArmRun], specs: Sequence[object], *, n_boot: int, seed: int, metrics: Sequence[str] | None = None
) -> dict[str, SeedSummary]:  # fmt: skip
    """``{metric: SeedSummary}`` of one arm's runs (one per seed) on one split."""
    by_name = {s.name: s for s in specs}  # type: ignore[attr-defined]
    metrics = list(metrics or report_metrics(specs))
    boot = bootstrap_group(runs, by_name, metrics, n_boot=n_boot, seed=seed)
    arm = runs[0].arm
    out = {}
    for metric in metrics:
        st = arm_stats(boot, arm, metric)
        out[metric] = SeedSummary(st.n_seeds, st.mean, st.std, st.ci_low, st.ci_high,
                                  [float(v) for v in boot.observed[(arm, metric)]])  # fmt: skip
    return out
