"""The variants side by side: seed-mean tables and paired tests between variants.

Every variant -- the head models, MGMCF and the VLM -- writes its metrics nested by split with keys
``<task>/<metric>`` (means over its seeds; the VLM pools its sources into the same keys), so one
table reads them all. A variant that did not train a task shows an empty cell, never a zero.

:func:`compare_variants` is the comparison a reader can trust: every variant's seeds and per-meme
test predictions (``data/train/<variant>.parquet``) go into ONE bootstrap that resamples seeds and
test memes together (:mod:`memeops.stats`), shared by all variants, so each row's interval covers
run-to-run and test-sample variation, and each variant is compared with the task's best variant by
a paired two-sided bootstrap test, Holm-adjusted over the other variants of that row. Only a
difference with ``p_holm < alpha`` is called significant.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from memeops.models.base import TaskSpec
from memeops.stats import ArmRun, arm_stats, bootstrap_group, holm, paired_comparison
from memeops.training.seed_runs import runs_from_table

COMPARISON_COLUMNS = ("variant", "task", "metric", "n_seeds", "mean", "std", "ci_low", "ci_high",
                      "best", "delta_vs_best", "p_value", "p_holm", "significant")  # fmt: skip


class CompareConfig(BaseModel):
    """``params.compare``: the variants side by side, the table's metric, the bootstrap and test level."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    variants: list[str] = Field(default_factory=lambda: ["gatedclip", "gatedclip_mt", "mgmcf", "vlm"])
    split: str = "test"
    metric: str = "macro_f1"
    n_boot: int = Field(1000, ge=100)
    alpha: float = Field(0.05, gt=0, lt=1)


def read_seed_predictions(folder: str | Path, variants: Sequence[str], split: str, specs: Mapping[str, TaskSpec],
                          meme_ids: Sequence[str]) -> tuple[list[ArmRun], dict[str, list[str]]]:  # fmt: skip
    """Every variant's seeds from ``<folder>/<variant>.parquet`` (stage train's per-seed predictions), as
    runs aligned to ``meme_ids``, and the tasks each variant was trained on. A missing file: one line."""
    runs: list[ArmRun] = []
    variant_tasks: dict[str, list[str]] = {}
    for variant in variants:
        path = Path(folder) / f"{variant}.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"no predictions {path} for variant {variant!r} (has its stage run?)")
        table = pd.read_parquet(path)
        runs += runs_from_table(table.assign(arm=variant), split, specs, meme_ids, group="compare")
        variant_tasks[variant] = sorted(set(table["task"]))
    return runs, variant_tasks


def comparison_markdown(long: pd.DataFrame, cfg: CompareConfig) -> str:
    """``reports/comparison.md``: the wide table of :func:`wide_table` with what its marks mean."""
    return (f"# {cfg.metric} per task on {cfg.split}: mean ± std over seeds [95% interval over seeds and memes]\n\n"
            "Written by stage `compare`. Each model is selected on val and scores test once per seed. `*`: below "
            f"the row's best variant by a paired bootstrap test over seeds and memes, Holm-adjusted p < {cfg.alpha}. "
            "The mean row compares only variants trained on every task. Every row with its p-values: "
            "`reports/comparison.csv`.\n\n" + markdown_table(wide_table(long, cfg.metric)) + "\n")  # fmt: skip


