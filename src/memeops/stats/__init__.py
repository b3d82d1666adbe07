"""The one statistics core: weighted metrics, bootstrap intervals, paired tests and Holm.

Every interval and test the project reports comes from here (training, ablate, evaluate, compare,
promotion), so they cannot quietly disagree:

* :mod:`memeops.stats.weighted`: per-task metrics under resample-count weights (a block of
  bootstrap resamples as one count matrix, all metrics from one matmul; binary AUROC with ties;
  top-label ECE), equal to sklearn's with ``sample_weight``;
* :mod:`memeops.stats.resample`: the seeded resamples, seed draws, the percentile interval;
* :mod:`memeops.stats.named`: metrics by name (``"<task>/<statistic>"``, ``"mean/macro_f1"``);
* :mod:`memeops.stats.paired`: the bootstrap of a group of multi-seed arms that resamples memes
  AND seeds (the one way: intervals cover test-sample and seed variation), paired comparisons,
  two- and one-sided p-values, Holm;
* :mod:`memeops.stats.summary`: the per-arm table with comparisons to a reference arm;
* :mod:`memeops.stats.seeds`: one model's seeds on one split (mean, std, interval per metric);
* :mod:`memeops.stats.tasks`: per-task intervals and the mean primary metric of one model on one
  split (stage ``evaluate``, promotion).

Torch-free (numpy, scipy, pandas): task specs and predictions are read by attribute only.
"""

from memeops.stats.named import MEAN_MACRO_F1, CountBlock, PredictionScorer, metric_value, parse_metric
from memeops.stats.paired import (
    ArmRun,
    ArmStats,
    Comparison,
    GroupBootstrap,
    arm_stats,
    bootstrap_group,
    check_same_memes,
    compare_arms,
    holm,
    one_sided_p,
    paired_comparison,
    runs_by_arm,
    runs_by_group,
    two_sided_p,
)
from memeops.stats.seeds import SeedSummary, report_metrics, summarise_seeds
from memeops.stats.resample import (
    bootstrap_indices,
    count_blocks,
    percentile_interval,
    resample_counts,
    seed_draws,
    seed_mean,
)
from memeops.stats.summary import SUMMARY_COLUMNS, summarise
from memeops.stats.tasks import TaskArrays, mean_primary, mean_primary_interval, primary_value, task_intervals
from memeops.stats.weighted import (
    MULTI_THRESHOLD,
    WeightedTask,
    labelled_rows,
    point_statistics,
    prepare_task,
    primary_statistic,
    task_statistics,
    weighted_auroc,
    weighted_ece,
    weighted_statistics,
)

__all__ = [
    "MEAN_MACRO_F1",
    "MULTI_THRESHOLD",
    "SUMMARY_COLUMNS",
    "ArmRun",
    "ArmStats",
    "Comparison",
    "CountBlock",
    "GroupBootstrap",
    "PredictionScorer",
    "TaskArrays",
    "WeightedTask",
    "arm_stats",
    "bootstrap_group",
    "bootstrap_indices",
    "check_same_memes",
    "compare_arms",
    "count_blocks",
    "holm",
    "labelled_rows",
    "mean_primary",
    "mean_primary_interval",
    "metric_value",
    "one_sided_p",
    "paired_comparison",
    "parse_metric",
    "percentile_interval",
    "point_statistics",
    "prepare_task",
    "primary_statistic",
    "primary_value",
    "resample_counts",
    "runs_by_arm",
    "runs_by_group",
    "SeedSummary",
    "report_metrics",
    "seed_draws",
    "summarise_seeds",
    "seed_mean",
    "summarise",
    "task_intervals",
    "task_statistics",
    "two_sided_p",
    "weighted_auroc",
    "weighted_ece",
    "weighted_statistics",
]
