"""Metrics against hand-computed values, masking of missing labels, and NaN-safe AUROC."""

from __future__ import annotations

import math

import numpy as np
import pytest

from memeops.evaluation import Predictions, all_metrics, labelled, task_metrics
from memeops.stats import task_intervals
from memeops.models.base import IGNORE_INDEX, MISSING_MULTI, TaskSpec

BINARY = TaskSpec("hateful", "single", ("no", "yes"))
TRI = TaskSpec("sentiment", "single", ("neg", "neu", "pos"))
MULTI = TaskSpec("target", "multi", ("a", "b", "c"))


def one_hot_probs(pred: list[int], num_labels: int) -> np.ndarray:
    probs = np.full((len(pred), num_labels), 0.1 / (num_labels - 1))
    probs[np.arange(len(pred)), pred] = 0.9
    return probs


def binary_case() -> tuple[np.ndarray, np.ndarray]:
    # Labelled rows: y = [0, 1, 1, 0], p(yes) = [.2, .7, .4, .6] -> pred [0, 1, 0, 1].
    # The last row is unlabelled; were it counted, p=.9 / pred 1 would change every metric.
    p_yes = np.array([0.2, 0.7, 0.4, 0.6, 0.9])
    return np.stack([1 - p_yes, p_yes], axis=1), np.array([0, 1, 1, 0, IGNORE_INDEX])


def test_binary_metrics_by_hand() -> None:
    probs, targets = binary_case()
    m = task_metrics(probs, targets, BINARY)
    assert m["n"] == 4
    assert m["accuracy"] == pytest.approx(0.5)
    # each class: TP 1, FP 1, FN 1 -> P = R = F1 = 0.5
    for key in ("macro_f1", "weighted_f1", "weighted_precision", "weighted_recall"):
        assert m[key] == pytest.approx(0.5)
    # positive/negative pairs: (.7>.2) (.7>.6) (.4>.2) (.4<.6) -> 3/4
    assert m["auroc"] == pytest.approx(0.75)


def test_multiclass_metrics_by_hand() -> None:
    targets = np.array([0, 0, 0, 1, 2, IGNORE_INDEX])
    probs = one_hot_probs([0, 0, 1, 1, 1, 2], 3)
    m = task_metrics(probs, targets, TRI)
    # class 0: P 1, R 2/3, F1 .8 | class 1: P 1/3, R 1, F1 .5 | class 2: P 0, R 0, F1 0; support 3/1/1
    assert m["n"] == 5
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 0.0) / 3)
    assert m["weighted_f1"] == pytest.approx((3 * 0.8 + 0.5) / 5)
    assert m["weighted_precision"] == pytest.approx((3 * 1 + 1 / 3) / 5)
    assert m["weighted_recall"] == pytest.approx(3 / 5)
    assert "auroc" not in m  # AUROC only for binary tasks


def test_multilabel_metrics_by_hand() -> None:
    targets = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [MISSING_MULTI] * 3], dtype=np.float32)
    probs = np.array(
        [[0.9, 0.2, 0.4], [0.1, 0.5, 0.3], [0.8, 0.49, 0.7], [0.9, 0.9, 0.9]]  # 0.5 counts as positive
    )
    m = task_metrics(probs, targets, MULTI)
    # per label F1: a 1, b 2/3, c 0; micro TP 3 FP 1 FN 2 -> P 3/4 R 3/5 F1 2/3; supports 2/2/1
    assert m["n"] == 3
    assert m["micro_f1"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert m["weighted_f1"] == pytest.approx((2 * 1 + 2 * 2 / 3) / 5)
    assert m["subset_accuracy"] == pytest.approx(1 / 3)


def test_one_class_auroc_is_nan_not_an_error() -> None:
    probs = np.array([[0.3, 0.7], [0.6, 0.4], [0.5, 0.5]])
    m = task_metrics(probs, np.array([1, 1, IGNORE_INDEX]), BINARY)
    assert math.isnan(m["auroc"])
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["n"] == 2


def test_no_labelled_rows_gives_nan_and_zero_n() -> None:
    m = task_metrics(np.full((2, 2), 0.5), np.array([IGNORE_INDEX, IGNORE_INDEX]), BINARY)
    assert m["n"] == 0 and math.isnan(m["accuracy"]) and math.isnan(m["auroc"])
    mm = task_metrics(np.full((1, 3), 0.5), np.full((1, 3), MISSING_MULTI), MULTI)
    assert mm["n"] == 0 and math.isnan(mm["micro_f1"])


def test_shape_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError):
        task_metrics(np.full((3, 3), 0.3), np.array([0, 1, 0]), BINARY)


