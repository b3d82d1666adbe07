"""Small diagnostic PNGs and the per-epoch history CSV, logged as run artifacts.

Uses matplotlib's object API (``Figure`` + Agg canvas), never ``pyplot``: no global figure state,
no GUI backend, nothing left open between calls, safe in threads. Inputs are what the trainer
produces (:class:`memeops.evaluation.metrics.Predictions`, ``FitResult.history``), and only
labelled rows enter a plot, with the same conventions as the metrics (arg-max prediction; label
index 1 is the positive class of a binary task).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from memeops.evaluation.metrics import Predictions, binary_auroc, labelled
from memeops.models.base import TaskSpec

DPI = 100


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def plot_confusion_matrix(
    probs: np.ndarray, targets: np.ndarray, spec: TaskSpec, path: str | Path, *, normalize: bool = False
) -> Path:
    """Rows = true label, columns = arg-max prediction, counts (or row-normalised rates) per cell."""
    if spec.kind != "single":
        raise ValueError(f"{spec.name}: a confusion matrix needs a single-label task, got {spec.kind}")
    p, y = labelled(probs, targets, spec)
    k = spec.num_labels
    matrix = np.zeros((k, k), dtype=np.float64)
    if len(y):
        np.add.at(matrix, (y.astype(np.int64), p.argmax(axis=1)), 1.0)
    if normalize:
        matrix = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1.0)
    side = 2.2 + 0.55 * k
    fig = Figure(figsize=(side + 0.8, side))
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(k), spec.labels, rotation=45, ha="right")
    ax.set_yticks(range(k), spec.labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{spec.name} (n={len(y)})")
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(k):
        for j in range(k):
            text = f"{matrix[i, j]:.2f}" if normalize else f"{int(matrix[i, j])}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if matrix[i, j] > threshold else "black")  # fmt: skip
    fig.tight_layout()
    return _save(fig, path)


def plot_roc_curve(probs: np.ndarray, targets: np.ndarray, spec: TaskSpec, path: str | Path) -> Path:
    """ROC of P(label index 1); with one class present only the chance line is drawn (AUROC n/a)."""
    if not spec.is_binary:
        raise ValueError(f"{spec.name}: a ROC curve needs a binary single-label task")
    from sklearn.metrics import roc_curve

    p, y = labelled(probs, targets, spec)
    y = y.astype(np.int64)
    auroc = binary_auroc(p[:, 1], y) if len(y) else math.nan
    fig = Figure(figsize=(4.2, 4.0))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    if not math.isnan(auroc):
        fpr, tpr, _ = roc_curve(y, p[:, 1])
        ax.plot(fpr, tpr, linewidth=2, label=f"AUROC {auroc:.3f}")
        ax.legend(loc="lower right")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel(f"true positive rate ({spec.labels[1]})")
    title = f"{spec.name} (n={len(y)})" + ("" if not math.isnan(auroc) else ", one class: AUROC undefined")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_training_curve(
    history: Sequence[Mapping[str, float]], monitor: str, path: str | Path, *,
    loss_key: str = "train/loss", mode: Literal["max", "min"] | None = None,
) -> Path:  # fmt: skip
    """Train loss (left axis) and the validation selection metric (right axis) per epoch, with a
    dotted line at the best epoch (first best, as the trainer selects).

    ``monitor`` is the history key, e.g. ``"val/hateful/auroc"``; a bare trainer monitor
    (``"hateful/auroc"``) is looked up as ``val/<monitor>`` too. ``mode`` None: "min" for a loss,
    else "max".
    """
    if history and monitor not in history[0] and f"val/{monitor}" in history[0]:
        monitor = f"val/{monitor}"
    epochs = [int(rec.get("epoch", i)) for i, rec in enumerate(history, start=1)]
    loss = [float(rec.get(loss_key, math.nan)) for rec in history]
    score = [float(rec.get(monitor, math.nan)) for rec in history]
    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.add_subplot()
    ax.plot(epochs, loss, marker="o", color="tab:blue", label=loss_key)
    ax.set_xlabel("epoch")
    ax.set_ylabel(loss_key, color="tab:blue")
    right = ax.twinx()
    right.plot(epochs, score, marker="s", color="tab:orange", label=monitor)
    right.set_ylabel(monitor, color="tab:orange")
    sign = -1.0 if (mode or ("min" if "loss" in monitor else "max")) == "min" else 1.0
    finite = [(sign * s, -e) for s, e in zip(score, epochs) if not math.isnan(s)]
    if finite:
        ax.axvline(-max(finite)[1], color="grey", linestyle=":", linewidth=1)
    ax.set_title(f"training curve ({len(history)} epochs)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def write_history_csv(history: Sequence[Mapping[str, float]], path: str | Path) -> Path:
    """One row per epoch, columns = union of keys in first-seen order (``epoch`` first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns: list[str] = ["epoch"]
    for rec in history:
        columns += [k for k in rec if k not in columns]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for i, rec in enumerate(history, start=1):
            writer.writerow({"epoch": i, **rec})
    return path


def evaluation_plots(predictions: Predictions, specs: Sequence[TaskSpec], out_dir: str | Path) -> list[Path]:
    """``confusion_<task>.png`` per single-label task and ``roc_<task>.png`` per binary task, for
    every task that has targets in ``predictions``. Returns the written paths."""
    out_dir = Path(out_dir)
    written: list[Path] = []
    for spec in specs:
        if spec.name not in predictions.targets or spec.name not in predictions.probs:
            continue
        probs, targets = predictions.probs[spec.name], predictions.targets[spec.name]
        if spec.kind == "single":
            written.append(
                plot_confusion_matrix(probs, targets, spec, out_dir / f"confusion_{spec.name}.png")
            )
        if spec.is_binary:
            written.append(plot_roc_curve(probs, targets, spec, out_dir / f"roc_{spec.name}.png"))
    return written
