"""``reports/evaluation.md`` and the reliability diagrams of stage ``evaluate``: the numbers of
:func:`memeops.evaluation.evaluate.evaluate_variants` (statistics from :mod:`memeops.stats`) as
Markdown tables and PNG figures (through :mod:`memeops.reporting.figures`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from memeops.evaluation.calibration import ReliabilityBins
from memeops.evaluation.evaluate import BREAKDOWNS, evaluated_splits
from memeops.reporting.figures import new_figure, save_figure

LEAKAGE_NOTE = (
    "`<split>_clean` rows: the official `<split>` without its memes whose image duplicates a meme of an "
    "earlier split (flagged with `leak_of` under `data.leakage.policy`). `<split>` itself is the official "
    "split, whole: the figure to compare with published results; `<split>_clean` is the leakage-free one."
)


def _nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fmt(value: Any, digits: int = 3) -> str:
    return "–" if _nan(value) else f"{value:.{digits}f}"


def _fmt_ci(ci: Any) -> str:
    return "" if not ci else f" [{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows), ""]  # fmt: skip


def seeds_cell(report: Mapping[str, Any], variant: str, alias: str, split: str) -> str:
    """``mean ± std [lo, hi] (n seeds)`` of mean macro-F1 over the version's training seeds, or a dash."""
    versions = report.get("variants", {}).get(variant, {}).get("versions", {})
    entry = versions.get(alias.split("+")[0], {})
    block = (entry.get("seeds") or {}).get(split) or {}
    metric = (block.get("metrics") or {}).get("mean/macro_f1")
    if block.get("status") != "ok" or not metric:
        return "–"
    return f"{_fmt(metric['mean'])} ± {_fmt(metric['std'])}{_fmt_ci(metric['ci95'])} ({metric['n_seeds']} seeds)"


def markdown_report(report: Mapping[str, Any], figures: Mapping[str, str] | None = None) -> str:
    """``reports/evaluation.md``: the summary table, then per variant its notes, the per-task
    metrics of every evaluated version and split, and the breakdown tables. ``figures``: variant ->
    reliability PNG path relative to the Markdown file."""
    s = report.get("settings", {})
    lines = [
        "# Evaluation of the registered models (stage `evaluate`)", "",
        ("Written by stage `evaluate` from the per-meme predictions each training run logged "
         "(`predictions/<split>.parquet`; test data is scored once, at training) for the versions behind "
         "`challenger` and `champion`. Primary metric: AUROC for binary tasks, macro-F1 otherwise; "
         f"intervals: {s.get('n_boot')}-resample percentile bootstrap 95% (seed {s.get('seed')}); "
         f"ECE: top-label, {s.get('ece_bins')} equal-width bins; breakdown groups with fewer than "
         f"{s.get('min_group_size')} labelled memes for a task show only their n."), "",
        "## Summary", "",
    ]  # fmt: skip
    rows = []
    for variant, alias, version, split, block in evaluated_splits(report):
        sm = block["summary"]
        rows.append([variant, alias, f"v{version}", split, str(sm["n_memes"]),
                     _fmt(sm["mean_primary"]) + _fmt_ci(sm.get("mean_primary_ci95")),
                     _fmt(sm["mean_macro_f1"]), seeds_cell(report, variant, alias, split),
                     _fmt(sm["ece_pooled"])])  # fmt: skip
    lines += _table(["variant", "alias", "version", "split", "memes", "mean primary [95% CI]",
                     "mean macro-F1", "mean macro-F1 over seeds ± std [95% CI seeds × memes]", "ECE (pooled)"],
                    rows) if rows else ["No split could be evaluated.", ""]  # fmt: skip
    lines += [("The registered version is one seed of its training stage, chosen on validation only (the "
               "`median-val` rule: docs/reproducibility.md); the columns before the seeds column are that seed's, "
               "the seeds column summarises every seed of the same training."), ""]  # fmt: skip
    if any("leakage" in block for *_, block in evaluated_splits(report)):  # only data with flagged memes
        lines += [LEAKAGE_NOTE, ""]
    for variant, vb in report.get("variants", {}).items():
        lines += [f"## {variant} (`{vb.get('registered_model')}`)", ""]
        lines += [f"- {n}" for n in vb.get("notes", [])]
        for alias, entry in vb.get("versions", {}).items():
            if entry.get("status") == "absent":
                continue
            if "same_as" in entry:
                continue
            lines += [f"- {'+'.join(entry['aliases'])}: v{entry['version']}, run `{entry.get('run')}`"]
            lines += [f"  - {n}" for n in entry.get("notes", [])]
            for split, block in entry.get("splits", {}).items():
                if block.get("status") != "ok":
                    lines += [f"  - {split}: {block.get('note')}"]
        lines.append("")
        if figures and variant in figures:
            lines += [f"![reliability {variant}]({figures[variant]})", ""]
        for alias, entry in vb.get("versions", {}).items():
            for split, block in (entry.get("splits") or {}).items():
                if block.get("status") != "ok":
                    continue
                label = f"{'+'.join(entry['aliases'])} v{entry['version']} · {split}"
                lines += [f"### {label}", ""]
                lines += [f"- {n}" for n in block.get("notes", [])] + ([""] if block.get("notes") else [])
                lines += _task_table(block["overall"])
                lines += _breakdown_table(block)
    return "\n".join(lines).rstrip() + "\n"