def test_all_metrics_flattens_and_averages_macro_f1() -> None:
    bin_probs, bin_targets = binary_case()
    multi_rows = [[1, 0, 1], [0, 1, 0], [1, 1, 0], [MISSING_MULTI] * 3, [1, 0, 0]]
    multi_targets = np.array(multi_rows, dtype=np.float32)
    multi_probs = np.array([[0.9, 0.2, 0.4], [0.1, 0.5, 0.3], [0.8, 0.49, 0.7], [0.9] * 3, [0.9, 0.1, 0.1]])
    preds = Predictions(
        probs={"hateful": bin_probs, "target": multi_probs, "sentiment": one_hot_probs([0] * 5, 3)},
        targets={"hateful": bin_targets, "target": multi_targets},  # no sentiment targets: skipped
    )
    out = all_metrics(preds, [BINARY, TRI, MULTI])
    assert out["hateful/auroc"] == pytest.approx(0.75)
    assert not any(k.startswith("sentiment/") for k in out)
    expected_mean = np.mean([out["hateful/macro_f1"], out["target/macro_f1"]])
    assert out["mean/macro_f1"] == pytest.approx(expected_mean)
    assert out["target/n"] == 4


def test_mean_macro_f1_ignores_tasks_without_labels() -> None:
    probs, targets = binary_case()
    preds = Predictions(
        probs={"hateful": probs, "sentiment": one_hot_probs([0] * 5, 3)},
        targets={"hateful": targets, "sentiment": np.full(5, IGNORE_INDEX)},
    )
    out = all_metrics(preds, [BINARY, TRI])
    assert out["mean/macro_f1"] == pytest.approx(out["hateful/macro_f1"])


def test_bootstrap_interval_brackets_the_estimate_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, 200)
    pred = np.where(rng.random(200) < 0.8, targets, 1 - targets)
    probs = one_hot_probs(list(pred), 2)
    low, high = task_intervals(BINARY, probs, targets, n_boot=300, seed=1, metrics=["accuracy"])["accuracy"]
    point = task_metrics(probs, targets, BINARY)["accuracy"]
    assert low < point < high and high - low < 0.2
    again = task_intervals(BINARY, probs, targets, n_boot=300, seed=1, metrics=["accuracy"])["accuracy"]
    assert tuple(again) == (low, high)


def test_bootstrap_interval_degenerate_cases() -> None:
    probs = one_hot_probs([0, 1, 1, 0], 2)
    targets = np.array([0, 1, 1, 0])
    assert tuple(task_intervals(BINARY, probs, targets, n_boot=50, seed=0, metrics=["accuracy"])["accuracy"]) == (1.0, 1.0)
    one_class = task_intervals(BINARY, probs, np.ones(4, dtype=int), n_boot=20, seed=0, metrics=["auroc"])["auroc"]
    assert all(math.isnan(v) for v in one_class)


def test_labelled_drops_missing_rows() -> None:
    probs, targets = binary_case()
    p, t = labelled(probs, targets, BINARY)
    assert len(p) == len(t) == 4 and IGNORE_INDEX not in t


@pytest.mark.parametrize("n_labels,n_rows,absent", [(2, 50, None), (5, 40, 3), (7, 9, 0), (3, 1, None)])
def test_single_label_metrics_equal_sklearn(n_labels: int, n_rows: int, absent: int | None) -> None:
    """The numpy confusion-count metrics are sklearn's, with classes absent from targets, from
    predictions or from both (sklearn averages over the labels present in either)."""
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

    rng = np.random.default_rng(n_labels * 100 + n_rows)
    probs = rng.dirichlet(np.ones(n_labels), size=n_rows)
    y = rng.integers(0, n_labels, size=n_rows)
    if absent is not None:  # never a target, never predicted
        y[y == absent] = (absent + 1) % n_labels
        probs[:, absent] = 0.0
    spec = TaskSpec("t", "single", [f"l{i}" for i in range(n_labels)])
    got = task_metrics(probs, y, spec)
    pred = probs.argmax(axis=1)
    want = {
        "accuracy": accuracy_score(y, pred),
        "macro_f1": f1_score(y, pred, average="macro", zero_division=0),
        "weighted_f1": f1_score(y, pred, average="weighted", zero_division=0),
        "weighted_precision": precision_score(y, pred, average="weighted", zero_division=0),
        "weighted_recall": recall_score(y, pred, average="weighted", zero_division=0),
    }
    if n_labels == 2 and len(np.unique(y)) == 2:
        want["auroc"] = roc_auc_score(y, probs[:, 1])
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
