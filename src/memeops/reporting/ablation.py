"""The ablation report files: ``ablations.csv``, ``ablations.md``, the per-group ``dvc plots`` CSVs,
the PNG figures (:mod:`memeops.reporting.ablation_figures`) and ``reports/metrics/ablate.json``.

They follow the contract of :mod:`memeops.evaluation.report` (the HTML page reads ``ablations.csv``
/ ``ablations.md`` / ``figures/*.png``); every sentence of the Markdown is generated from the
numbers (:func:`memeops.stats.summarise`, :mod:`memeops.evaluation.ablation`).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from memeops.evaluation.ablation import NOT_RUN, GateReport, RobustnessReport
from memeops.reporting.ablation_figures import (
    plot_gate_by_class,
    plot_gate_examples,
    plot_metric_bars,
    plot_robustness,
)
from memeops.stats import MEAN_MACRO_F1, SUMMARY_COLUMNS

# ablations.csv: the summary's columns of the headline metric, with a description, without the delta CI
CSV_COLUMNS = (
    "group",
    "arm",
    "description",
    *(c for c in SUMMARY_COLUMNS if c not in {"group", "arm", "metric", "delta_ci_low", "delta_ci_high"}),
)


def slug(text: str) -> str:
    """File-name-safe form of a metric / group name (``mean/macro_f1`` -> ``mean_macro_f1``)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "x"


def _f(value: Any, digits: int = 3, sign: bool = False) -> str:
    """A number for Markdown (``–`` for NaN / None)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "–"
    if math.isnan(v):
        return "–"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def _p(value: Any) -> str:
    v = float(value) if value is not None else math.nan
    if math.isnan(v):
        return "–"
    return "<0.001" if v < 0.001 else f"{v:.3f}"


def _cell(text: Any) -> str:
    """Markdown table cell text: the report's parser splits on every '|', so none may remain."""
    return str(text).replace("|", "/").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines + [""]


def value_cell(row: Mapping[str, Any]) -> str:
    """``mean ± std [ci_low, ci_high]`` as in ablations.md."""
    if math.isnan(float(row["mean"])):
        return "–"
    return f"{_f(row['mean'])} ± {_f(row['std'])} [{_f(row['ci_low'])}, {_f(row['ci_high'])}]"


def delta_cell(row: Mapping[str, Any]) -> str:
    """``Δ [CI], p (Holm)``, bold when Holm-significant; empty for the reference."""
    if math.isnan(float(row["delta"])):
        return "–"
    text = (
        f"{_f(row['delta'], sign=True)} [{_f(row['delta_ci_low'], sign=True)}, "
        f"{_f(row['delta_ci_high'], sign=True)}], p={_p(row['p_value'])} (Holm {_p(row['p_holm'])})"
    )
    return f"**{text}**" if bool(row["significant"]) else text


def _description(descriptions: Mapping[str, str] | None, group: str, arm: str) -> str:
    if not descriptions:
        return ""
    return str(descriptions.get(f"{group}/{arm}", descriptions.get(arm, "")))