def read_reports(folder: str | Path, variants: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{variant: report}`` for each ``<folder>/<variant>.json``; a missing one is a one-line error."""
    out = {}
    for name in variants:
        path = Path(folder) / f"{name}.json"
        if not path.is_file():
            raise FileNotFoundError(f"no metrics report {path} for variant {name!r} (has its stage run?)")
        out[name] = json.loads(path.read_text(encoding="utf-8"))
    return out


def metric_table(reports: Mapping[str, Mapping[str, Any]], tasks: Sequence[str], split: str = "test",
                 metric: str = "macro_f1") -> pd.DataFrame:  # fmt: skip
    """Rows = tasks (+ ``mean`` over the tasks each variant has), columns = variants."""
    rows = []
    for task in tasks:
        row: dict[str, Any] = {"task": task}
        for name, report in reports.items():
            value = (report.get(split) or {}).get(f"{task}/{metric}")
            row[name] = None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=["task", *reports])
    mean = {"task": "mean"} | {name: frame[name].dropna().mean() if frame[name].notna().any() else None for name in reports}
    return pd.concat([frame, pd.DataFrame([mean])], ignore_index=True)


def ci_table(reports: Mapping[str, Mapping[str, Any]], tasks: Sequence[str], split: str = "test") -> pd.DataFrame:
    """The 95% bootstrap interval of each task's primary metric, as ``"lo–hi (metric)"`` strings."""
    rows = []
    for task in tasks:
        row: dict[str, Any] = {"task": task}
        for name, report in reports.items():
            intervals = (report.get("ci95") or {}).get(split) or {}
            key = next((k for k in intervals if k.split("/")[0] == task), None)
            row[name] = f"{intervals[key][0]:.3f}–{intervals[key][1]:.3f} ({key.split('/')[1]})" if key else None
        rows.append(row)
    return pd.DataFrame(rows, columns=["task", *reports])


def row_metrics(specs: Mapping[str, TaskSpec], tasks: Sequence[str], metric: str) -> list[tuple[str, str]]:
    """``(task, metric)`` rows of the comparison: ``metric`` per task, the task's primary metric when
    it differs (AUROC for binary tasks), and ``("mean", "macro_f1")``."""
    rows = []
    for task in tasks:
        if task not in specs:
            continue
        rows.append((task, metric))
        primary = "auroc" if specs[task].is_binary else "macro_f1"
        if primary != metric:
            rows.append((task, primary))
    return rows + [("mean", "macro_f1")]


def _metric_name(task: str, metric: str) -> str:
    return "mean/macro_f1" if task == "mean" else f"{task}/{metric}"


def compare_variants(runs: Sequence[ArmRun], specs: Mapping[str, TaskSpec], tasks: Sequence[str],
                     variant_tasks: Mapping[str, Sequence[str]], *, metric: str = "macro_f1", n_boot: int = 1000,
                     seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:  # fmt: skip
    """One row per (variant, task, metric) with columns :data:`COMPARISON_COLUMNS`.

    ``runs``: every seed of every variant on the same test memes (group ``"compare"``, arm = the
    variant). ``variant_tasks``: the tasks each variant was trained on; a variant is compared on a
    task it has, and on ``mean`` only when it has every task of ``tasks`` (a mean over fewer tasks is
    a different quantity).
    """
    pairs = row_metrics(specs, tasks, metric)
    names = [_metric_name(t, m) for t, m in pairs]
    boot = bootstrap_group(runs, specs, names, n_boot=n_boot, seed=seed)
    variants = list(dict.fromkeys(r.arm for r in runs))
    present = [t for t in tasks if t in specs]
    rows = []
    for (task, stat), name in zip(pairs, names, strict=True):
        members = [v for v in variants if (set(present) <= set(variant_tasks[v]) if task == "mean" else task in variant_tasks[v])]
        if not members:
            continue
        stats = {v: arm_stats(boot, v, name) for v in members}
        best = max(members, key=lambda v: -np.inf if np.isnan(stats[v].mean) else stats[v].mean)
        others = [v for v in members if v != best]
        comps = {v: paired_comparison(boot, v, best, name) for v in others}
        adjusted = dict(zip(others, holm([comps[v].p_value for v in others]), strict=True))
        for v in members:
            st, comp = stats[v], comps.get(v)
            p_holm = adjusted.get(v, math.nan)
            rows.append({"variant": v, "task": task, "metric": stat, "n_seeds": st.n_seeds, "mean": st.mean,
                         "std": st.std, "ci_low": st.ci_low, "ci_high": st.ci_high, "best": best,
                         "delta_vs_best": comp.delta if comp else 0.0, "p_value": comp.p_value if comp else math.nan,
                         "p_holm": p_holm, "significant": bool(comp is not None and p_holm < alpha)})  # fmt: skip
    return pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))


def wide_table(long: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Rows = tasks (+ mean), columns = variants, cells ``"mean ± std [lo, hi]"`` of ``metric`` (the
    mean row: macro-F1); a variant significantly below the row's best is marked with ``*``."""
    sub = long[(long["metric"] == metric) | (long["task"] == "mean")]
    variants = list(dict.fromkeys(long["variant"]))
    rows = []
    for task in dict.fromkeys(sub["task"]):
        row: dict[str, Any] = {"task": task}
        for _, r in sub[sub["task"] == task].iterrows():
            mark = "*" if r["significant"] else ""
            row[r["variant"]] = f"{r['mean']:.3f} ± {r['std']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]{mark}"
        rows.append(row)
    return pd.DataFrame(rows, columns=["task", *variants])


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub Markdown table (NaN/None shown as an en dash)."""
    cols = list(frame.columns)

    def cell(v: Any) -> str:
        if v is None or (not isinstance(v, (str, list, tuple)) and pd.isna(v)):
            return "–"
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"
