"""The statistics core (memeops.stats) pinned to references: weighted metrics = sklearn with
``sample_weight``, the percentile interval = scipy.stats.bootstrap, the paired p-value of the same
magnitude as scipy.stats.permutation_test, Holm by hand, and seed resampling that widens intervals."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from memeops.evaluation.metrics import MULTI_THRESHOLD, Predictions, labelled_mask, primary_metric
from memeops.models.base import IGNORE_INDEX, MISSING_MULTI, TaskSpec
from memeops.stats import (
    ArmRun,
    arm_stats,
    bootstrap_group,
    compare_arms,
    holm,
    labelled_rows,
    one_sided_p,
    prepare_task,
    primary_statistic,
    resample_counts,
    seed_draws,
    seed_mean,
    task_intervals,
    two_sided_p,
    weighted_auroc,
    weighted_statistics,
)
from memeops.stats import MULTI_THRESHOLD as STATS_THRESHOLD

BINARY = TaskSpec("hateful", "single", ("no", "yes"))
FOUR = TaskSpec("emotion", "single", ("a", "b", "c", "d"))
MULTI = TaskSpec("target", "multi", ("x", "y", "z"))


def random_counts(n: int, b: int, seed: int) -> np.ndarray:
    """``[n, b]`` counts of ``b`` bootstrap resamples of ``n`` rows."""
    return resample_counts(np.random.default_rng(seed).integers(0, n, size=(b, n)), n)


# --------------------------------------------------------------------------- weighted metrics = sklearn


def test_weighted_auroc_equals_sklearn_with_sample_weight() -> None:
    rng = np.random.default_rng(0)
    n = 80
    y = rng.integers(0, 2, n)
    p1 = np.clip(0.3 * y + rng.random(n) * 0.7, 0, 1).round(1)  # rounded: many tied scores
    task = prepare_task(np.stack([1 - p1, p1], axis=1), y, BINARY)
    counts = random_counts(n, 30, seed=1)
    got = weighted_auroc(task, counts[task.rows])
    for b in range(counts.shape[1]):
        w = counts[:, b]
        assert got[b] == pytest.approx(roc_auc_score(y, p1, sample_weight=w), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_single_label_metrics_equal_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 60
    y = rng.integers(0, 4, n)
    probs = rng.dirichlet(np.ones(4), n) + 0.8 * np.eye(4)[y] * (rng.random((n, 1)) < 0.5)
    pred = probs.argmax(axis=1)
    counts = random_counts(n, 25, seed=seed + 10)
    got = weighted_statistics(prepare_task(probs, y, FOUR), counts)
    for b in range(counts.shape[1]):
        keep = counts[:, b] > 0  # sklearn's labels are those of the rows it sees
        yt, yp, w = y[keep], pred[keep], counts[keep, b]
        expected = {
            "accuracy": accuracy_score(yt, yp, sample_weight=w),
            "macro_f1": f1_score(yt, yp, average="macro", sample_weight=w, zero_division=0),
            "weighted_f1": f1_score(yt, yp, average="weighted", sample_weight=w, zero_division=0),
            "weighted_precision": precision_score(
                yt, yp, average="weighted", sample_weight=w, zero_division=0
            ),
            "weighted_recall": recall_score(yt, yp, average="weighted", sample_weight=w, zero_division=0),
        }
        for name, value in expected.items():
            assert got[name][b] == pytest.approx(value, abs=1e-12), (name, b)


def test_weighted_multi_label_metrics_equal_sklearn() -> None:
    rng = np.random.default_rng(3)
    n = 70
    y = (rng.random((n, 3)) < 0.4).astype(float)
    probs = np.clip(0.35 * y + rng.random((n, 3)) * 0.65, 0, 1)
    pred = (probs >= MULTI_THRESHOLD).astype(int)
    counts = random_counts(n, 25, seed=4)
    got = weighted_statistics(prepare_task(probs, y, MULTI), counts)
    for b in range(counts.shape[1]):
        w = counts[:, b]
        for average in ("micro", "macro", "weighted"):
            expected = f1_score(y.astype(int), pred, average=average, sample_weight=w, zero_division=0)
            assert got[f"{average}_f1"][b] == pytest.approx(expected, abs=1e-12), (average, b)
        expected = accuracy_score(y.astype(int), pred, sample_weight=w)
        assert got["subset_accuracy"][b] == pytest.approx(expected)


def test_conventions_match_the_evaluation_package() -> None:
    single = np.array([0, IGNORE_INDEX, 1, 1, IGNORE_INDEX])
    multi = np.array([[1, 0, 0], [MISSING_MULTI] * 3, [0, 0, 0], [MISSING_MULTI] * 3])
    assert labelled_rows(single, BINARY).tolist() == np.flatnonzero(labelled_mask(single, BINARY)).tolist()
    assert labelled_rows(multi, MULTI).tolist() == np.flatnonzero(labelled_mask(multi, MULTI)).tolist()
    assert STATS_THRESHOLD == MULTI_THRESHOLD
    for spec in (BINARY, FOUR, MULTI):
        assert primary_statistic(spec) == primary_metric(spec)


def test_the_core_imports_without_torch_or_sklearn() -> None:
    code = "import sys, memeops.stats; sys.exit(bool({'torch', 'sklearn'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --------------------------------------------------------------------------- intervals and p-values


def test_percentile_interval_agrees_with_scipy_bootstrap() -> None:
    """Accuracy's interval (labelled rows resampled) vs scipy's percentile bootstrap of the mean of
    the 0/1 correctness: different random streams, so equal within Monte Carlo error."""
    rng = np.random.default_rng(5)
    n = 300
    y = rng.integers(0, 2, n)
    right = rng.random(n) < 0.7
    pred = np.where(right, y, 1 - y)
    probs = np.eye(2)[pred] * 0.8 + 0.1
    ours = task_intervals(BINARY, probs, y, n_boot=8000, seed=0, metrics=["accuracy"])["accuracy"]
    ref = sps.bootstrap((right.astype(float),), np.mean, n_resamples=8000, method="percentile",
                        confidence_level=0.95, random_state=1).confidence_interval  # fmt: skip
    assert ours == pytest.approx((ref.low, ref.high), abs=0.01)


def make_arm(arm: str, correct: np.ndarray, y: np.ndarray, seed: int = 0) -> ArmRun:
    """A binary run whose predictions are right exactly where ``correct`` is."""
    pred = np.where(correct, y, 1 - y)
    preds = Predictions(probs={"hateful": np.eye(2)[pred] * 0.8 + 0.1}, targets={"hateful": y},
                        meme_ids=[f"m{i}" for i in range(len(y))])  # fmt: skip
    return ArmRun("g", arm, seed, preds, {}, best_epoch=1, seconds=0.0)


def permutation_p(a: np.ndarray, b: np.ndarray) -> float:
    result = sps.permutation_test(
        (a.astype(float), b.astype(float)), lambda x, y, axis: np.mean(x - y, axis=axis),
        permutation_type="samples", n_resamples=9999, alternative="two-sided", random_state=0,
    )  # fmt: skip
    return float(result.pvalue)


def test_paired_p_agrees_with_permutation_test() -> None:
    rng = np.random.default_rng(6)
    n = 200
    y = rng.integers(0, 2, n)
    specs = {"hateful": BINARY}
    # a clear difference: 85% vs 60% right on the same memes
    a, b = rng.random(n) < 0.85, rng.random(n) < 0.6
    comp = compare_arms([make_arm("a", a, y)], [make_arm("b", b, y)], specs, "hateful/accuracy", n_boot=2000)
    assert comp.p_value < 0.01 and permutation_p(a, b) < 0.01
    # no difference: the arms disagree on 40 memes, 20 each way
    a = rng.random(n) < 0.7
    b = a.copy()
    flip = rng.choice(n, 40, replace=False)
    b[flip] = ~a[flip]
    a[flip[:20]], b[flip[:20]] = True, False
    a[flip[20:]], b[flip[20:]] = False, True
    comp = compare_arms([make_arm("a", a, y)], [make_arm("b", b, y)], specs, "hateful/accuracy", n_boot=2000)
    assert comp.delta == 0 and comp.p_value > 0.5 and permutation_p(a, b) > 0.5


def test_p_value_formulas() -> None:
    deltas = np.array([-1.0] * 10 + [1.0] * 90)
    assert two_sided_p(deltas) == pytest.approx(2 * 11 / 101)  # the smaller tail, doubled
    assert two_sided_p(-deltas) == pytest.approx(2 * 11 / 101)  # symmetric
    assert two_sided_p(np.zeros(50)) == 1.0  # capped
    assert math.isnan(two_sided_p(np.array([])))
    assert one_sided_p(deltas, margin=0.0) == pytest.approx(11 / 101)
    assert one_sided_p(deltas, margin=2.0) == pytest.approx(1.0)
    assert math.isnan(one_sided_p(np.array([])))


def test_holm_equals_a_hand_computation() -> None:
    # sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> kept at 0.06
    np.testing.assert_allclose(
        holm([0.01, 0.04, 0.03, 0.005, math.nan]), [0.03, 0.06, 0.06, 0.02, math.nan], equal_nan=True
    )
    np.testing.assert_allclose(holm([0.6, 0.4]), [0.8, 0.8])  # capped below 1, monotone
    p = np.random.default_rng(0).random(12) * 0.2
    adj = holm(p)
    order = np.argsort(p)
    assert (np.diff(adj[order]) >= 0).all() and (adj >= p).all() and (adj <= 1).all()


# --------------------------------------------------------------------------- seeds


def test_seed_draws_are_shared_and_reduce_to_one_seed() -> None:
    draws = seed_draws(3, 500, seed=4)
    assert draws.shape == (500, 3) and (draws.sum(axis=1) == 3).all()
    np.testing.assert_array_equal(draws, seed_draws(3, 500, seed=4))  # same for every 3-seed arm
    assert (draws == 3).any() and (draws == 0).any()  # really with replacement
    np.testing.assert_array_equal(seed_draws(1, 7, seed=4), np.ones((7, 1)))
    per_seed = np.array([[1.0, 2.0], [np.nan, np.nan], [3.0, 6.0]])  # [seeds, B]
    got = seed_mean(per_seed, np.array([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]]))
    assert got[0] == pytest.approx(5 / 3) and math.isnan(got[1])  # an undrawn NaN seed does not count


def test_seed_resampling_widens_the_interval_of_an_unstable_arm() -> None:
    rng = np.random.default_rng(8)
    n = 300
    y = rng.integers(0, 2, n)
    rates = (0.95, 0.55, 0.75)  # seeds that differ a lot
    runs = [make_arm("unstable", rng.random(n) < rate, y, seed=s) for s, rate in enumerate(rates)]
    specs = {"hateful": BINARY}
    widths = {}
    for resample_seeds in (False, True):
        boot = bootstrap_group(runs, specs, ["hateful/accuracy"], n_boot=1000, seed=0,
                               resample_seeds=resample_seeds)  # fmt: skip
        st = arm_stats(boot, "unstable", "hateful/accuracy")
        assert st.ci_low < st.mean < st.ci_high
        widths[resample_seeds] = st.ci_high - st.ci_low
    assert widths[True] > 2 * widths[False]
    # one seed: nothing to resample, the same interval either way
    one = [runs[0]]
    a = bootstrap_group(one, specs, ["hateful/accuracy"], n_boot=200, resample_seeds=True)
    b = bootstrap_group(one, specs, ["hateful/accuracy"], n_boot=200, resample_seeds=False)
    np.testing.assert_array_equal(a.resampled[("unstable", "hateful/accuracy")],
                                  b.resampled[("unstable", "hateful/accuracy")])  # fmt: skip