def _task_table(overall: Mapping[str, Any]) -> list[str]:
    rows = []
    for task, t in overall.items():
        ci = (t.get("ci95") or {}).get(t["primary"])
        multi = "subset_accuracy" in t
        rows.append([task, str(t["n"]), t["primary"], _fmt(t.get(t["primary"])) + _fmt_ci(ci),
                     _fmt(t.get("subset_accuracy") if multi else t.get("accuracy")), _fmt(t.get("macro_f1")),
                     _fmt(t.get("weighted_f1")), _fmt(t.get("weighted_precision")), _fmt(t.get("weighted_recall")),
                     _fmt(t.get("auroc")), _fmt(t.get("ece"))])  # fmt: skip
    return _table(["task", "n", "primary", "value [95% CI]", "accuracy", "macro-F1", "weighted-F1",
                   "w-precision", "w-recall", "AUROC", "ECE"], rows)  # fmt: skip


def _breakdown_table(block: Mapping[str, Any]) -> list[str]:
    """Rows: groups of every breakdown; columns: each task's primary metric (n); small: n only."""
    tasks = list(block["overall"])
    rows = []
    for column in BREAKDOWNS:
        for group, g in (block.get(f"by_{column}") or {}).items():
            cells = []
            for task in tasks:
                t = g["tasks"].get(task, {})
                if t.get("small"):
                    cells.append(f"(n={t['n']}, small)")
                else:
                    cells.append(f"{_fmt(t.get(t.get('primary', 'macro_f1')))} (n={t.get('n')})")
            rows.append([column, group, str(g["n_memes"]), _fmt(g["summary"].get("mean_primary")), *cells])
    if not rows:
        return []
    return ["Breakdown (each task's primary metric, n labelled):", "",
            *_table(["by", "group", "memes", "mean primary", *tasks], rows)]  # fmt: skip


def plot_reliability(curves: Mapping[str, ReliabilityBins], path: str | Path, title: str) -> Path:
    """A reliability diagram PNG: accuracy against mean confidence per bin, one line per curve
    (legend with its ECE), the diagonal, and the share of predictions per bin below."""
    fig = new_figure(6.0, 6.4)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect calibration")
    for i, (label, bins) in enumerate(curves.items()):
        filled = bins.count > 0
        color = f"C{i % 10}"
        top.plot(bins.confidence[filled], bins.accuracy[filled], marker="o", markersize=3, color=color,
                 label=f"{label} (ECE {bins.ece:.3f}, n={bins.n})")  # fmt: skip
        width = (bins.edges[1] - bins.edges[0]) / max(len(curves), 1)
        bottom.bar(bins.edges[:-1] + i * width, bins.count / max(bins.n, 1), width=width, align="edge",
                   color=color, alpha=0.7)  # fmt: skip
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(title, fontsize=10)
    top.legend(fontsize=7, loc="lower right")
    top.grid(alpha=0.3)
    bottom.set_xlabel("confidence (top label, pooled over tasks)")
    bottom.set_ylabel("share")
    bottom.grid(alpha=0.3)
    return save_figure(fig, path)


__all__ = ["LEAKAGE_NOTE", "markdown_report", "plot_reliability"]
