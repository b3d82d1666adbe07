"""The report page's pictures: bar charts, a heat map, curves (matplotlib through the one figure helper,
:mod:`memeops.reporting.figures`) and meme images (PIL): thumbnails and attention drawn on the meme.

Each function writes one PNG / JPEG to ``path`` and returns it, or returns None when there is
nothing to draw (no rows, no numeric column, a missing image), so a section can leave the picture
out instead of failing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from memeops.reporting.figures import label_font, new_figure, save_figure
from memeops.reporting.inputs import AttentionMap

THUMB_PX = 224
OVERLAY_PX = 320


def chart_leaderboard(rows: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Horizontal bars of each leaderboard row's test mean macro-F1 (rows without one are left out)."""
    rows = [r for r in rows if r["test"] is not None]
    if not rows:
        return None
    fig = new_figure(7, 0.4 * len(rows) + 1.2)
    ax = fig.subplots()
    names = [f"{r['variant']} ({r['tasks']})" for r in rows][::-1]
    values = [r["test"] for r in rows][::-1]
    ax.barh(names, values, color="#3b6ea5")
    for y, v in enumerate(values):
        ax.text(v + 0.005, y, f"{v:.3f}", va="center", fontsize=8)
    ax.set_xlim(0, max(1.0, max(values) + 0.08))
    ax.set_xlabel("test mean macro-F1 (over the variant's tasks; task count in brackets)")
    return save_figure(fig, path)


def chart_heatmap(frame: pd.DataFrame, path: Path) -> Path | None:
    """Tasks x variants heat map of a comparison table (first column = task)."""
    if frame.empty or frame.shape[1] < 2:
        return None
    values = frame.iloc[:, 1:].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    fig = new_figure(1.0 * values.shape[1] + 2.5, 0.38 * values.shape[0] + 1.5)
    ax = fig.subplots()
    im = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(values.shape[1]), [str(c) for c in frame.columns[1:]], rotation=30, ha="right")
    ax.set_yticks(range(values.shape[0]), [str(t) for t in frame.iloc[:, 0]])
    for (r, c), v in np.ndenumerate(values):
        if not math.isnan(v):
            ax.text(
                c, r, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black"
            )
    fig.colorbar(im, ax=ax, shrink=0.8, label="test macro-F1")
    return save_figure(fig, path)


def chart_curves(curves: Mapping[str, pd.DataFrame], column: str, path: Path) -> Path | None:
    """``column`` against ``epoch``, one line per named frame (frames without both are skipped)."""
    curves = {k: v for k, v in curves.items() if column in v.columns and "epoch" in v.columns}
    if not curves:
        return None
    fig = new_figure(7, 3.6)
    ax = fig.subplots()
    for name, frame in curves.items():
        ax.plot(frame["epoch"], pd.to_numeric(frame[column], errors="coerce"), label=name, linewidth=1.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel(column)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncols=2)
    return save_figure(fig, path)


def chart_ablation(frame: pd.DataFrame, label_col: str, path: Path) -> Path | None:
    """A bar per ablation arm of ``mean`` (else the first numeric column), with error bars from
    ``ci_low`` / ``ci_high`` when both exist, else from ``std`` (docs/report.md, ablation contract)."""
    numeric = [
        c for c in frame.columns if c not in (label_col, "group") and pd.api.types.is_numeric_dtype(frame[c])
    ]
    if not numeric:
        return None
    value_col = "mean" if "mean" in numeric else numeric[0]
    values = frame[value_col].to_numpy(dtype=float)
    err = None
    if {"ci_low", "ci_high"} <= set(frame.columns):
        err = np.abs(
            np.vstack([values - frame["ci_low"].to_numpy(float), frame["ci_high"].to_numpy(float) - values])
        )
    elif "std" in frame.columns:
        err = frame["std"].to_numpy(dtype=float)
    fig = new_figure(6.5, 0.4 * len(frame) + 1.2)
    ax = fig.subplots()
    labels = [str(v) for v in frame[label_col]]
    ax.barh(labels[::-1], values[::-1], xerr=None if err is None else (err[:, ::-1] if err.ndim == 2 else err[::-1]),
            color="#7a5195", capsize=3)  # fmt: skip
    ax.set_xlabel(value_col)
    ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, path)


def chart_attention(att: AttentionMap, path: Path) -> Path:
    """MGMCF's global-context attention as bars over [text tokens | image | regions]; token labels
    in a CJK-capable font when the caption needs one."""
    labels = [*att.tokens, "[image]", *att.box_labels]
    weights = [*att.token_weights, att.image_weight, *att.region_weights]
    colours = ["#4c72b0"] * len(att.tokens) + ["#dd8452"] + ["#55a868"] * len(att.box_labels)
    fig = new_figure(max(4.5, 0.32 * len(labels) + 1.0), 2.8)
    ax = fig.subplots()
    ax.bar(range(len(labels)), weights, color=colours)
    font = label_font() if any(ord(ch) > 0x2FF for ch in "".join(labels)) else None
    ax.set_xticks(range(len(labels)), labels, rotation=70, ha="right", fontsize=7, fontproperties=font)
    ax.set_ylabel("attention")
    ax.set_title("global context → [text tokens | image | regions]", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def overlay_attention(att: AttentionMap, path: Path) -> Path | None:
    """The meme with each region box drawn with an opacity and outline by its attention weight."""
    if att.image is None or not Path(att.image).is_file():
        return None
    with Image.open(att.image) as im:
        base = im.convert("RGB")
    scale = OVERLAY_PX / max(base.size)
    base = base.resize((max(1, round(base.width * scale)), max(1, round(base.height * scale))))
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    top = max(att.region_weights, default=0.0) or 1.0
    for box, label, weight in zip(att.boxes, att.box_labels, att.region_weights):
        x0, y0, x1, y1 = (
            box[0] * base.width,
            box[1] * base.height,
            box[2] * base.width,
            box[3] * base.height,
        )
        strength = max(0.0, min(1.0, weight / top))
        draw.rectangle([x0, y0, x1, y1], fill=(255, 40, 0, int(30 + 120 * strength)),
                       outline=(255, 40, 0, 255), width=max(1, round(1 + 3 * strength)))  # fmt: skip
        text = f"{label} {weight:.2f}"
        tw = draw.textlength(text)
        draw.rectangle([x0, max(0, y0 - 12), x0 + tw + 4, max(12, y0)], fill=(0, 0, 0, 180))
        draw.text((x0 + 2, max(0, y0 - 12)), text, fill=(255, 255, 255, 255))
    out = Image.alpha_composite(base.convert("RGBA"), layer).convert("RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save(path, format="PNG")
    return path


def thumbnail(source: Path, path: Path, px: int = THUMB_PX) -> Path | None:
    """A JPEG of ``source`` fitted into ``px`` x ``px``, or None when the image cannot be read."""
    try:
        with Image.open(source) as im:
            im = im.convert("RGB")
            im.thumbnail((px, px))
            path.parent.mkdir(parents=True, exist_ok=True)
            im.save(path, format="JPEG", quality=85)
    except (OSError, ValueError):
        return None
    return path

