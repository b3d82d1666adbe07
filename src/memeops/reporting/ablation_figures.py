"""The ablation report's figures: metric bars per group, the GatedCLIP gate by class and its
example memes, the MGMCF robustness curve. Each draws numbers computed elsewhere
(:mod:`memeops.stats`, :mod:`memeops.evaluation.ablation`) through the one figure helper
(:mod:`memeops.reporting.figures`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from memeops.reporting.figures import label_font, new_figure, save_figure


def _font_for(text: str) -> Any:
    """A CJK-capable font when the text needs one (captions are multilingual), else None."""
    return label_font() if any(ord(ch) > 0x2FF for ch in text) else None


def _err(mean: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Error bar lengths; clipped at 0 because a seed-mean may sit just outside its percentile CI."""
    return np.clip(np.nan_to_num(np.vstack([mean - low, high - mean])), 0, None)


def plot_metric_bars(
    summary: pd.DataFrame, group: str, metric: str, path: str | Path, reference: str | None = None
) -> Path | None:
    """Horizontal bars per arm (seed-mean, CI error bars), the reference arm's mean as a dashed line,
    arms significantly different from it (Holm) marked with ``*`` and a different colour. None when
    the metric is undefined for every arm."""
    reference = (
        reference or summary.attrs.get("references", {}).get(group) or summary.attrs.get("reference", "full")
    )
    sub = summary[(summary["group"] == group) & (summary["metric"] == metric)]
    if sub.empty or sub["mean"].isna().all():
        return None
    mean = sub["mean"].to_numpy(float)
    err = _err(mean, sub["ci_low"].to_numpy(float), sub["ci_high"].to_numpy(float))
    sig = sub["significant"].to_numpy(bool)
    labels = [f"{arm} *" if s else str(arm) for arm, s in zip(sub["arm"], sig, strict=True)]
    colours = [
        "#dd8452" if s else ("#4c72b0" if a != reference else "#55a868")
        for a, s in zip(sub["arm"], sig, strict=True)
    ]
    fig = new_figure(6.5, 0.45 * len(sub) + 1.4)
    ax = fig.subplots()
    y = np.arange(len(sub))[::-1]
    ax.barh(y, np.nan_to_num(mean), xerr=err, color=colours, capsize=3)
    ax.set_yticks(y, labels)
    ref = sub[sub["arm"] == reference]["mean"]
    if len(ref) and not math.isnan(float(ref.iloc[0])):
        ax.axvline(
            float(ref.iloc[0]), color="black", linestyle="--", linewidth=1, label=f"{reference} (reference)"
        )
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: bars reach any x
    ax.set_xlabel(f"{metric} (test, mean over seeds; 95% bootstrap CI)")
    ax.set_title(f"{group}: * = Holm-significant vs {reference}", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, path)


def plot_gate_by_class(
    values: Mapping[str, Mapping[str, np.ndarray]],
    path: str | Path,
    title: str = "GatedCLIP gate by gold class",
) -> Path:
    """Box plots of the gate per gold class, one panel per task, a line at 0.5 (equal weighting).
    ``values`` as from :func:`gate_class_values`; classes without memes are left out of the panel."""
    tasks = list(values) or ["(no labelled task)"]
    fig = new_figure(max(4.0, 3.2 * len(tasks)), 3.6)
    axes = np.atleast_1d(fig.subplots(1, len(tasks), sharey=True))
    for ax, task in zip(axes, tasks, strict=True):
        per_label = {lab: v for lab, v in values.get(task, {}).items() if len(v)}
        if per_label:
            ax.boxplot(
                list(per_label.values()), tick_labels=[f"{lab}\n(n={len(v)})" for lab, v in per_label.items()]
            )
        ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(task, fontsize=9)
        ax.tick_params(axis="x", labelsize=7, labelrotation=30)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("gate (1 = image, 0 = text)")
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def _resolve_image(row: Mapping[str, Any], image_root: Path | None) -> Path | None:
    """The meme's image file: absolute ``image_path``, ``image_root/image_path`` or
    ``image_root/source_root/image_path`` (the consolidated table's paths are relative to source_root)."""
    rel = str(row.get("image_path") or "")
    if not rel:
        return None
    candidates = [Path(rel)] if Path(rel).is_absolute() else []
    root = image_root or Path(".")
    candidates.append(root / rel)
    if row.get("source_root"):
        candidates.append(root / str(row["source_root"]) / rel)
    return next((c for c in candidates if c.is_file()), None)


