"""Calibration: top-label expected calibration error (ECE) and the bins of a reliability diagram.

Definitions (Guo et al., 2017, "On Calibration of Modern Neural Networks"):

* a prediction's **confidence** is the probability of the predicted (arg-max) label, and it is
  **correct** when that label is the target;
* the confidences are put in ``n_bins`` equal-width bins over ``[0, 1]``, right-closed:
  ``B_m = ((m-1)/M, m/M]`` (a confidence of exactly 0 goes to the first bin);
* ``ECE = sum_m |B_m| / n * |acc(B_m) - conf(B_m)|``, with ``acc`` the fraction correct and
  ``conf`` the mean confidence of the bin; empty bins contribute nothing.

A perfectly calibrated model (in every bin the accuracy equals the mean confidence) has ECE 0;
the worst value is 1. The default is 15 bins, the usual choice in the literature.

Multi-label tasks have no single top label: each (meme, label) pair counts as one binary
prediction (:func:`binary_confidence`: predicted positive when ``p >= 0.5``, confidence
``max(p, 1 - p)``). :func:`task_confidence` picks the right form for a task kind; pooling several
tasks is concatenating their (confidence, correct) pairs (:func:`ece_from_confidence`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_BINS = 15
MULTI_THRESHOLD = 0.5


@dataclass
class ReliabilityBins:
    """Per-bin statistics of a reliability diagram (``n_bins`` entries each).

    ``count``: predictions in the bin; ``accuracy`` / ``confidence``: their fraction correct and
    mean confidence (NaN for empty bins); ``edges``: the ``n_bins + 1`` bin edges.
    """

    edges: np.ndarray
    count: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray

    @property
    def n(self) -> int:
        return int(self.count.sum())

    @property
    def ece(self) -> float:
        """The expected calibration error of these bins (NaN without predictions)."""
        n = self.n
        if n == 0:
            return math.nan
        filled = self.count > 0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float(np.sum(self.count[filled] / n * gaps))

    def to_dict(self) -> dict[str, list[float | None] | list[int]]:
        """JSON-able (NaN -> None)."""

        def clean(values: np.ndarray) -> list[float | None]:
            return [None if math.isnan(v) else round(float(v), 6) for v in values]

        return {"edges": [round(float(e), 6) for e in self.edges], "count": [int(c) for c in self.count],
                "accuracy": clean(self.accuracy), "confidence": clean(self.confidence)}  # fmt: skip


def top_label_confidence(probs: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Single-label: ``(confidence, correct)`` = (max probability, arg-max == target) per row."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets)
    if probs.ndim != 2 or len(probs) != len(targets):
        raise ValueError(f"probs {probs.shape} do not match targets {targets.shape}: expected [N, L] and [N]")
    if len(probs) == 0:
        return np.empty(0), np.empty(0, dtype=bool)
    return probs.max(axis=1), probs.argmax(axis=1) == targets.astype(np.int64)


def binary_confidence(probs: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Multi-label (or any independent binary outputs): every entry of ``probs`` ``[N, L]`` is one
    prediction, positive when ``p >= 0.5``; ``(max(p, 1 - p), predicted == target)``, flattened."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets)
    if probs.shape != targets.shape:
        raise ValueError(f"multi-label probs {probs.shape} do not match targets {targets.shape}")
    p = probs.ravel()
    pred = p >= MULTI_THRESHOLD
    return np.maximum(p, 1.0 - p), pred == (targets.ravel() >= 0.5)


def task_confidence(
    probs: np.ndarray, targets: np.ndarray, kind: str = "single"
) -> tuple[np.ndarray, np.ndarray]:
    """``(confidence, correct)`` for a task of ``kind`` (single: top label; multi: per label).
    Pass labelled rows only."""
    return binary_confidence(probs, targets) if kind == "multi" else top_label_confidence(probs, targets)


def reliability_bins(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = DEFAULT_BINS
) -> ReliabilityBins:
    """Equal-width, right-closed bins over ``[0, 1]`` of (confidence, correct) pairs."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    ok = np.asarray(correct, dtype=np.float64).ravel()
    if conf.shape != ok.shape:
        raise ValueError(f"confidence {conf.shape} and correct {ok.shape} differ in length")
    if conf.size and (np.nanmin(conf) < -1e-9 or np.nanmax(conf) > 1 + 1e-9 or np.isnan(conf).any()):
        raise ValueError("confidences must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # right-closed: a confidence equal to an inner edge m/M belongs to the bin ending there
    idx = np.searchsorted(edges[1:-1], np.clip(conf, 0.0, 1.0), side="left")
    count = np.bincount(idx, minlength=n_bins).astype(np.int64)
    sum_ok = np.bincount(idx, weights=ok, minlength=n_bins)
    sum_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(count > 0, sum_ok / np.maximum(count, 1), np.nan)
        mean_conf = np.where(count > 0, sum_conf / np.maximum(count, 1), np.nan)
    return ReliabilityBins(edges, count, accuracy, mean_conf)


def ece_from_confidence(confidence: np.ndarray, correct: np.ndarray, n_bins: int = DEFAULT_BINS) -> float:
    """ECE of (confidence, correct) pairs, e.g. several tasks' pairs concatenated (pooled ECE)."""
    return reliability_bins(confidence, correct, n_bins).ece


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, n_bins: int = DEFAULT_BINS) -> float:
    """Top-label expected calibration error of a single-label classifier.

    ``probs``: ``[N, L]`` predicted probabilities (rows sum to 1; ``L >= 2``, a binary task is
    ``L = 2``); ``targets``: ``[N]`` integer labels (labelled rows only). The confidence of a row is
    its largest probability, correct when its arg-max equals the target; confidences go into
    ``n_bins`` equal-width bins over ``[0, 1]`` (right-closed) and

        ECE = sum over bins of (bin size / N) * |bin accuracy - bin mean confidence|.

    Returns a float in ``[0, 1]``: 0 for a perfectly calibrated model, NaN when ``N = 0``.

    >>> expected_calibration_error(np.array([[0.25, 0.75]] * 4), np.array([1, 1, 1, 0]))  # 3 of 4 right at 0.75
    0.0
    >>> expected_calibration_error(np.array([[0.1, 0.9]] * 4), np.array([1, 1, 0, 0]))  # half right at 0.9
    0.4
    """
    confidence, correct = top_label_confidence(probs, targets)
    return ece_from_confidence(confidence, correct, n_bins)
