"""Ablation mechanism checks and the GatedCLIP / MGMCF diagnostics, on the statistics core.

Stage ``ablate`` trains every ablation arm over several seeds, selects each run on the validation
split and hands this module one :class:`memeops.stats.ArmRun` per (group, arm, seed) with that
run's TEST-split predictions. Everything here is a pure function of those predictions (no training,
no tracking, no figures: :mod:`memeops.reporting.ablation` draws and writes the report files).

Statistics come from :mod:`memeops.stats` (:func:`memeops.stats.summarise` for the per-arm table):

* an arm's value is the mean over its seeds of the metric on the whole test split; ``std`` is the
  standard deviation over seeds (ddof=1, 0 for one seed): the **seed variability**;
* its interval is a percentile bootstrap that resamples test memes AND seeds
  (:func:`memeops.stats.bootstrap_group`, ``resample_seeds=True``): each resample draws meme
  indices with replacement (the same memes for every seed and arm) and each arm's seeds with
  replacement (the same draws for every arm with as many seeds), then averages the metric over the
  drawn seeds. The interval therefore widens for seed noise as well as for test-set sampling
  variability; with one seed it is the plain meme bootstrap;
* arm A vs arm B is paired: the same resamples for both arms; the two-sided p-value is
  ``min(1, 2 * min((1 + #{delta* <= 0}) / (1 + n_valid), (1 + #{delta* >= 0}) / (1 + n_valid)))``,
  where resamples with an undefined metric (e.g. AUROC of a one-class resample) are skipped and
  counted; within a group and metric the p-values of the non-reference arms are Holm-Bonferroni
  adjusted.

The resamples depend only on (number of memes, seeds per arm, ``n_boot``, ``seed``), so the same
settings give the same resamples in :func:`memeops.stats.summarise`, :func:`check_claims` and
:func:`robustness_verdict`: their raw p-values for the same pair of arms agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from memeops.evaluation.metrics import labelled_mask
from memeops.stats import (
    ArmRun,
    bootstrap_group,
    check_same_memes,
    compare_arms,
    paired_comparison,
    parse_metric,
    runs_by_arm,
    runs_by_group,
)

if TYPE_CHECKING:
    from memeops.models.base import TaskSpec

SUPPORTED, NOT_SIGNIFICANT, CONTRADICTED, NOT_RUN = "supported", "not significant", "contradicted", "not run"
FALLS_BACK, COLLAPSES = "falls back to global features", "collapses below global-only"


# --------------------------------------------------------------------------- mechanism checks


def _verdict(delta: float, p: float, alpha: float) -> str:
    if not math.isnan(p) and p < alpha:
        if delta > 0:
            return SUPPORTED
        if delta < 0:
            return CONTRADICTED
    return NOT_SIGNIFICANT


def check_claims(
    runs: Sequence[ArmRun],
    specs: Mapping[str, TaskSpec],
    claims: Sequence[Mapping[str, str]],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    resample_seeds: bool = True,
) -> list[dict[str, Any]]:
    """Test each pre-stated mechanism claim "``better`` beats ``worse`` on ``metric`` in ``group``".

    Verdict: "supported" (delta > 0, raw two-sided p < 1 - confidence), "contradicted" (delta < 0,
    p < 1 - confidence), "not significant", or "not run" (a group / arm is missing, or the metric is
    undefined for an arm) with the reason. The p-value is not multiplicity-adjusted: each claim is one
    stated hypothesis. Same resamples as :func:`summarise` with the same settings.
    """
    alpha = 1.0 - confidence
    by_group = {g: runs_by_arm(rs) for g, rs in runs_by_group(runs).items()}
    needed: dict[str, tuple[set[str], set[str]]] = {}
    records: list[dict[str, Any]] = []
    for claim in claims:
        absent = [k for k in ("group", "better", "worse", "metric") if k not in claim]
        if absent:
            raise ValueError(f"claim {claim.get('claim', claim)!r} lacks {', '.join(absent)}")
        rec: dict[str, Any] = {
            "claim": str(claim.get("claim", "")),
            "group": str(claim["group"]),
            "better": str(claim["better"]),
            "worse": str(claim["worse"]),
            "metric": str(claim["metric"]),
            "better_mean": math.nan,
            "worse_mean": math.nan,
            "delta": math.nan,
            "delta_ci_low": math.nan,
            "delta_ci_high": math.nan,
            "p_value": math.nan,
            "n_valid": 0,
            "alpha": alpha,
            "verdict": NOT_RUN,
            "reason": "",
        }
        parse_metric(rec["metric"], specs)
        arms = by_group.get(rec["group"])
        missing = [] if arms is None else [a for a in (rec["better"], rec["worse"]) if a not in arms]
        if arms is None:
            rec["reason"] = f"group {rec['group']!r} has no runs"
        elif missing:
            rec["reason"] = f"arm(s) {', '.join(missing)} not run in group {rec['group']!r}"
        else:
            arm_set, metric_set = needed.setdefault(rec["group"], (set(), set()))
            arm_set.update((rec["better"], rec["worse"]))
            metric_set.add(rec["metric"])
        records.append(rec)
    boots = {
        group: bootstrap_group(
            [r for a in by_group[group] if a in arm_set for r in by_group[group][a]],
            specs,
            sorted(metric_set),
            n_boot=n_boot,
            seed=seed,
            resample_seeds=resample_seeds,
        )
        for group, (arm_set, metric_set) in needed.items()
    }
    for rec in records:
        if rec["reason"]:
            continue
        comp = paired_comparison(boots[rec["group"]], rec["better"], rec["worse"], rec["metric"], confidence)
        rec.update(
            better_mean=comp.mean_a,
            worse_mean=comp.mean_b,
            delta=comp.delta,
            delta_ci_low=comp.ci_low,
            delta_ci_high=comp.ci_high,
            p_value=comp.p_value,
            n_valid=comp.n_valid,
        )
        if math.isnan(comp.delta):
            rec["reason"] = f"{rec['metric']} is undefined for {rec['better']} or {rec['worse']}"
            continue
        rec["verdict"] = _verdict(comp.delta, comp.p_value, alpha)
        rec["reason"] = (
            f"delta {comp.delta:+.4f} [{comp.ci_low:+.4f}, {comp.ci_high:+.4f}], "
            f"p={comp.p_value:.4g} vs alpha {alpha:g} ({comp.n_valid} valid resamples)"
        )
    return records


# --------------------------------------------------------------------------- GatedCLIP gate


def _one_arm(runs: Sequence[ArmRun], extra: str) -> list[ArmRun]:
    """The runs exposing ``extras[extra]``; they must all belong to one (group, arm)."""
    exposing = [r for r in runs if extra in r.predictions.extras]
    if not exposing:
        raise ValueError(f"no run exposes extras[{extra!r}]")
    arms = {(r.group, r.arm) for r in exposing}
    if len(arms) != 1:
        raise ValueError(f"expected the runs of one arm, got {sorted(arms)}")
    return exposing


def _meme_ids(run: ArmRun) -> list[str]:
    ids = run.predictions.meme_ids
    return [str(m) for m in ids] if ids is not None else [str(i) for i in range(len(run.predictions))]


def gate_per_meme(runs: Sequence[ArmRun]) -> pd.Series:
    """The GatedCLIP gate per test meme (1 = image, 0 = text), averaged over the arm's seeds; indexed by
    meme id. Averaging removes one seed's idiosyncrasies from the per-meme reading."""
    gated = _one_arm(runs, "gate")
    n = check_same_memes(gated[0].group, gated)
    gates = np.stack([np.asarray(r.predictions.extras["gate"], dtype=np.float64).reshape(n) for r in gated])
    return pd.Series(gates.mean(axis=0), index=pd.Index(_meme_ids(gated[0]), name="meme_id"), name="gate")