def _tile(path: Path | None, size: int = 224) -> np.ndarray | None:
    """RGB thumbnail array, or None when the file is missing or unreadable (drawn as a grey tile)."""
    if path is None:
        return None
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            img.thumbnail((size, size))
            return np.asarray(img)
    except (OSError, ValueError):
        return None


def plot_gate_examples(
    examples: pd.DataFrame, image_root: str | Path | None, path: str | Path, caption_chars: int = 30
) -> Path:
    """A grid of the example memes (row 1 image-leaning, row 2 text-leaning), each titled with its
    leaning, gate and truncated caption; a missing image is a grey "image missing" tile."""
    root = Path(image_root) if image_root else None
    rows = [examples[examples["leaning"] == lean] for lean in ("image", "text")] if len(examples) else []
    rows = [r for r in rows if len(r)] or [examples]
    cols = max(1, max(len(r) for r in rows))
    fig = new_figure(2.4 * cols, 2.9 * len(rows))
    axes = np.asarray(fig.subplots(len(rows), cols, squeeze=False))
    for ax in axes.ravel():
        ax.axis("off")
    for r, frame in enumerate(rows):
        for c, (_, rec) in enumerate(frame.iterrows()):
            ax = axes[r, c]
            tile = _tile(_resolve_image(rec, root))
            if tile is None:
                ax.imshow(np.full((224, 224, 3), 0.75))
                ax.text(112, 112, "image missing", ha="center", va="center", fontsize=8, color="#333333")
            else:
                ax.imshow(tile)
            caption = str(rec.get("text", "") or "").replace("\n", " ")
            caption = caption if len(caption) <= caption_chars else caption[: caption_chars - 1] + "…"
            title = f"{rec['leaning']}-leaning, gate {float(rec['gate']):.2f}\n{caption}"
            ax.set_title(title, fontsize=7, fontproperties=_font_for(title))
    fig.suptitle("GatedCLIP: most image- and text-leaning test memes", fontsize=10)
    return save_figure(fig, path)


def plot_robustness(
    frame: pd.DataFrame,
    fallback_mean: float,
    fallback_ci: tuple[float, float],
    path: str | Path,
    metric: str | None = None,
) -> Path:
    """Metric vs region-source level with CI error bars, the global-only arm as a horizontal band
    (its CI) and line (its mean), and region attention mass on a twin axis when the frame has it."""
    metric = metric or frame.attrs.get("metric", "metric")
    fig = new_figure(6.0, 3.8)
    ax = fig.subplots()
    x = np.arange(len(frame))
    mean = frame["mean"].to_numpy(float)
    ax.errorbar(
        x,
        mean,
        yerr=_err(mean, frame["ci_low"].to_numpy(float), frame["ci_high"].to_numpy(float)),
        marker="o",
        capsize=4,
        color="#4c72b0",
        label="with regions",
    )
    if not any(math.isnan(v) for v in fallback_ci):
        ax.axhspan(fallback_ci[0], fallback_ci[1], color="#dd8452", alpha=0.2)
    if not math.isnan(fallback_mean):
        ax.axhline(fallback_mean, color="#dd8452", linestyle="--", label="global features only")
    ax.set_xticks(x, [str(v) for v in frame["level"]])
    ax.set_ylabel(f"{metric} (test)")
    ax.set_xlabel("region source")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if "region_attention" in frame.columns and frame["region_attention"].notna().any():
        twin = ax.twinx()
        twin.plot(
            x,
            frame["region_attention"].to_numpy(float),
            marker="s",
            color="#55a868",
            linestyle=":",
            label="attention on regions",
        )
        twin.set_ylabel("mean attention mass on regions")
        twin.set_ylim(0, 1)
        more = twin.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, fontsize=7, loc="lower left")
    return save_figure(fig, path)


__all__ = ["plot_gate_by_class", "plot_gate_examples", "plot_metric_bars", "plot_robustness"]
