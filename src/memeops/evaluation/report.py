"""The report: one static HTML page (``reports/index.html``) over the pipeline's outputs.

:func:`build_report` writes one self-contained HTML file (inline CSS, no script, no external URL:
it renders offline, opened as ``file://``) and its images under ``<out dir>/report_assets/``
(relative links; the folder is rewritten on every build). Sections, each from the files below
(paths relative to ``reports_dir``; a missing input gives a one-line note in its section, never an
error):

* **Leaderboard** -- ``metrics/<variant>.json`` (every JSON with ``primary_metric`` and ``test``:
  the train stages' reports): test / val / test_unseen mean macro-F1 over the variant's tasks, and
  each task's primary metric on test with its 95% bootstrap interval (``ci95.test``); a bar chart.
* **Per-task comparison** -- ``comparison.csv`` (stage ``compare``; recomputed from the metrics
  when missing) and a heat map of it; validation curves from ``plots/train/<variant>.csv``
  (column ``val/mean/macro_f1`` against ``epoch``).
* **Ablations** -- optional, written by a later stage (contract):

  - ``ablations.csv``: one row per ablation arm. Column ``arm`` names the row (else the first
    column); an optional ``group`` column splits it into one table + chart per group; every other
    column is shown (numbers with 3 decimals). The chart plots ``mean`` (else the first numeric
    column) per arm, with error bars from ``ci_low`` / ``ci_high`` when both exist, else ``std``.
  - ``ablations.md``: notes rendered below the tables (headings, tables, lists, paragraphs).
  - ``figures/*.png`` and ``figures/ablate/*.png``: embedded in name order, captioned by the file stem.

  With none of them the section says that the ablations are not produced yet.
* **Sample memes** -- :class:`SampleMeme` records (``samples=``): the image, caption, gold labels
  and the predictions of a few model folders (:func:`predict_samples` computes them with
  :func:`memeops.tracking.pyfunc.open_predictor`).
* **VLM explanations** -- ``vlm/examples.csv`` (stage ``train_vlm``: ``meme_id, task, label,
  scored_label, scored_prob, generated_label, valid, invalid_reason, explanation,
  reference_explanation``); thumbnails when ``meme_images`` maps the meme id to its file.
* **MGMCF attention** -- :class:`AttentionMap` records (``attention=``): the global context's
  attention (``extras["attention"]``, last CAP block, mean over heads and queries) drawn on the
  meme's region boxes, a bar chart over [text tokens | image | regions], the caption's tokens
  shaded by weight. :func:`mgmcf_attention` computes them with the MGMCF model folder.
* **Data** -- ``datasheet.json`` / ``datasheet.md`` (stage ``consolidate``) and
  ``validation.json`` / ``validation.md`` (stage ``validate``).
* **MLflow runs** -- :class:`MlflowRun` records (``mlflow_runs=``; :func:`latest_mlflow_runs`
  reads the tracking store): the latest top-level run per DVC stage, linked as
  ``<mlflow_ui>/#/experiments/<experiment id>/runs/<run id>`` (``mlflow_ui`` default
  :data:`DEFAULT_MLFLOW_UI`, or ``$MEMEOPS_MLFLOW_UI``). These links are the page's only absolute
  URLs; nothing is loaded from them.

Every text from the inputs is HTML-escaped. Charts are PNGs from matplotlib's Agg canvas (no pyplot
state). See ``docs/report.md``.
"""

from __future__ import annotations

import csv
import html
import json
import math
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

ASSETS_DIR = "report_assets"
DEFAULT_MLFLOW_UI = "http://127.0.0.1:5000"
MLFLOW_UI_ENV = "MEMEOPS_MLFLOW_UI"
THUMB_PX = 224
OVERLAY_PX = 320

# --------------------------------------------------------------------------- records


@dataclass
class SampleMeme:
    """One meme shown with its gold labels and models' predictions.

    ``predictions``: ``{model name: {task: (label, probability or None)}}``.
    """

    meme_id: str
    image: Path | None
    text: str
    gold: dict[str, str]
    predictions: dict[str, dict[str, tuple[str, float | None]]] = field(default_factory=dict)
    split: str = ""
    language: str = ""


@dataclass
class AttentionMap:
    """MGMCF's global-context attention for one meme (weights over the valid local tokens).

    ``boxes``: normalised ``x0, y0, x1, y1`` of the kept regions, ``box_labels`` their detector
    classes (or ``region i``), ``region_weights`` aligned with them; ``tokens`` / ``token_weights``
    the caption's valid text tokens; ``image_weight`` the global image token's weight.
    """

    meme_id: str
    image: Path | None
    text: str
    tokens: list[str]
    token_weights: list[float]
    image_weight: float
    boxes: list[list[float]]
    box_labels: list[str]
    region_weights: list[float]
    predictions: dict[str, str] = field(default_factory=dict)


@dataclass
class MlflowRun:
    stage: str
    variant: str
    experiment_id: str
    experiment: str
    run_id: str
    run_name: str
    status: str
    start_time: int | None = None  # ms since the epoch


# --------------------------------------------------------------------------- small helpers