def ablations_csv_frame(
    summary: pd.DataFrame, headline: str = MEAN_MACRO_F1, descriptions: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """The report page's ``ablations.csv``: one row per (group, arm) with the headline metric's
    statistics (:data:`CSV_COLUMNS`) and one column per other metric holding its mean."""
    if headline not in set(summary["metric"]):
        raise ValueError(f"headline metric {headline!r} is not in the summary")
    head = summary[summary["metric"] == headline].reset_index(drop=True)
    head = head.assign(
        description=[
            _description(descriptions, g, a) for g, a in zip(head["group"], head["arm"], strict=True)
        ]
    )
    out = head[list(CSV_COLUMNS)].copy()
    for metric in dict.fromkeys(summary["metric"]):
        if metric == headline:
            continue
        means = summary[summary["metric"] == metric].set_index(["group", "arm"])["mean"]
        out[metric] = [
            float(means.get((g, a), math.nan)) for g, a in zip(out["group"], out["arm"], strict=True)
        ]
    return out


def _rel(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


def _settings_line(summary: pd.DataFrame) -> str:
    attrs = summary.attrs
    seeds = sorted({int(v) for v in summary["n_seeds"]}) if len(summary) else []
    conf = attrs.get("confidence", 0.95)
    source = (
        "test memes and seeds (each resample draws the memes and each arm's seeds with replacement: "
        "test-set sampling and seed variability together)"
        if attrs.get("resample_seeds", True)
        else "test memes (the same memes for every seed and arm: test-set sampling variability, "
        "seeds averaged)"
    )
    return (
        f"Test split; each arm is the mean over its seeds ({', '.join(map(str, seeds)) or '–'} per arm) "
        f"± the standard deviation over seeds; intervals are {conf:.0%} percentile bootstraps over "
        f"{source}, {attrs.get('n_boot', '?')} resamples, seed {attrs.get('seed', '?')}. Δ is the "
        "paired difference to the group's reference arm on the same resamples, with a two-sided "
        f"bootstrap p and its Holm adjustment over the group's arms; **bold** = Holm p < {1 - conf:g}."
    )


def _group_markdown(
    summary: pd.DataFrame,
    group: str,
    reference: str,
    descriptions: Mapping[str, str] | None,
    charts: Sequence[Path],
    out_dir: Path,
    protocol: str | None = None,
) -> list[str]:
    """The group's table (one row per arm: ``mean ± std [CI]`` per metric, then ``Δ vs reference``
    per metric; split in two tables so each stays readable), findings, undefined metrics, charts."""
    sub = summary[summary["group"] == group]
    metrics = list(dict.fromkeys(sub["metric"]))
    arms = list(dict.fromkeys(sub["arm"]))
    has_desc = any(_description(descriptions, group, a) for a in arms)
    values, deltas = [], []
    for arm in arms:
        recs = sub[sub["arm"] == arm].set_index("metric")
        head: list[Any] = [arm, *([_description(descriptions, group, arm)] if has_desc else [])]
        values.append([*head, int(recs["n_seeds"].iloc[0]), *(value_cell(recs.loc[m]) for m in metrics)])
        if arm != reference:
            deltas.append([arm, *(delta_cell(recs.loc[m]) for m in metrics)])
    lines = [
        f"## {group}",
        "",
        *([f"Protocol: {protocol}", ""] if protocol else []),
        "Test metrics, mean ± std over seeds [bootstrap CI]:",
        "",
        *_md_table(["arm", *(["description"] if has_desc else []), "seeds", *metrics], values),
    ]
    if deltas:
        lines += [
            f"Δ vs `{reference}` [CI], two-sided p (Holm):",
            "",
            *_md_table(["arm", *(f"Δ {m}" for m in metrics)], deltas),
        ]
    findings = []
    for metric in metrics:
        m = sub[(sub["metric"] == metric) & (sub["arm"] != reference)]
        sig = m[m["significant"]]
        if len(m):
            parts = [f"{a} ({_f(d, sign=True)})" for a, d in zip(sig["arm"], sig["delta"], strict=True)]
            findings.append(
                f"- {metric}: {len(sig)} of {len(m)} arms differ significantly from {reference} "
                f"after Holm" + (f": {', '.join(parts)}" if parts else "")
            )
    means = sub.set_index(["arm", "metric"])["mean"]
    for arm in arms:  # say which numbers are missing and why a mean over tasks may not be comparable
        undefined = [m for m in metrics if math.isnan(float(means[(arm, m)]))]
        if undefined:
            note = (
                f" (its {MEAN_MACRO_F1} averages only the tasks it predicts)"
                if MEAN_MACRO_F1 in metrics
                else ""
            )
            findings.append(f"- `{arm}` has no value for {', '.join(undefined)}{note}")
    lines += [*findings, ""] if findings else []
    for chart in charts:
        lines.append(f"- chart: `{_rel(chart, out_dir)}`")
    return [*lines, ""] if charts else lines


def _delta_with_ci(delta: Any, low: Any, high: Any) -> str:
    return f"{_f(delta, sign=True)} [{_f(low, sign=True)}, {_f(high, sign=True)}]"


def _claims_markdown(claims: Sequence[Mapping[str, Any]]) -> list[str]:
    if not claims:
        return []
    rows = [
        [
            c["claim"],
            c["group"],
            f"{c['better']} > {c['worse']}",
            c["metric"],
            f"{_f(c['better_mean'])} vs {_f(c['worse_mean'])}",
            _delta_with_ci(c["delta"], c["delta_ci_low"], c["delta_ci_high"]),
            _p(c["p_value"]),
            f"**{c['verdict']}**" + (f" ({c['reason']})" if c["verdict"] == NOT_RUN else ""),
        ]
        for c in claims
    ]
    alpha = next((c.get("alpha") for c in claims if c.get("alpha") is not None), 0.05)
    return [
        "## Mechanism checks",
        "",
        (
            f"Each claim is one paired two-sided test (raw p, alpha {alpha:g}): supported = better arm ahead "
            "and p < alpha; contradicted = behind and p < alpha."
        ),
        "",
        *_md_table(["claim", "group", "comparison", "metric", "means", "Δ [CI]", "p", "verdict"], rows),
    ]


def _gate_markdown(gate: GateReport, figures: Sequence[Path], out_dir: Path) -> list[str]:
    lines = [
        "## GatedCLIP gate",
        "",
        f"Gate of `{gate.group}/{gate.arm}` on labelled test memes, mean over seeds (1 = image, 0 = text).",
        "",
    ]
    rows = [
        [r.task, r.label, int(r.n), _f(r.mean), _f(r.std), _f(r.q25), _f(r.median), _f(r.q75)]
        for r in gate.by_class.itertuples()
    ]
    lines += _md_table(["task", "label", "n", "mean", "std", "q25", "median", "q75"], rows)
    for task, per in gate.by_class.groupby("task", sort=False):
        per = per.dropna(subset=["mean"])
        if len(per) >= 2:
            hi, lo = per.loc[per["mean"].idxmax()], per.loc[per["mean"].idxmin()]
            if hi["mean"] == lo["mean"]:
                lines.append(f"- {task}: every class has the same mean gate ({_f(hi['mean'])})")
                continue
            lines.append(
                f"- {task}: most image-weighted class {hi['label']} (mean {_f(hi['mean'])}), most "
                f"text-weighted {lo['label']} (mean {_f(lo['mean'])}); spread {_f(hi['mean'] - lo['mean'])}"
            )
    lines.append("")
    if len(gate.examples):
        label_cols = [c for c in gate.examples.columns if str(c).startswith("label_")]
        rows = [
            [
                r["leaning"],
                r["meme_id"],
                _f(r["gate"]),
                r.get("language", ""),
                str(r.get("text", ""))[:80],
                *[r[c] for c in label_cols],
            ]
            for _, r in gate.examples.iterrows()
        ]
        lines += [
            "Examples (highest and lowest gate):",
            "",
            *_md_table(["leaning", "meme", "gate", "language", "caption", *label_cols], rows),
        ]
    lines += [f"- figure: `{_rel(f, out_dir)}`" for f in figures]
    return [*lines, ""]


def _robustness_markdown(rob: RobustnessReport, figure: Path | None, out_dir: Path) -> list[str]:
    has_att = "region_attention" in rob.frame.columns
    rows = [
        [
            r["level"],
            r["arm"],
            _f(r["mean"]),
            f"[{_f(r['ci_low'])}, {_f(r['ci_high'])}]",
            *([_f(r["region_attention"])] if has_att else []),
        ]
        for _, r in rob.frame.iterrows()
    ]
    rows.append(
        [
            "global only",
            rob.fallback_arm,
            _f(rob.fallback_mean),
            f"[{_f(rob.fallback_ci[0])}, {_f(rob.fallback_ci[1])}]",
            *(["–"] if has_att else []),
        ]
    )
    header = ["level", "arm", rob.metric, "CI", *(["attention on regions"] if has_att else [])]
    v = rob.verdict
    lines = [
        "## MGMCF robustness",
        "",
        f"`{rob.group}`: {rob.metric} as the region source degrades.",
        "",
        *_md_table(header, rows),
        f"Verdict: **{v['verdict']}**. {v['text']}",
        "",
    ]
    if figure is not None:
        lines += [f"- figure: `{_rel(figure, out_dir)}`", ""]
    return lines


def gate_figures(gate: GateReport, figures_dir: str | Path) -> list[Path]:
    """``<group>_gate_by_class.png`` and (with examples) ``<group>_gate_examples.png``."""
    figs = Path(figures_dir)
    title = f"{gate.group}/{gate.arm}: gate by gold class"
    drawn = [plot_gate_by_class(gate.values, figs / f"{slug(gate.group)}_gate_by_class.png", title)]
    if len(gate.examples):
        drawn.append(
            plot_gate_examples(gate.examples, gate.image_root, figs / f"{slug(gate.group)}_gate_examples.png")
        )
    return drawn


def robustness_figure(rob: RobustnessReport, figures_dir: str | Path) -> Path:
    """``<group>_robustness.png``: the curve with the global-only band."""
    path = Path(figures_dir) / f"{slug(rob.group)}_robustness.png"
    return plot_robustness(rob.frame, rob.fallback_mean, rob.fallback_ci, path, rob.metric)


def write_ablation_reports(
    summary: pd.DataFrame,
    claims: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    headline: str = MEAN_MACRO_F1,
    gate: GateReport | None = None,
    robustness: RobustnessReport | None = None,
    figures_dir: str | Path | None = None,
    plots_dir: str | Path | None = None,
    descriptions: Mapping[str, str] | None = None,
    reference: str | None = None,
    protocols: Mapping[str, str] | None = None,
) -> list[Path]:
    """Write ``ablations.csv``, ``ablations.md``, per-group ``dvc plots`` CSVs and the PNG figures.

    Defaults: ``figures_dir = <out_dir>/figures`` (the report page embeds every PNG there),
    ``plots_dir = <out_dir>/plots/ablate``. ``descriptions`` maps ``arm`` or ``group/arm`` to a one-line
    description; ``protocols`` maps a group to the line that says how its arms were trained (so
    ``full`` reads as the protocol's full model, not the leaderboard's). Returns the written paths.
    """
    out = Path(out_dir)
    figs = Path(figures_dir) if figures_dir is not None else out / "figures"
    plots = Path(plots_dir) if plots_dir is not None else out / "plots" / "ablate"
    default_ref = reference or summary.attrs.get("reference", "full")
    group_refs = {} if reference else dict(summary.attrs.get("references", {}))
    for d in (out, figs, plots):
        d.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    csv_path = out / "ablations.csv"
    ablations_csv_frame(summary, headline, descriptions).to_csv(csv_path, index=False)
    written.append(csv_path)

    md = ["# Ablations", "", _settings_line(summary), ""]
    for group in dict.fromkeys(summary["group"]):
        ref = group_refs.get(group, default_ref)
        sub = summary[summary["group"] == group]
        long_path = plots / f"{slug(group)}.csv"
        sub[["arm", "metric", "mean", "ci_low", "ci_high"]].to_csv(long_path, index=False)
        charts = []
        for metric in dict.fromkeys(sub["metric"]):
            chart = plot_metric_bars(summary, group, metric, figs / f"{slug(group)}_{slug(metric)}.png", ref)
            if chart is not None:
                charts.append(chart)
        written += [long_path, *charts]
        md += _group_markdown(summary, group, ref, descriptions, charts, out, (protocols or {}).get(group))
    md += _claims_markdown(claims)
    if gate is not None:
        gate_figs = gate_figures(gate, figs)
        written += gate_figs
        md += _gate_markdown(gate, gate_figs, out)
    if robustness is not None:
        rob_fig = robustness_figure(robustness, figs)
        written.append(rob_fig)
        md += _robustness_markdown(robustness, rob_fig, out)
    md_path = out / "ablations.md"
    md_path.write_text("\n".join(md).rstrip() + "\n", encoding="utf-8")
    written.append(md_path)
    return written


def _finite(value: Any) -> Any:
    """JSON-safe scalar: NaN / inf -> None, numpy -> Python."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def ablation_metrics_json(summary: pd.DataFrame, claims: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``reports/metrics/ablate.json`` for ``dvc metrics``: ``{group: {arm: {metric: mean}}}`` plus
    ``"claims": {slug(claim): {delta, delta_ci_low, delta_ci_high, p_value, verdict}}``; NaN -> None."""
    out: dict[str, Any] = {}
    for rec in summary.itertuples():
        out.setdefault(str(rec.group), {}).setdefault(str(rec.arm), {})[str(rec.metric)] = _finite(rec.mean)
    if claims:
        if "claims" in out:
            raise ValueError("a group named 'claims' collides with the claims entry of ablate.json")
        entries: dict[str, Any] = {}
        for i, c in enumerate(claims):
            key = slug(str(c.get("claim") or f"claim_{i}"))[:60]
            key = key if key not in entries else f"{key}_{i}"
            entries[key] = {
                k: _finite(c.get(k)) for k in ("delta", "delta_ci_low", "delta_ci_high", "p_value")
            }
            entries[key]["verdict"] = str(c.get("verdict", ""))
        out["claims"] = entries
    json.dumps(out, allow_nan=False)  # fails loudly here rather than as an invalid metrics file
    return out


__all__ = [
    "CSV_COLUMNS",
    "ablation_metrics_json",
    "ablations_csv_frame",
    "delta_cell",
    "gate_figures",
    "robustness_figure",
    "slug",
    "value_cell",
    "write_ablation_reports",
]