def gate_class_values(
    runs: Sequence[ArmRun], specs: Mapping[str, TaskSpec], tasks: Sequence[str]
) -> dict[str, dict[str, np.ndarray]]:
    """``{task: {label: gates of the labelled test memes with that gold label}}`` (multi-label: memes
    with the label set; a meme counts once per label it has). Tasks without targets are left out."""
    gate = gate_per_meme(runs).to_numpy()
    preds = _one_arm(runs, "gate")[0].predictions
    out: dict[str, dict[str, np.ndarray]] = {}
    for task in tasks:
        if task not in specs:
            raise ValueError(f"unknown task {task!r}")
        spec = specs[task]
        if task not in preds.targets:
            continue
        targets = np.asarray(preds.targets[task])
        mask = labelled_mask(targets, spec)
        if spec.kind == "multi":
            out[task] = {lab: gate[mask & (targets[:, j] == 1)] for j, lab in enumerate(spec.labels)}
        else:
            out[task] = {lab: gate[mask & (targets == j)] for j, lab in enumerate(spec.labels)}
    return out


def _describe(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return dict.fromkeys(("mean", "std", "q25", "median", "q75"), math.nan)
    q25, median, q75 = np.percentile(values, [25, 50, 75])
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {
        "mean": float(values.mean()),
        "std": std,
        "q25": float(q25),
        "median": float(median),
        "q75": float(q75),
    }


def gate_by_class(
    runs: Sequence[ArmRun], specs: Mapping[str, TaskSpec], tasks: Sequence[str]
) -> pd.DataFrame:
    """Gate distribution per gold class over labelled test memes: task, label, n, mean, std (ddof=1,
    0 for one meme), q25, median, q75 (NaN stats for an empty class, kept so the table is complete)."""
    rows = [
        {"task": task, "label": label, "n": len(values), **_describe(values)}
        for task, per_label in gate_class_values(runs, specs, tasks).items()
        for label, values in per_label.items()
    ]
    return pd.DataFrame(rows, columns=["task", "label", "n", "mean", "std", "q25", "median", "q75"])


def _label_text(value: Any) -> str:
    """A gold label cell of the meme table as text (lists joined, null -> "")."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(str(v) for v in value)
    return str(value)


def gate_examples(runs: Sequence[ArmRun], memes: pd.DataFrame, k: int = 4) -> pd.DataFrame:
    """The ``k`` most image-leaning (highest gate) and ``k`` most text-leaning (lowest gate) test memes
    with their caption, language, image path and gold labels (``label_<task>`` columns of ``memes``).

    Columns: meme_id, leaning ("image" / "text"), gate, text, language, image_path (and
    source_root when the table has it), label_<task>... A meme is never listed under both leanings.
    """
    gate = gate_per_meme(runs)
    order = np.argsort(-gate.to_numpy(), kind="stable")
    image_pos = [int(p) for p in order[:k]]
    taken = set(image_pos)
    text_pos = [int(p) for p in order[::-1] if int(p) not in taken][:k]
    picked = pd.DataFrame(
        {
            "meme_id": [gate.index[p] for p in image_pos + text_pos],
            "leaning": ["image"] * len(image_pos) + ["text"] * len(text_pos),
            "gate": [float(gate.iloc[p]) for p in image_pos + text_pos],
        }
    )
    # the tasks the runs predict (the meme table carries every taxonomy task, most empty here)
    tasks = {t for run in runs for t in run.predictions.probs}
    label_cols = [c for c in memes.columns if str(c).startswith("label_") and str(c)[len("label_"):] in tasks]
    keep = [
        "meme_id",
        *[c for c in ("text", "language", "image_path", "source_root") if c in memes.columns],
        *label_cols,
    ]
    table = memes[keep].drop_duplicates("meme_id").assign(meme_id=lambda d: d["meme_id"].astype(str))
    out = picked.merge(table, on="meme_id", how="left")
    for col in ("text", "language", "image_path"):
        out[col] = out[col].fillna("") if col in out.columns else ""
    for col in label_cols:
        out[col] = out[col].map(_label_text)
    return out


@dataclass
class GateReport:
    """What the report shows about one GatedCLIP arm's gate."""

    group: str
    arm: str
    by_class: pd.DataFrame
    examples: pd.DataFrame
    values: dict[str, dict[str, np.ndarray]]
    image_root: Path | None = None


def gate_report(
    runs: Sequence[ArmRun],
    specs: Mapping[str, TaskSpec],
    tasks: Sequence[str],
    memes: pd.DataFrame | None = None,
    image_root: str | Path | None = None,
    k: int = 4,
) -> GateReport:
    """Gate diagnostics of the runs of one arm (per-class table, examples when ``memes`` is given);
    :func:`memeops.reporting.ablation.write_ablation_reports` draws their figures."""
    gated = _one_arm(runs, "gate")
    examples = gate_examples(gated, memes, k) if memes is not None else pd.DataFrame()
    return GateReport(
        gated[0].group,
        gated[0].arm,
        gate_by_class(gated, specs, tasks),
        examples,
        gate_class_values(gated, specs, tasks),
        Path(image_root) if image_root else None,
    )


# --------------------------------------------------------------------------- MGMCF robustness


def region_attention_mass(
    runs: Sequence[ArmRun], region_slots: slice | tuple[int, int], group: str | None = None
) -> dict[str, float]:
    """``{arm: mean attention mass on the region slots}``: ``extras["attention"][:, slots].sum(1)``
    averaged over memes and seeds. Arms without attention, or whose attention has no region slots
    (object level off), are left out rather than reported as 0."""
    slots = region_slots if isinstance(region_slots, slice) else slice(*region_slots)
    selected = [r for r in runs if group is None or r.group == group]
    if len({r.group for r in selected}) > 1:
        raise ValueError("region_attention_mass: runs of several groups; pass group=")
    out: dict[str, float] = {}
    for arm, arm_runs in runs_by_arm(selected).items():
        masses = []
        for run in arm_runs:
            att = run.predictions.extras.get("attention")
            if att is None:
                continue
            att = np.asarray(att, dtype=np.float64)
            stop = slots.stop if slots.stop is not None else att.shape[1]
            if att.ndim != 2 or att.shape[1] < stop or att[:, slots].shape[1] == 0:
                continue
            masses.append(float(att[:, slots].sum(axis=1).mean()))
        if masses:
            out[arm] = float(np.mean(masses))
    return out


def _summary_group(summary: pd.DataFrame, group: str | None) -> pd.DataFrame:
    groups = list(dict.fromkeys(summary["group"]))
    if group is None:
        if len(groups) != 1:
            raise ValueError(f"summary has groups {groups}; pass group=")
        group = groups[0]
    return summary[summary["group"] == group]


def robustness_frame(
    summary: pd.DataFrame,
    levels: Sequence[tuple[str, str]],
    fallback_arm: str,
    metric: str,
    attention: Mapping[str, float] | None = None,
    group: str | None = None,
) -> pd.DataFrame:
    """The robustness curve: one row per level (level, arm, n_seeds, mean, ci_low, ci_high and, with
    ``attention``, region_attention), in the given order; a level whose arm was not run is NaN.
    ``.attrs["fallback"]`` holds the global-only arm's mean and CI (the band of the plot)."""
    sub = _summary_group(summary, group)
    sub = sub[sub["metric"] == metric].set_index("arm")
    if fallback_arm not in sub.index:
        raise ValueError(f"fallback arm {fallback_arm!r} has no {metric} in the summary")
    rows = []
    for arm, label in levels:
        rec = sub.loc[arm] if arm in sub.index else None
        row = {"level": label, "arm": arm, "n_seeds": int(rec["n_seeds"]) if rec is not None else 0}
        for col in ("mean", "ci_low", "ci_high"):
            row[col] = float(rec[col]) if rec is not None else math.nan
        if attention is not None:
            row["region_attention"] = float(attention.get(arm, math.nan))
        rows.append(row)
    frame = pd.DataFrame(rows)
    fb = sub.loc[fallback_arm]
    frame.attrs["fallback"] = {
        "arm": fallback_arm,
        "mean": float(fb["mean"]),
        "ci_low": float(fb["ci_low"]),
        "ci_high": float(fb["ci_high"]),
    }
    frame.attrs["metric"] = metric
    return frame


def robustness_verdict(
    runs: Sequence[ArmRun],
    specs: Mapping[str, TaskSpec],
    levels: Sequence[tuple[str, str]],
    fallback_arm: str,
    metric: str,
    *,
    group: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    resample_seeds: bool = True,
) -> dict[str, Any]:
    """Does the most degraded region source fall back to global features or collapse below them?

    Compares the last level of ``levels`` that was run with ``fallback_arm`` (paired bootstrap,
    two-sided): "collapses below global-only" when it is significantly below (delta < 0,
    p < 1 - confidence), else "falls back to global features"; "not run" when an arm is missing.
    """
    alpha = 1.0 - confidence
    selected = [r for r in runs if group is None or r.group == group]
    if len({r.group for r in selected}) > 1:
        raise ValueError("robustness_verdict: runs of several groups; pass group=")
    by_arm = runs_by_arm(selected)
    run_levels = [(arm, label) for arm, label in levels if arm in by_arm]
    out: dict[str, Any] = {
        "metric": metric,
        "fallback_arm": fallback_arm,
        "alpha": alpha,
        "verdict": NOT_RUN,
        "degraded_arm": None,
        "degraded_level": None,
        "degraded_mean": math.nan,
        "fallback_mean": math.nan,
        "delta": math.nan,
        "delta_ci_low": math.nan,
        "delta_ci_high": math.nan,
        "p_value": math.nan,
        "text": "",
    }
    if not run_levels or fallback_arm not in by_arm:
        out["text"] = (
            f"not run: needs a degraded level and {fallback_arm!r} (runs: {', '.join(by_arm) or 'none'})"
        )
        return out
    arm, label = run_levels[-1]
    comp = compare_arms(
        by_arm[arm], by_arm[fallback_arm], specs, metric, n_boot=n_boot, seed=seed, confidence=confidence,
        resample_seeds=resample_seeds,
    )
    collapsed = comp.delta < 0 and comp.p_value < alpha
    out.update(
        degraded_arm=arm,
        degraded_level=label,
        degraded_mean=comp.mean_a,
        fallback_mean=comp.mean_b,
        delta=comp.delta,
        delta_ci_low=comp.ci_low,
        delta_ci_high=comp.ci_high,
        p_value=comp.p_value,
        verdict=COLLAPSES if collapsed else FALLS_BACK,
    )
    relation = "significantly below" if collapsed else "not significantly below"
    out["text"] = (
        f"{label} ({arm}) {metric} {comp.mean_a:.3f} vs global-only ({fallback_arm}) {comp.mean_b:.3f}: "
        f"delta {comp.delta:+.3f} [{comp.ci_low:+.3f}, {comp.ci_high:+.3f}], p={comp.p_value:.3g} "
        f"({relation} at alpha {alpha:g}) -> {out['verdict']}"
    )
    return out


@dataclass
class RobustnessReport:
    """The MGMCF robustness curve, its verdict and the global-only band."""

    group: str
    metric: str
    frame: pd.DataFrame
    verdict: dict[str, Any]
    fallback_arm: str
    fallback_mean: float
    fallback_ci: tuple[float, float]


def robustness_report(
    runs: Sequence[ArmRun],
    specs: Mapping[str, TaskSpec],
    summary: pd.DataFrame,
    levels: Sequence[tuple[str, str]],
    fallback_arm: str,
    metric: str,
    group: str | None = None,
    region_slots: slice | tuple[int, int] | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    resample_seeds: bool = True,
) -> RobustnessReport:
    """Curve (:func:`robustness_frame`) + verdict (:func:`robustness_verdict`) of one group (the
    runs' only group, or ``group``); :func:`memeops.reporting.ablation.write_ablation_reports`
    draws its figure."""
    if group is None:
        groups = list(dict.fromkeys(r.group for r in runs))
        if len(groups) != 1:
            raise ValueError(f"robustness_report: runs of groups {groups}; pass group=")
        group = groups[0]
    attention = region_attention_mass(runs, region_slots, group) if region_slots is not None else None
    frame = robustness_frame(summary, levels, fallback_arm, metric, attention, group)
    verdict = robustness_verdict(
        runs,
        specs,
        levels,
        fallback_arm,
        metric,
        group=group,
        n_boot=n_boot,
        seed=seed,
        confidence=confidence,
        resample_seeds=resample_seeds,
    )
    fb = frame.attrs["fallback"]
    return RobustnessReport(group, metric, frame, verdict, fallback_arm, fb["mean"], (fb["ci_low"], fb["ci_high"]))


__all__ = [
    "COLLAPSES",
    "CONTRADICTED",
    "FALLS_BACK",
    "NOT_RUN",
    "NOT_SIGNIFICANT",
    "SUPPORTED",
    "GateReport",
    "RobustnessReport",
    "check_claims",
    "gate_by_class",
    "gate_class_values",
    "gate_examples",
    "gate_per_meme",
    "gate_report",
    "region_attention_mass",
    "robustness_frame",
    "robustness_report",
    "robustness_verdict",
]