def esc(value: Any) -> str:
    """HTML-escaped text (quotes included, so it is safe in attributes too)."""
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def _fmt(value: Any, digits: int = 3) -> str:
    v = _num(value)
    return "–" if v is None else f"{v:.{digits}f}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    """An HTML table; ``header`` is escaped here, row cells must already be HTML."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return (
        f'<div class="scroll"><table class="{esc(cls)}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _inline_md(text: str) -> str:
    out = esc(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", out)  # links: their text only


def markdown_to_html(text: str, heading_offset: int = 2) -> str:
    """A small, escaping Markdown subset: headings, pipe tables, lists, fenced code, paragraphs.

    Raw HTML in the source is escaped (shown as text), never passed through.
    """
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    para: list[str] = []

    def flush() -> None:
        if para:
            out.append("<p>" + _inline_md(" ".join(para)) + "</p>")
            para.clear()

    while i < len(lines):
        line = lines[i].rstrip()
        stripped = line.strip()
        if stripped.startswith("```"):
            flush()
            block = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                block.append(lines[i])
                i += 1
            out.append("<pre>" + esc("\n".join(block)) + "</pre>")
        elif m := re.match(r"^(#{1,6})\s+(.*)$", stripped):
            flush()
            level = min(6, len(m.group(1)) + heading_offset)
            out.append(f"<h{level}>{_inline_md(m.group(2))}</h{level}>")
        elif stripped.startswith("|"):
            flush()
            rows = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                if not all(re.fullmatch(r":?-{2,}:?|:?-*:?", c) for c in cells):
                    rows.append(cells)
                i += 1
            if rows:
                header, body = rows[0], rows[1:]
                out.append(_table(header, ([_inline_md(c) for c in r] for r in body), "md"))
            continue
        elif re.match(r"^[-*]\s+", stripped):
            flush()
            items = []
            while i < len(lines) and re.match(r"^[-*]\s+", lines[i].strip()):
                items.append("<li>" + _inline_md(re.sub(r"^[-*]\s+", "", lines[i].strip())) + "</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif not stripped:
            flush()
        else:
            para.append(stripped)
        i += 1
    flush()
    return "\n".join(out)


# --------------------------------------------------------------------------- reading reports


def read_variant_reports(metrics_dir: str | Path, variants: Sequence[str] | None = None) -> dict[str, dict]:
    """``{variant: report}`` for the train stages' ``<variant>.json`` in ``metrics_dir`` (those with
    ``primary_metric`` and a ``test`` split); other stage metrics (ocr, detector, ...) are skipped."""
    folder = Path(metrics_dir)
    paths = [folder / f"{v}.json" for v in variants] if variants else sorted(folder.glob("*.json"))
    out = {}
    for path in paths:
        data = _read_json(path)
        if (
            isinstance(data, dict)
            and isinstance(data.get("primary_metric"), dict)
            and isinstance(data.get("test"), dict)
        ):
            out[path.stem] = data
    return out


def report_tasks(reports: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Tasks in first-seen order over the reports' ``primary_metric``."""
    tasks: list[str] = []
    for report in reports.values():
        tasks += [t for t in report["primary_metric"] if t not in tasks]
    return tasks


def mean_metric(report: Mapping[str, Any], split: str, metric: str = "macro_f1") -> tuple[float | None, int]:
    """(mean of ``<task>/<metric>`` over the report's tasks on ``split``, number of tasks)."""
    values = [_num((report.get(split) or {}).get(f"{t}/{metric}")) for t in report.get("primary_metric", {})]
    values = [v for v in values if v is not None]
    return (float(np.mean(values)) if values else None), len(values)


def leaderboard(reports: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant, best test mean macro-F1 first."""
    rows = []
    for name, report in reports.items():
        test, n = mean_metric(report, "test")
        rows.append({
            "variant": name, "tasks": n, "test": test, "val": mean_metric(report, "val")[0],
            "test_unseen": mean_metric(report, "test_unseen")[0],
        })  # fmt: skip
    return sorted(rows, key=lambda r: -(r["test"] if r["test"] is not None else -1.0))


def primary_cell(report: Mapping[str, Any], task: str, split: str = "test") -> str:
    """``0.712 [0.650–0.760]`` for the task's primary metric, or an en dash."""
    metric = report.get("primary_metric", {}).get(task)
    if metric is None:
        return "–"
    value = _num((report.get(split) or {}).get(f"{task}/{metric}"))
    if value is None:
        return "–"
    ci = ((report.get("ci95") or {}).get(split) or {}).get(f"{task}/{metric}")
    interval = f" [{_fmt(ci[0])}–{_fmt(ci[1])}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else ""
    return f"{value:.3f}{interval}"


# --------------------------------------------------------------------------- charts


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig: Any, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


_CJK_FONT: Any = None


def _label_font() -> Any:
    """A font with CJK glyphs for token labels (Noto Sans CJK from ``manimgx-fonts-cjk``), or None."""
    global _CJK_FONT
    if _CJK_FONT is None:
        try:
            from matplotlib.font_manager import FontProperties

            from memeops.data.synth.world import cjk_font_path

            path = cjk_font_path()
            _CJK_FONT = FontProperties(fname=str(path)) if path.is_file() else False
        except Exception:  # noqa: BLE001 - the font is a nicety
            _CJK_FONT = False
    return _CJK_FONT or None


def chart_leaderboard(rows: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    rows = [r for r in rows if r["test"] is not None]
    if not rows:
        return None
    fig = _figure(7, 0.4 * len(rows) + 1.2)
    ax = fig.subplots()
    names = [f"{r['variant']} ({r['tasks']})" for r in rows][::-1]
    values = [r["test"] for r in rows][::-1]
    ax.barh(names, values, color="#3b6ea5")
    for y, v in enumerate(values):
        ax.text(v + 0.005, y, f"{v:.3f}", va="center", fontsize=8)
    ax.set_xlim(0, max(1.0, max(values) + 0.08))
    ax.set_xlabel("test mean macro-F1 (over the variant's tasks; task count in brackets)")
    return _save(fig, path)


def chart_heatmap(frame: pd.DataFrame, path: Path) -> Path | None:
    """Tasks x variants heat map of a comparison table (first column = task)."""
    if frame.empty or frame.shape[1] < 2:
        return None
    values = frame.iloc[:, 1:].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    fig = _figure(1.0 * values.shape[1] + 2.5, 0.38 * values.shape[0] + 1.5)
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
    return _save(fig, path)


def chart_curves(curves: Mapping[str, pd.DataFrame], column: str, path: Path) -> Path | None:
    curves = {k: v for k, v in curves.items() if column in v.columns and "epoch" in v.columns}
    if not curves:
        return None
    fig = _figure(7, 3.6)
    ax = fig.subplots()
    for name, frame in curves.items():
        ax.plot(frame["epoch"], pd.to_numeric(frame[column], errors="coerce"), label=name, linewidth=1.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel(column)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncols=2)
    return _save(fig, path)


def chart_ablation(frame: pd.DataFrame, label_col: str, path: Path) -> Path | None:
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
    fig = _figure(6.5, 0.4 * len(frame) + 1.2)
    ax = fig.subplots()
    labels = [str(v) for v in frame[label_col]]
    ax.barh(labels[::-1], values[::-1], xerr=None if err is None else (err[:, ::-1] if err.ndim == 2 else err[::-1]),
            color="#7a5195", capsize=3)  # fmt: skip
    ax.set_xlabel(value_col)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def chart_attention(att: AttentionMap, path: Path) -> Path:
    labels = [*att.tokens, "[image]", *att.box_labels]
    weights = [*att.token_weights, att.image_weight, *att.region_weights]
    colours = ["#4c72b0"] * len(att.tokens) + ["#dd8452"] + ["#55a868"] * len(att.box_labels)
    fig = _figure(max(4.5, 0.32 * len(labels) + 1.0), 2.8)
    ax = fig.subplots()
    ax.bar(range(len(labels)), weights, color=colours)
    font = _label_font() if any(ord(ch) > 0x2FF for ch in "".join(labels)) else None
    ax.set_xticks(range(len(labels)), labels, rotation=70, ha="right", fontsize=7, fontproperties=font)
    ax.set_ylabel("attention")
    ax.set_title("global context → [text tokens | image | regions]", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


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
    try:
        with Image.open(source) as im:
            im = im.convert("RGB")
            im.thumbnail((px, px))
            path.parent.mkdir(parents=True, exist_ok=True)
            im.save(path, format="JPEG", quality=85)
    except (OSError, ValueError):
        return None
    return path


# --------------------------------------------------------------------------- computing inputs


def select_sample_memes(memes: pd.DataFrame, n: int = 8, split: str = "test", seed: int = 0) -> pd.DataFrame:
    """``n`` memes of ``split`` drawn with a fixed seed (the same memes on every build)."""
    pool = memes[memes["split"] == split] if "split" in memes.columns else memes
    if pool.empty:
        pool = memes
    return pool.sort_values("meme_id").sample(min(n, len(pool)), random_state=seed)


def meme_image_path(row: Mapping[str, Any], root: str | Path = ".") -> Path:
    """The image file of a consolidated meme row (``source_root`` / ``image_path``)."""
    path = Path(str(row.get("image_path", "")))
    if not path.is_absolute():
        path = Path(root) / str(row.get("source_root") or "") / path
    return path


def gold_labels(row: Mapping[str, Any], tasks: Sequence[str]) -> dict[str, str]:
    out = {}
    for task in tasks:
        value = row.get(f"label_{task}")
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        out[task] = "|".join(map(str, value)) if isinstance(value, (list, tuple, np.ndarray)) else str(value)
    return out


def predict_samples(
    rows: pd.DataFrame, model_dirs: Mapping[str, str | Path], tasks: Sequence[str], root: str | Path = ".",
) -> list[SampleMeme]:  # fmt: skip
    """:class:`SampleMeme` records for ``rows`` (consolidated memes) with each model folder's
    predictions (``open_predictor``); a folder that fails to load or predict is skipped."""
    from memeops.tracking.pyfunc import open_predictor

    records = [r for _, r in rows.iterrows()]
    frame = pd.DataFrame({"image": [str(meme_image_path(r, root)) for r in records],
                          "text": [str(r.get("text") or "") for r in records]})  # fmt: skip
    samples = [
        SampleMeme(str(r["meme_id"]), meme_image_path(r, root), str(r.get("text") or ""), gold_labels(r, tasks),
                   split=str(r.get("split", "")), language=str(r.get("language", "")))
        for r in records
    ]  # fmt: skip
    for name, folder in model_dirs.items():
        try:
            out = open_predictor(folder).predict(frame)
        except Exception as exc:  # noqa: BLE001 - one broken model folder must not sink the report
            print(f"report: predictions of {name} ({folder}) skipped: {' '.join(str(exc).split())[:200]}")
            continue
        for sample, (_, pred) in zip(samples, out.iterrows()):
            sample.predictions[name] = {
                t: (str(pred[t]), _num(pred.get(f"{t}_prob"))) for t in tasks if t in pred.index
            }
    return samples


def _token_labels(predictor: Any, folder: Path, text: str, n: int) -> list[str]:
    """The caption's ``n`` valid token strings, from the packed corpus tokenizer when there is one."""
    try:
        from memeops.models.text_tokenizer import CorpusTokenizer

        path = folder / "encoder" / "clip" / "tokenizer.json"
        kind = getattr(getattr(predictor.inputs.text_encoder, "config", None), "kind", "clip")
        if kind == "clip" and path.is_file():
            tok = CorpusTokenizer.load(path)
            ids = tok([text])[0].tolist()
            names = [tok.tokenizer.id_to_token(i) or "?" for i in ids[:n]]
            if len(names) == n:
                return names
    except Exception as exc:  # noqa: BLE001 - labels are cosmetic
        print(f"report: token labels unavailable ({type(exc).__name__}); positions shown instead")
    return [f"t{i}" for i in range(n)]


def mgmcf_attention(model_dir: str | Path, rows: pd.DataFrame, root: str | Path = ".") -> list[AttentionMap]:
    """MGMCF's ``extras["attention"]`` for ``rows`` with the served model folder's own input chain
    (CLIP, text encoder, packed detector, crops, region CNN): ``predictor.inputs.encode`` then
    ``predictor.head``, as :meth:`MemePredictor.predict_proba` does, keeping the extras."""
    import torch

    from memeops.models.mgmcf import attention_layout
    from memeops.tracking.pyfunc import decode_image, open_predictor

    folder = Path(model_dir)
    predictor = open_predictor(folder)
    head = predictor.head
    cfg = head.cfg
    if cfg.interaction != "cap":
        raise ValueError(f"{folder}: MGMCF with interaction={cfg.interaction!r} has no attention")
    layout = attention_layout(cfg)
    names = getattr(getattr(predictor.inputs, "detector", None), "names", None) or {}
    records = [r for _, r in rows.iterrows()]
    paths = [meme_image_path(r, root) for r in records]
    texts = [str(r.get("text") or "") for r in records]
    images = [decode_image(str(p), i) for i, p in enumerate(paths)]
    with torch.inference_mode():
        batch = {k: v.to(predictor.device) for k, v in predictor.inputs.encode(images, texts).items()}
        out = head(batch)
    att = out.extras["attention"].float().cpu().numpy()
    from memeops.models.base import probabilities

    labels = {
        s.name: [s.labels[int(i)] for i in probabilities(out.logits[s.name], s).argmax(-1).cpu()]
        for s in predictor.specs if s.kind == "single"
    }  # fmt: skip
    maps = []
    for b, (record, path, text) in enumerate(zip(records, paths, texts)):
        t0, t1 = layout["text"]
        tmask = batch["text_mask"][b].cpu().numpy().astype(bool)
        n_tok = int(tmask.sum())
        boxes, box_labels, region_w = [], [], []
        if "regions" in layout:
            r0, _ = layout["regions"]
            rmask = batch["region_mask"][b].cpu().numpy().astype(bool)
            classes = batch.get("region_classes")
            for k in np.flatnonzero(rmask):
                boxes.append([float(x) for x in batch["region_boxes"][b, k].cpu()])
                cid = int(classes[b, k]) if classes is not None else -1
                box_labels.append(str(names.get(cid, f"region {k}")) if cid >= 0 else f"region {k}")
                region_w.append(float(att[b, r0 + k]))
        maps.append(AttentionMap(
            meme_id=str(record["meme_id"]), image=path, text=text,
            tokens=_token_labels(predictor, folder, text, n_tok),
            token_weights=[float(w) for w in att[b, t0:t1][tmask]],
            image_weight=float(att[b, layout["image"][0]]),
            boxes=boxes, box_labels=box_labels, region_weights=region_w,
            predictions={t: v[b] for t, v in labels.items()},
        ))  # fmt: skip
    return maps


def latest_mlflow_runs(tracking_uri: str | None = None, max_results: int = 5000) -> list[MlflowRun]:
    """The latest top-level (not nested) run per ``memeops.dvc_stage`` tag in the tracking store."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    if not experiments:
        return []
    runs = client.search_runs(
        list(experiments), max_results=max_results, order_by=["attributes.start_time DESC"]
    )
    seen: set[str] = set()
    out = []
    for run in runs:
        tags = run.data.tags
        stage = tags.get("memeops.dvc_stage")
        if not stage or "mlflow.parentRunId" in tags or stage in seen:
            continue
        seen.add(stage)
        out.append(MlflowRun(
            stage=stage, variant=tags.get("memeops.variant", ""), experiment_id=run.info.experiment_id,
            experiment=experiments.get(run.info.experiment_id, ""), run_id=run.info.run_id,
            run_name=run.info.run_name or "", status=run.info.status, start_time=run.info.start_time,
        ))  # fmt: skip
    return sorted(out, key=lambda r: r.stage)


def run_url(ui: str, run: MlflowRun) -> str:
    return f"{ui.rstrip('/')}/#/experiments/{run.experiment_id}/runs/{run.run_id}"


# --------------------------------------------------------------------------- sections


class _Assets:
    """Files under ``<out dir>/report_assets``, linked relatively from the page."""

    def __init__(self, out_dir: Path):
        self.root = out_dir / ASSETS_DIR
        if self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        self.count = 0

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*[_slug(p) for p in parts])

    def img(self, path: Path | None, alt: str, cls: str = "") -> str:
        if path is None:
            return f'<span class="missing">{esc(alt)}: no image</span>'
        self.count += 1
        rel = path.relative_to(self.root.parent).as_posix()
        return f'<img src="{esc(rel)}" alt="{esc(alt)}" class="{esc(cls)}" loading="eager">'


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>\n{body}\n</section>'


def _leaderboard_section(reports: Mapping[str, Mapping], runs: Mapping[str, str], assets: _Assets) -> str:
    if not reports:
        return _note("No variant metrics yet (reports/metrics/<variant>.json from the train stages).")
    rows = leaderboard(reports)
    body_rows = []
    for rank, r in enumerate(rows, 1):
        link = runs.get(r["variant"])
        run = f'<a href="{esc(link)}">run</a>' if link else "–"
        body_rows.append([str(rank), f"<strong>{esc(r['variant'])}</strong>", str(r["tasks"]), _fmt(r["test"]),
                          _fmt(r["val"]), _fmt(r["test_unseen"]), run])  # fmt: skip
    parts = [
        ("<p>Each variant is selected on val and scored once on test; means are over the tasks the "
         "variant was trained on (a single-task variant is not comparable with the multi-task ones on "
         "this column alone).</p>"),
        _table(["#", "variant", "tasks", "test mean macro-F1", "val mean macro-F1",
                "test_unseen mean macro-F1", "MLflow"], body_rows, "num"),
    ]  # fmt: skip
    chart = chart_leaderboard(rows, assets.path("charts", "leaderboard.png"))
    if chart:
        parts.append(f"<figure>{assets.img(chart, 'leaderboard chart', 'chart')}</figure>")
    tasks = report_tasks(reports)
    names = [r["variant"] for r in rows]
    metric_of = {t: next((rep["primary_metric"][t] for rep in reports.values() if t in rep["primary_metric"]), "")
                 for t in tasks}  # fmt: skip
    prim = [[f"{esc(t)} <span class=\"dim\">({esc(metric_of[t])})</span>"]
            + [esc(primary_cell(reports[n], t)) for n in names] for t in tasks]  # fmt: skip
    parts += [
        "<h3>Primary metric per task on test, with its 95% bootstrap interval</h3>",
        "<p>AUROC for binary tasks, macro-F1 otherwise.</p>",
        _table(["task", *names], prim, "num small"),
    ]
    return "\n".join(parts)


def _comparison_section(reports_dir: Path, reports: Mapping[str, Mapping], assets: _Assets) -> str:
    path = reports_dir / "comparison.csv"
    if path.is_file():
        frame = pd.read_csv(path)
        origin = "reports/comparison.csv (stage compare)"
    elif reports:
        from memeops.evaluation.compare import metric_table

        frame = metric_table(reports, report_tasks(reports))
        origin = "the variants' metrics (reports/comparison.csv not produced yet)"
    else:
        return _note("No comparison yet: reports/comparison.csv (stage compare) is missing.")
    cols = list(frame.columns)
    rows = []
    for rec in frame.itertuples(index=False):
        values = [_num(v) for v in rec[1:]]
        best = max((v for v in values if v is not None), default=None)
        cells = [esc(rec[0])]
        for v in values:
            text = _fmt(v)
            cells.append(f"<strong>{text}</strong>" if v is not None and v == best else text)
        rows.append(cells)
    parts = [(f"<p>Test macro-F1 per task, from {esc(origin)}; the best per row in bold, a dash where "
              "the variant has no such task.</p>"), _table(cols, rows, "num")]  # fmt: skip
    heat = chart_heatmap(frame, assets.path("charts", "comparison_heatmap.png"))
    if heat:
        parts.append(f"<figure>{assets.img(heat, 'per-task macro-F1 heat map', 'chart')}</figure>")
    curves = {}
    for csv_path in sorted((reports_dir / "plots" / "train").glob("*.csv")):
        try:
            curves[csv_path.stem] = pd.read_csv(csv_path)
        except (OSError, ValueError, pd.errors.ParserError):
            continue
    chart = chart_curves(curves, "val/mean/macro_f1", assets.path("charts", "val_curves.png"))
    if chart:
        parts += ["<h3>Validation mean macro-F1 per epoch</h3>",
                  f"<figure>{assets.img(chart, 'validation curves', 'chart')}</figure>"]  # fmt: skip
    return "\n".join(parts)


def _ablation_section(reports_dir: Path, assets: _Assets) -> str:
    csv_path, md_path = reports_dir / "ablations.csv", reports_dir / "ablations.md"
    # top-level figures (any stage) and stage ablate's own folder, in name order
    figures = sorted((reports_dir / "figures").glob("*.png")) + sorted((reports_dir / "figures" / "ablate").glob("*.png"))
    if not csv_path.is_file() and not md_path.is_file() and not figures:
        return ('<p class="note pending">Ablations not produced yet: this section shows '
                "<code>reports/ablations.csv</code>, <code>reports/ablations.md</code> and "
                "<code>reports/figures/*.png</code> once the ablation stage has written them "
                "(contract in docs/report.md).</p>")  # fmt: skip
    parts = []
    if csv_path.is_file():
        try:
            frame = pd.read_csv(csv_path)
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            frame = None
            parts.append(_note(f"reports/ablations.csv could not be read: {exc}"))
        if frame is not None and not frame.empty:
            label = "arm" if "arm" in frame.columns else frame.columns[0]
            groups = list(frame.groupby("group", sort=False)) if "group" in frame.columns else [("", frame)]
            for gi, (group, sub) in enumerate(groups):
                sub = sub.drop(columns=["group"], errors="ignore").reset_index(drop=True)
                if group != "":
                    parts.append(f"<h3>{esc(group)}</h3>")
                cols = [label, *[c for c in sub.columns if c != label]]
                rows = [[esc(v) if not isinstance(v, (float, np.floating)) else _fmt(v)
                         for v in (rec[c] for c in cols)] for _, rec in sub.iterrows()]  # fmt: skip
                parts.append(_table([str(c) for c in cols], rows, "num"))
                chart = chart_ablation(sub, label, assets.path("charts", f"ablation_{gi}_{group}.png"))
                if chart:
                    parts.append(f"<figure>{assets.img(chart, f'ablation chart {group}', 'chart')}</figure>")
    if md_path.is_file():
        parts.append('<div class="md">' + markdown_to_html(md_path.read_text(encoding="utf-8")) + "</div>")
    for fig in figures:
        dest = assets.path("figures", fig.name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fig, dest)
        parts.append(
            f"<figure>{assets.img(dest, fig.stem, 'chart')}<figcaption>{esc(fig.stem)}</figcaption></figure>"
        )
    return "\n".join(parts)


def _samples_section(samples: Sequence[SampleMeme] | None, assets: _Assets) -> str:
    if not samples:
        return _note("No sample memes (the report was built without the meme table or model folders).")
    models = list(dict.fromkeys(m for s in samples for m in s.predictions))
    cards = []
    for s in samples:
        thumb = thumbnail(s.image, assets.path("samples", f"{s.meme_id}.jpg")) if s.image else None
        tasks = list(dict.fromkeys([*s.gold, *(t for p in s.predictions.values() for t in p)]))
        rows = []
        for task in tasks:
            gold = s.gold.get(task)
            cells = [esc(task), esc(gold if gold is not None else "–")]
            for m in models:
                pred = s.predictions.get(m, {}).get(task)
                if pred is None:
                    cells.append("–")
                    continue
                label, prob = pred
                cls = "" if gold is None else ("ok" if label == gold else "bad")
                p = f' <span class="dim">{prob:.2f}</span>' if prob is not None else ""
                cells.append(f'<span class="{cls}">{esc(label)}</span>{p}')
            rows.append(cells)
        cards.append(
            '<div class="card">' + assets.img(thumb, f"meme {s.meme_id}", "thumb")
            + f'<div class="meta"><code>{esc(s.meme_id)}</code> {esc(s.split)} {esc(s.language)}</div>'
            + f'<div class="caption">{esc(s.text)}</div>'
            + _table(["task", "gold", *models], rows, "small") + "</div>"
        )  # fmt: skip
    legend = ('<p>Green: the prediction matches the gold label; red: it does not; the number is the '
              "model's probability of its label.</p>")  # fmt: skip
    return legend + '<div class="cards">' + "".join(cards) + "</div>"


def _vlm_section(reports_dir: Path, meme_images: Mapping[str, Path], assets: _Assets, limit: int) -> str:
    path = reports_dir / "vlm" / "examples.csv"
    if not path.is_file():
        return _note("No VLM explanations yet: reports/vlm/examples.csv (stage train_vlm) is missing.")
    with path.open(encoding="utf-8", newline="") as fh:
        records = list(csv.DictReader(fh))
    if not records:
        return _note("reports/vlm/examples.csv has no rows.")
    # one example per task first (in file order), then fill up to the limit
    chosen, tasks_seen = [], set()
    for i, r in enumerate(records):
        if r.get("task") not in tasks_seen:
            tasks_seen.add(r.get("task"))
            chosen.append(i)
    chosen += [i for i in range(len(records)) if i not in chosen]
    rows = []
    for i in sorted(chosen[:limit]):
        r = records[i]
        mid = r.get("meme_id", "")
        image = meme_images.get(mid)
        thumb = (
            thumbnail(image, assets.path("vlm", f"{mid}.jpg"), 96)
            if image and Path(image).is_file()
            else None
        )
        agree = r.get("scored_label") == r.get("label")
        valid = str(r.get("valid", "")).lower() == "true"
        prob = _num(r.get("scored_prob"))
        rows.append([
            assets.img(thumb, f"meme {mid}", "mini") if thumb else "",
            f"<code>{esc(mid)}</code>", esc(r.get("task")), esc(r.get("label")),
            f'<span class="{"ok" if agree else "bad"}">{esc(r.get("scored_label"))}</span>'
            + (f' <span class="dim">{prob:.2f}</span>' if prob is not None else ""),
            esc(r.get("generated_label")) + ("" if valid else f' <span class="bad">invalid: {esc(r.get("invalid_reason"))}</span>'),
            esc(r.get("explanation")), f'<span class="dim">{esc(r.get("reference_explanation"))}</span>',
        ])  # fmt: skip
    return (
        f"<p>{len(rows)} of {len(records)} generated explanations from reports/vlm/examples.csv (one per "
        "task first). The label is scored over the candidates; the explanation is generated "
        "and parsed strictly (docs/vlm.md).</p>"
        + _table(["", "meme", "task", "gold", "scored label", "generated label", "explanation",
                  "reference explanation"], rows, "small wide")
    )  # fmt: skip


def _attention_section(attention: Sequence[AttentionMap] | None, assets: _Assets) -> str:
    if not attention:
        return _note("No attention maps (the report was built without the MGMCF model folder).")
    blocks = []
    for att in attention:
        overlay = overlay_attention(att, assets.path("attention", f"{att.meme_id}_overlay.png"))
        bars = chart_attention(att, assets.path("attention", f"{att.meme_id}_bars.png"))
        top = max(att.token_weights, default=0.0) or 1.0
        tokens = " ".join(
            f'<span class="tok" style="background: rgba(76,114,176,{min(1.0, w / top) * 0.8:.2f})" '
            f'title="{w:.3f}">{esc(t)}</span>' for t, w in zip(att.tokens, att.token_weights)
        )  # fmt: skip
        total_text, total_regions = sum(att.token_weights), sum(att.region_weights)
        preds = ", ".join(f"{esc(t)}: {esc(v)}" for t, v in att.predictions.items())
        blocks.append(
            '<div class="att">'
            + f'<div>{assets.img(overlay, f"attention overlay {att.meme_id}", "overlay")}</div>'
            + f'<div><div class="meta"><code>{esc(att.meme_id)}</code></div>'
            + f'<div class="caption">{esc(att.text)}</div>'
            + f"<p>text tokens {total_text:.2f} · image {att.image_weight:.2f} · regions {total_regions:.2f}</p>"
            + f'<p class="toks">{tokens}</p>'
            + assets.img(bars, f"attention bars {att.meme_id}", "chart")
            + (f'<p class="dim small">MGMCF predicts {preds}</p>' if preds else "")
            + "</div></div>"
        )  # fmt: skip
    return (
        "<p>The global multimodal context's attention over the local tokens (last CAP block, mean over "
        "heads and context queries; it sums to one over the valid tokens): boxes are shaded by the "
        "region's weight, the caption's tokens by theirs (docs/mgmcf.md).</p>" + "".join(blocks)
    )


def _kv(mapping: Mapping[str, Any]) -> str:
    return _table(["", "count"], ([esc(k), esc(v)] for k, v in mapping.items()), "num small")


def _datasheet_section(reports_dir: Path) -> str:
    data = _read_json(reports_dir / "datasheet.json")
    md = reports_dir / "datasheet.md"
    if not isinstance(data, dict) and not md.is_file():
        return _note("No datasheet yet: reports/datasheet.json (stage consolidate) is missing.")
    parts = []
    if isinstance(data, dict):
        total = data.get("total", "–")
        if isinstance(total, dict):
            total = ", ".join(f"{k} {v}" for k, v in total.items())
        parts.append(f"<p>Memes: <strong>{esc(total)}</strong>.</p>")
        grid = []
        for key, title in (
            ("splits", "splits"),
            ("languages", "languages"),
            ("by_source_split", "source / split"),
        ):
            if isinstance(data.get(key), dict):
                grid.append(f"<div><h4>{esc(title)}</h4>{_kv(data[key])}</div>")
        leak = data.get("leakage")
        if isinstance(leak, dict):
            items = {k: v for k, v in leak.items() if not isinstance(v, (dict, list))}
            grid.append(f"<div><h4>leakage</h4>{_kv(items)}</div>")
        parts.append('<div class="grid">' + "".join(grid) + "</div>")
    if md.is_file():
        parts.append("<details><summary>Full datasheet (reports/datasheet.md)</summary>"
                     + markdown_to_html(md.read_text(encoding="utf-8")) + "</details>")  # fmt: skip
    return "\n".join(parts)


def _validation_section(reports_dir: Path) -> str:
    data = _read_json(reports_dir / "validation.json")
    md = reports_dir / "validation.md"
    if not isinstance(data, dict) and not md.is_file():
        return _note("No validation report yet: reports/validation.json (stage validate) is missing.")
    parts = []
    if isinstance(data, dict):
        ok = bool(data.get("success"))
        parts.append(f'<p class="badge {"ok" if ok else "bad"}">{"PASSED" if ok else "FAILED"}</p>'
                     f"<p>{esc(data.get('headline', ''))}</p>")  # fmt: skip
        results = [r for r in data.get("results") or [] if isinstance(r, dict)]
        failed = [r for r in results if not r.get("success")]
        parts.append(f"<p>{len(results) - len(failed)} of {len(results)} expectations met.</p>")
        rows = [[('<span class="ok">✓</span>' if r.get("success") else '<span class="bad">✗</span>'),
                 esc(r.get("name")), esc(r.get("column") or ""), esc("blocking" if r.get("blocking") else "warning"),
                 esc("" if r.get("unexpected_count") is None else r.get("unexpected_count")),
                 esc(r.get("details") or "")] for r in failed + [r for r in results if r.get("success")]]  # fmt: skip
        if rows:
            parts.append("<details" + (" open" if failed else "") + "><summary>Expectations</summary>"
                         + _table(["", "expectation", "column", "kind", "unexpected", "details"], rows, "small")
                         + "</details>")  # fmt: skip
    elif md.is_file():
        parts.append(markdown_to_html(md.read_text(encoding="utf-8")))
    return "\n".join(parts)


def _mlflow_section(runs: Sequence[MlflowRun] | None, ui: str, error: str | None) -> str:
    if error:
        return _note(f"MLflow runs unavailable: {error}")
    if not runs:
        return _note("No MLflow runs found in the tracking store.")
    from datetime import UTC, datetime

    rows = []
    for r in runs:
        started = (datetime.fromtimestamp(r.start_time / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
                   if r.start_time else "")  # fmt: skip
        rows.append([esc(r.stage), esc(r.variant), esc(r.experiment), esc(r.run_name), esc(r.status), esc(started),
                     f'<a href="{esc(run_url(ui, r))}"><code>{esc(r.run_id[:12])}</code></a>'])  # fmt: skip
    return (f"<p>The latest top-level run per DVC stage; links open the MLflow UI at <code>{esc(ui)}</code> "
            "(<code>make ui</code>).</p>"
            + _table(["stage", "variant", "experiment", "run", "status", "started", "run id"], rows, "small"))  # fmt: skip


CSS = """
:root { --ok: #1a7f37; --bad: #c62828; --dim: #6b7280; --line: #e5e7eb; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "Noto Sans CJK SC", sans-serif;
       margin: 0; color: #111827; background: #f9fafb; }
header { background: #1f2937; color: #f9fafb; padding: 16px 24px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
nav { position: sticky; top: 0; background: #111827; padding: 6px 24px; z-index: 2; }
nav a { color: #d1d5db; margin-right: 14px; text-decoration: none; font-size: 13px; }
nav a:hover { color: #fff; }
main { padding: 8px 24px 40px; max-width: 1500px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 8px 18px 16px; margin: 16px 0; }
h2 { border-bottom: 2px solid var(--line); padding-bottom: 4px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid var(--line); padding: 3px 8px; vertical-align: top; text-align: left; }
th { background: #f3f4f6; }
table.num td { font-variant-numeric: tabular-nums; white-space: nowrap; }
table.small { font-size: 12px; }
table.wide td { max-width: 360px; }
figure { margin: 8px 0; }
img.chart { max-width: 100%; height: auto; border: 1px solid var(--line); }
img.thumb { width: 200px; max-width: 100%; height: auto; border-radius: 4px; }
img.mini { width: 72px; height: auto; }
img.overlay { width: 320px; max-width: 100%; height: auto; border-radius: 4px; }
.scroll { overflow-x: auto; max-width: 100%; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(440px, 1fr)); gap: 14px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px; background: #fff; min-width: 0; }
.card table { font-size: 11px; }
.caption { white-space: pre-wrap; font-weight: 600; margin: 6px 0; }
.meta { color: var(--dim); font-size: 12px; }
.att { display: grid; grid-template-columns: 340px minmax(0, 1fr); gap: 16px; border-top: 1px solid var(--line); padding: 12px 0; }
.tok { padding: 1px 3px; border-radius: 3px; margin: 1px; display: inline-block; }
.grid { display: flex; flex-wrap: wrap; gap: 24px; }
.ok { color: var(--ok); font-weight: 600; } .bad { color: var(--bad); font-weight: 600; }
.dim { color: var(--dim); } .small { font-size: 12px; }
.note { color: var(--dim); font-style: italic; }
.pending { border-left: 4px solid #f59e0b; padding-left: 8px; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 12px; color: #fff; font-weight: 700; }
.badge.ok { background: var(--ok); color: #fff; } .badge.bad { background: var(--bad); color: #fff; }
.missing { color: var(--dim); font-size: 12px; }
pre { background: #f3f4f6; padding: 8px; overflow-x: auto; }
"""


def build_report(
    reports_dir: str | Path,
    out_path: str | Path,
    *,
    samples: Sequence[SampleMeme] | None = None,
    attention: Sequence[AttentionMap] | None = None,
    mlflow_runs: Sequence[MlflowRun] | None = None,
    mlflow_error: str | None = None,
    mlflow_ui: str | None = None,
    meme_images: Mapping[str, Path] | None = None,
    variants: Sequence[str] | None = None,
    title: str = "memeops report",
    vlm_examples: int = 12,
) -> Path:
    """Write the report page to ``out_path`` (assets in ``<its folder>/report_assets``); returns it.

    ``reports_dir`` holds the pipeline's reports (layout in the module docstring); the records
    that need models or the tracking store (``samples``, ``attention``, ``mlflow_runs``) are
    computed by the caller (``stages/report.py``) with :func:`predict_samples`,
    :func:`mgmcf_attention` and :func:`latest_mlflow_runs`; a section without them says so.
    ``variants`` restricts the leaderboard (default: every train-stage metrics file).
    """
    reports_dir, out_path = Path(reports_dir), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ui = mlflow_ui or os.environ.get(MLFLOW_UI_ENV) or DEFAULT_MLFLOW_UI
    assets = _Assets(out_path.parent)
    reports = read_variant_reports(reports_dir / "metrics", variants)
    latest: dict[str, MlflowRun] = {}  # the newest train run per variant (train@x or train_x)
    for run in mlflow_runs or ():
        newer = run.variant not in latest or (run.start_time or 0) > (latest[run.variant].start_time or 0)
        if run.variant and run.stage.startswith("train") and newer:
            latest[run.variant] = run
    run_links = {v: run_url(ui, r) for v, r in latest.items()}
    sections = [
        ("leaderboard", "Leaderboard", _leaderboard_section(reports, run_links, assets)),
        ("comparison", "Per-task comparison", _comparison_section(reports_dir, reports, assets)),
        ("ablations", "Ablations", _ablation_section(reports_dir, assets)),
        ("samples", "Sample memes and predictions", _samples_section(samples, assets)),
        ("vlm", "VLM explanations", _vlm_section(reports_dir, meme_images or {}, assets, vlm_examples)),
        ("attention", "MGMCF attention", _attention_section(attention, assets)),
        ("datasheet", "Datasheet", _datasheet_section(reports_dir)),
        ("validation", "Data validation", _validation_section(reports_dir)),
        ("mlflow", "MLflow runs", _mlflow_section(mlflow_runs, ui, mlflow_error)),
    ]
    nav = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t, _ in sections)
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><div>Multimodal meme classification: GatedCLIP, MGMCF, a "
        f"MemeLens-style VLM and baselines on {esc(', '.join(sorted(reports)) or 'no variants yet')}.</div></header>"
        f"<nav>{nav}</nav><main>"
        + "\n".join(_section(a, t, b) for a, t, b in sections)
        + "</main></body></html>\n"
    )  # fmt: skip
    out_path.write_text(page, encoding="utf-8")
    return out_path
