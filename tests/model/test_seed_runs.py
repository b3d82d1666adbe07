"""Several seeds of a variant: the validation-only selection rule, the per-seed predictions file, the
seed summary, and the paired comparison of variants (stage compare)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from memeops.evaluation.compare import compare_variants, wide_table
from memeops.evaluation.metrics import Predictions, all_metrics
from memeops.models.base import IGNORE_INDEX, TaskSpec
from memeops.stats import ArmRun
from memeops.training.seed_runs import predictions_table, runs_from_table, select_seed, summarise_seeds

HATEFUL = TaskSpec("hateful", "single", ("no", "yes"))
SENTIMENT = TaskSpec("sentiment", "single", ("neg", "neu", "pos"))
SPECS = {"hateful": HATEFUL, "sentiment": SENTIMENT}


def test_select_seed_is_the_median_validation_seed() -> None:
    assert select_seed({0: 0.70, 1: 0.90, 2: 0.80}) == 2
    assert select_seed({0: 0.70, 1: 0.90, 2: 0.80}, mode="min") == 2
    # even count: the more conservative of the two middle seeds, in the monitor's direction
    assert select_seed({0: 0.1, 1: 0.2, 2: 0.3, 3: 0.4}) == 1
    assert select_seed({0: 0.1, 1: 0.2, 2: 0.3, 3: 0.4}, mode="min") == 2
    assert select_seed({5: 0.5}) == 5
    assert select_seed({0: math.nan, 1: 0.2, 2: 0.3}) == 1  # undefined ranks worst
    assert select_seed({0: 0.5, 1: 0.5, 2: 0.5}) == 1  # ties keep the seeds' order
    with pytest.raises(ValueError):
        select_seed({})


def _predictions(rng: np.random.Generator, n: int, skill: float, ids: list[str]) -> Predictions:
    """Predictions whose hateful scores separate the classes with strength ``skill``."""
    y = np.arange(n) % 2
    score = 1 / (1 + np.exp(-(skill * (2 * y - 1) + rng.normal(0, 1, n))))
    s = rng.integers(0, 3, n)
    s[::7] = IGNORE_INDEX  # some memes unlabelled for sentiment
    sent = rng.dirichlet(np.ones(3), n)
    sent[np.arange(n), np.clip(s, 0, 2)] += skill
    sent /= sent.sum(axis=1, keepdims=True)
    return Predictions(probs={"hateful": np.stack([1 - score, score], axis=1), "sentiment": sent},
                       targets={"hateful": y, "sentiment": s}, meme_ids=ids)  # fmt: skip


def _runs(arm: str, skill: float, seeds: list[int], n: int = 200) -> list[ArmRun]:
    ids = [f"m{i}" for i in range(n)]
    return [ArmRun("train", arm, s, _predictions(np.random.default_rng(s), n, skill, ids), {}, 1, 0.0) for s in seeds]


def test_predictions_table_round_trips_and_aligns_to_the_split(tmp_path) -> None:
    runs = _runs("concat", 1.0, [0, 1], n=30)
    table = predictions_table({"test": runs})
    table.to_parquet(tmp_path / "p.parquet")  # the file stage compare reads
    ids = [f"m{i}" for i in range(30)][::-1] + ["unscored"]  # another order and a meme the runs lack
    back = runs_from_table(__import__("pandas").read_parquet(tmp_path / "p.parquet"), "test", SPECS, ids, group="g")
    assert [(r.arm, r.seed) for r in back] == [("concat", 0), ("concat", 1)]
    for before, after in zip(runs, back, strict=True):
        assert after.predictions.meme_ids == ids
        np.testing.assert_allclose(after.predictions.probs["hateful"][:30], before.predictions.probs["hateful"][::-1])
        assert after.predictions.targets["hateful"][30] == IGNORE_INDEX  # unscored: unlabelled, not a zero
        got = all_metrics(after.predictions, list(SPECS.values()))
        want = all_metrics(before.predictions, list(SPECS.values()))
        assert got["hateful/auroc"] == pytest.approx(want["hateful/auroc"])
        assert got["sentiment/macro_f1"] == pytest.approx(want["sentiment/macro_f1"])
    with pytest.raises(ValueError, match="outside the test split"):
        runs_from_table(table, "test", SPECS, ids[:10], group="g")


def test_seed_summary_is_the_mean_over_seeds_with_an_interval_around_it() -> None:
    runs = _runs("gatedclip", 1.5, [0, 1, 2])
    summary = summarise_seeds(runs, list(SPECS.values()), n_boot=300, seed=0)
    assert set(summary) == {"hateful/macro_f1", "hateful/auroc", "sentiment/macro_f1", "mean/macro_f1"}
    auroc = summary["hateful/auroc"]
    per_seed = [all_metrics(r.predictions, list(SPECS.values()))["hateful/auroc"] for r in runs]
    assert auroc.per_seed == pytest.approx(per_seed)
    assert auroc.mean == pytest.approx(np.mean(per_seed)) and auroc.std == pytest.approx(np.std(per_seed, ddof=1))
    assert auroc.ci_low < auroc.mean < auroc.ci_high and auroc.n_seeds == 3
    assert auroc.as_json()["ci95"] == [round(auroc.ci_low, 6), round(auroc.ci_high, 6)]


def test_compare_calls_a_difference_significant_only_when_the_paired_test_says_so() -> None:
    runs = _runs("strong", 2.5, [0, 1, 2]) + _runs("twin", 2.5, [10, 11, 12]) + _runs("weak", 0.2, [0, 1, 2])
    tasks = {"strong": ["hateful", "sentiment"], "twin": ["hateful", "sentiment"], "weak": ["hateful"]}
    long = compare_variants(runs, SPECS, ["hateful", "sentiment"], tasks, n_boot=400)
    auroc = long[(long["task"] == "hateful") & (long["metric"] == "auroc")].set_index("variant")
    best = auroc.loc["strong", "best"]
    assert best in {"strong", "twin"}
    assert bool(auroc.loc["weak", "significant"]) and auroc.loc["weak", "p_holm"] < 0.05
    other = "twin" if best == "strong" else "strong"
    assert not bool(auroc.loc[other, "significant"])  # same skill, other seeds: no difference
    assert (auroc["ci_low"] <= auroc["mean"]).all() and (auroc["mean"] <= auroc["ci_high"]).all()
    mean = long[long["task"] == "mean"]
    assert set(mean["variant"]) == {"strong", "twin"}  # weak lacks a task: its mean is another quantity
    wide = wide_table(long, "macro_f1")
    assert list(wide.columns) == ["task", "strong", "twin", "weak"] and "±" in wide.iloc[0]["strong"]
