"""Ablation statistics on the core (memeops.stats): metrics by name, the seed-and-meme bootstrap against a
slow loop, mechanism claims, gate diagnostics, the robustness verdict and the report writers
(memeops.reporting.ablation)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from memeops.evaluation.ablation import (
    COLLAPSES,
    CONTRADICTED,
    FALLS_BACK,
    NOT_RUN,
    NOT_SIGNIFICANT,
    SUPPORTED,
    check_claims,
    gate_by_class,
    gate_examples,
    gate_report,
    region_attention_mass,
    robustness_frame,
    robustness_report,
    robustness_verdict,
)
from memeops.evaluation.metrics import Predictions, all_metrics
from memeops.models.base import IGNORE_INDEX, MISSING_MULTI, TaskSpec
from memeops.reporting.ablation import CSV_COLUMNS, ablation_metrics_json, value_cell, write_ablation_reports
from memeops.stats import (
    SUMMARY_COLUMNS,
    ArmRun,
    bootstrap_group,
    bootstrap_indices,
    metric_value,
    seed_draws,
    summarise,
)

BINARY = TaskSpec("hateful", "single", ("no", "yes"))
TRI = TaskSpec("sentiment", "single", ("neg", "neu", "pos"))
MULTI = TaskSpec("target", "multi", ("a", "b", "c"))
SPECS = {s.name: s for s in (BINARY, TRI, MULTI)}
METRICS = [
    "mean/macro_f1",
    "hateful/auroc",
    "hateful/accuracy",
    "hateful/macro_f1",
    "sentiment/macro_f1",
    "sentiment/accuracy",
    "target/macro_f1",
    "target/subset_accuracy",
]
N_BOOT = 200


# --------------------------------------------------------------------------- synthetic runs


def make_targets(n: int, seed: int = 0, positives: int | None = None) -> dict[str, np.ndarray]:
    """A binary, a 3-class and a multi-label task with missing labels (IGNORE_INDEX / MISSING_MULTI rows)."""
    rng = np.random.default_rng(seed)
    binary = rng.integers(0, 2, n)
    if positives is not None:  # a rare positive class: some resamples have no positive at all
        binary = np.zeros(n, dtype=np.int64)
        binary[rng.choice(n, positives, replace=False)] = 1
    binary[rng.random(n) < 0.1] = IGNORE_INDEX
    tri = rng.integers(0, 3, n)
    tri[rng.random(n) < 0.15] = IGNORE_INDEX
    multi = (rng.random((n, 3)) < 0.4).astype(np.float64)
    multi[rng.random(n) < 0.2] = MISSING_MULTI
    return {"hateful": binary, "sentiment": tri, "target": multi}


def noisy_probs(targets: Mapping[str, np.ndarray], noise: float, seed: int) -> dict[str, np.ndarray]:
    """Probabilities near the gold labels, worse as ``noise`` grows; binary scores rounded so ties occur."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, y in targets.items():
        spec = SPECS[name]
        if spec.kind == "multi":
            base = np.where(y == MISSING_MULTI, 0.5, y)
            out[name] = np.clip(0.2 + 0.6 * base + noise * rng.normal(size=y.shape), 0, 1)
            continue
        gold = np.where(y == IGNORE_INDEX, rng.integers(0, spec.num_labels, len(y)), y)
        logits = 2.0 * np.eye(spec.num_labels)[gold] + noise * rng.normal(size=(len(y), spec.num_labels))
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        if spec.is_binary:
            p1 = np.round(probs[:, 1], 2)
            probs = np.stack([1 - p1, p1], axis=1)
        out[name] = probs
    return out


def make_run(
    group: str,
    arm: str,
    seed: int,
    targets: Mapping[str, np.ndarray],
    noise: float,
    tasks: Sequence[str] | None = None,
    extras: Mapping[str, np.ndarray] | None = None,
    probs: Mapping[str, np.ndarray] | None = None,
) -> ArmRun:
    tasks = list(tasks or targets)
    probs = probs or noisy_probs(targets, noise, seed=hash((arm, seed)) % 2**31)
    n = len(next(iter(targets.values())))
    preds = Predictions(
        probs={t: probs[t] for t in tasks},
        targets={t: targets[t] for t in tasks},
        meme_ids=[f"m{i}" for i in range(n)],
        extras=dict(extras or {}),
    )
    return ArmRun(group, arm, seed, preds, {"mean/macro_f1": 0.5}, best_epoch=3, seconds=1.0)


@pytest.fixture(scope="module")
def runs() -> list[ArmRun]:
    """Group "g": full (little noise), noisy (much more noise), same (full's predictions), single-task."""
    targets = make_targets(300)
    out = []
    for seed in range(3):
        full = make_run("g", "full", seed, targets, noise=1.0)
        out.append(full)
        out.append(make_run("g", "noisy", seed, targets, noise=4.0))
        out.append(make_run("g", "same", seed, targets, noise=0, probs=full.predictions.probs))
        out.append(make_run("g", "hateful_only", seed, targets, noise=1.0, tasks=["hateful"]))
    return out


@pytest.fixture(scope="module")
def summary(runs: list[ArmRun]) -> pd.DataFrame:
    return summarise(runs, SPECS, METRICS, reference="full", n_boot=N_BOOT, seed=1)


def row(summary: pd.DataFrame, arm: str, metric: str) -> pd.Series:
    return summary[(summary["arm"] == arm) & (summary["metric"] == metric)].iloc[0]


# --------------------------------------------------------------------------- metrics


def test_metric_value_equals_all_metrics(runs: list[ArmRun]) -> None:
    for run in runs[:4]:
        expected = all_metrics(run.predictions, list(SPECS.values()))
        for name in METRICS:
            got = metric_value(name, run.predictions, SPECS)
            if name in expected:
                assert got == pytest.approx(expected[name], abs=1e-12), name
            else:  # a task this arm does not predict
                assert math.isnan(got), name


def test_unknown_metric_names_raise() -> None:
    preds = Predictions(probs={"sentiment": np.full((2, 3), 1 / 3)}, targets={"sentiment": np.array([0, 1])})
    for bad in ("sentiment/auroc", "nope/macro_f1", "target/accuracy", "macro_f1"):
        with pytest.raises(ValueError):
            metric_value(bad, preds, SPECS)


# --------------------------------------------------------------------------- the bootstrap


def subset(preds: Predictions, idx: np.ndarray) -> Predictions:
    return Predictions(
        {t: p[idx] for t, p in preds.probs.items()}, {t: y[idx] for t, y in preds.targets.items()}
    )


def slow_seed_means(
    arm_runs: Sequence[ArmRun], metric: str, n: int, n_boot: int, seed: int, resample_seeds: bool = False
) -> np.ndarray:
    """The straightforward loop: per resample, all_metrics of every (drawn) seed's resampled
    predictions, averaged over the drawn seeds (each seed once without ``resample_seeds``)."""
    idx_all = np.concatenate(list(bootstrap_indices(n, n_boot, seed)))
    arm_runs = sorted(arm_runs, key=lambda r: r.seed)
    draws = seed_draws(len(arm_runs), n_boot, seed) if resample_seeds else np.ones((n_boot, len(arm_runs)))
    out = []
    for b, idx in enumerate(idx_all):
        drawn = [r for r, times in zip(arm_runs, draws[b], strict=True) for _ in range(int(times))]
        values = [
            all_metrics(subset(r.predictions, idx), list(SPECS.values())).get(metric, math.nan) for r in drawn
        ]
        out.append(np.mean(values))
    return np.array(out)


@pytest.mark.parametrize("resample_seeds", [False, True])
def test_vectorised_bootstrap_equals_slow_loop(resample_seeds: bool) -> None:
    n, n_boot, seed = 25, 40, 3
    targets = make_targets(n, seed=5, positives=3)  # rare positives: some AUROC resamples are undefined
    runs = [
        make_run("g", arm, s, targets, noise=noise)
        for s in range(3)
        for arm, noise in (("full", 1.0), ("other", 2.5))
    ]
    boot = bootstrap_group(runs, SPECS, METRICS, n_boot=n_boot, seed=seed, resample_seeds=resample_seeds)
    n_undefined = 0
    for arm in ("full", "other"):
        arm_runs = [r for r in runs if r.arm == arm]
        for metric in METRICS:
            slow = slow_seed_means(arm_runs, metric, n, n_boot, seed, resample_seeds)
            np.testing.assert_allclose(
                boot.resampled[(arm, metric)], slow, rtol=0, atol=1e-12, equal_nan=True
            )
            n_undefined += int(np.isnan(slow).sum())
    assert n_undefined > 0  # the skip-and-count path was exercised

    # the summary's CI and p come from exactly these resamples
    frame = summarise(runs, SPECS, ["hateful/auroc"], n_boot=n_boot, seed=seed, resample_seeds=resample_seeds)
    rec = frame[frame["arm"] == "other"].iloc[0]
    a = slow_seed_means([r for r in runs if r.arm == "other"], "hateful/auroc", n, n_boot, seed, resample_seeds)
    b = slow_seed_means([r for r in runs if r.arm == "full"], "hateful/auroc", n, n_boot, seed, resample_seeds)
    deltas = (a - b)[~np.isnan(a - b)]
    n_valid = len(deltas)
    expected_p = min(
        1.0, 2 * min((1 + (deltas <= 0).sum()) / (1 + n_valid), (1 + (deltas >= 0).sum()) / (1 + n_valid))
    )
    assert n_valid < n_boot
    assert rec["p_value"] == pytest.approx(expected_p)
    lo, hi = np.percentile(a[~np.isnan(a)], [2.5, 97.5])
    assert (rec["ci_low"], rec["ci_high"]) == pytest.approx((lo, hi))
    assert (rec["delta_ci_low"], rec["delta_ci_high"]) == pytest.approx(
        tuple(np.percentile(deltas, [2.5, 97.5]))
    )


def test_summary_columns_and_seed_statistics(runs: list[ArmRun], summary: pd.DataFrame) -> None:
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    assert list(dict.fromkeys(summary["arm"])) == ["full", "noisy", "same", "hateful_only"]
    assert len(summary) == 4 * len(METRICS)
    per_seed = [metric_value("sentiment/macro_f1", r.predictions, SPECS) for r in runs if r.arm == "noisy"]
    rec = row(summary, "noisy", "sentiment/macro_f1")
    assert rec["n_seeds"] == 3
    assert rec["mean"] == pytest.approx(np.mean(per_seed))
    assert rec["std"] == pytest.approx(np.std(per_seed, ddof=1))
    assert rec["ci_low"] < rec["mean"] < rec["ci_high"]
    ref = row(summary, "full", "sentiment/macro_f1")
    assert math.isnan(ref["delta"]) and math.isnan(ref["p_value"]) and not ref["significant"]


def test_one_seed_has_zero_std(runs: list[ArmRun]) -> None:
    one = [r for r in runs if r.seed == 0 and r.arm in ("full", "noisy")]
    frame = summarise(one, SPECS, ["hateful/auroc"], n_boot=50)
    assert (frame["std"] == 0).all() and (frame["n_seeds"] == 1).all()


def test_clearly_worse_arm_is_significant(summary: pd.DataFrame) -> None:
    rec = row(summary, "noisy", "mean/macro_f1")
    assert rec["delta"] < 0 and rec["delta_ci_high"] < 0
    # every resampled delta is negative: the two-sided p is 2 / (1 + n_boot), the smallest possible
    assert rec["p_value"] == pytest.approx(2 / (1 + N_BOOT))
    assert rec["significant"]


def test_identical_arms_are_not_significant(summary: pd.DataFrame) -> None:
    for metric in METRICS:
        rec = row(summary, "same", metric)
        assert rec["delta"] == 0 and rec["p_value"] == 1.0 and not rec["significant"], metric


def test_summary_p_values_are_holm_adjusted(summary: pd.DataFrame) -> None:
    for metric in METRICS:
        sub = summary[(summary["metric"] == metric) & (summary["arm"] != "full")].dropna(subset=["p_value"])
        assert (sub["p_holm"] >= sub["p_value"] - 1e-15).all()
        ranked = sub.sort_values("p_value")
        assert ranked["p_holm"].is_monotonic_increasing


def test_arm_lacking_a_task_gives_nan(summary: pd.DataFrame, runs: list[ArmRun]) -> None:
    for metric in ("sentiment/macro_f1", "target/macro_f1", "target/subset_accuracy"):
        rec = row(summary, "hateful_only", metric)
        assert math.isnan(rec["mean"]) and math.isnan(rec["p_value"]) and not rec["significant"]
    rec = row(summary, "hateful_only", "hateful/auroc")
    assert not math.isnan(rec["mean"])
    # its mean macro-F1 averages over the one task it has
    own = [metric_value("hateful/macro_f1", r.predictions, SPECS) for r in runs if r.arm == "hateful_only"]
    assert row(summary, "hateful_only", "mean/macro_f1")["mean"] == pytest.approx(np.mean(own))


def test_missing_reference_raises(runs: list[ArmRun]) -> None:
    with pytest.raises(ValueError, match="group 'g' has no reference arm 'baseline'"):
        summarise(runs, SPECS, ["hateful/auroc"], reference="baseline", n_boot=10)


def test_group_runs_must_cover_the_same_memes(runs: list[ArmRun]) -> None:
    other = make_run("g", "shifted", 0, make_targets(300), noise=1.0)
    other.predictions.meme_ids.reverse()
    with pytest.raises(ValueError, match="same memes"):
        summarise([*runs[:4], other], SPECS, ["hateful/auroc"], n_boot=10)


def test_bootstrap_is_fast_enough() -> None:
    """One arm x 3 seeds x 3 tasks x 300 memes x 1000 resamples is a small fraction of a second."""
    import time

    targets = make_targets(300)
    arm_runs = [make_run("g", "full", s, targets, noise=1.0) for s in range(3)]
    start = time.perf_counter()
    bootstrap_group(arm_runs, SPECS, METRICS, n_boot=1000, seed=0)
    assert time.perf_counter() - start < 5.0


# --------------------------------------------------------------------------- claims


def test_check_claims_verdicts(runs: list[ArmRun], summary: pd.DataFrame) -> None:
    claims = [
        {
            "claim": "denoising helps",
            "group": "g",
            "better": "full",
            "worse": "noisy",
            "metric": "mean/macro_f1",
        },
        {"claim": "noise helps", "group": "g", "better": "noisy", "worse": "full", "metric": "mean/macro_f1"},
        {"claim": "copy differs", "group": "g", "better": "same", "worse": "full", "metric": "hateful/auroc"},
        {"claim": "missing arm", "group": "g", "better": "nope", "worse": "full", "metric": "hateful/auroc"},
        {
            "claim": "missing group",
            "group": "h",
            "better": "full",
            "worse": "noisy",
            "metric": "hateful/auroc",
        },
        {
            "claim": "no task",
            "group": "g",
            "better": "hateful_only",
            "worse": "full",
            "metric": "target/macro_f1",
        },
    ]
    out = check_claims(runs, SPECS, claims, n_boot=N_BOOT, seed=1)
    assert [c["verdict"] for c in out] == [
        SUPPORTED,
        CONTRADICTED,
        NOT_SIGNIFICANT,
        NOT_RUN,
        NOT_RUN,
        NOT_RUN,
    ]
    assert "nope" in out[3]["reason"] and "'h'" in out[4]["reason"] and "undefined" in out[5]["reason"]
    # same resamples as the summary: the raw p of noisy vs full agrees
    assert out[1]["p_value"] == pytest.approx(row(summary, "noisy", "mean/macro_f1")["p_value"])
    assert out[0]["delta"] == pytest.approx(-row(summary, "noisy", "mean/macro_f1")["delta"])
    assert out[0]["better_mean"] == pytest.approx(row(summary, "full", "mean/macro_f1")["mean"])
    assert out[2]["p_value"] == 1.0


# --------------------------------------------------------------------------- GatedCLIP gate


def gate_runs() -> list[ArmRun]:
    targets = {
        "hateful": np.array([0, 1, 1, 0, IGNORE_INDEX, 1]),
        "target": np.array(
            [[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 1, 0], [MISSING_MULTI] * 3, [0, 0, 0]], float
        ),
    }
    gates = [np.array([0.2, 0.8, 0.6, 0.4, 0.9, 1.0]), np.array([0.4, 0.6, 0.8, 0.2, 0.1, 0.8])]
    return [
        make_run("gatedclip", "full", s, targets, noise=1.0, extras={"gate": g}) for s, g in enumerate(gates)
    ]


def test_gate_by_class_by_hand() -> None:
    # seed-mean gate: [0.3, 0.7, 0.7, 0.3, 0.5, 0.9]; meme 4 is unlabelled
    frame = gate_by_class(gate_runs(), SPECS, ["hateful", "target"]).set_index(["task", "label"])
    no, yes = frame.loc[("hateful", "no")], frame.loc[("hateful", "yes")]
    assert no["n"] == 2 and no["mean"] == pytest.approx(0.3) and no["std"] == pytest.approx(0.0)
    assert yes["n"] == 3 and yes["mean"] == pytest.approx(2.3 / 3)
    assert yes["std"] == pytest.approx(np.sqrt(((0.7 - 2.3 / 3) ** 2 * 2 + (0.9 - 2.3 / 3) ** 2) / 2))
    assert (yes["q25"], yes["median"], yes["q75"]) == pytest.approx((0.7, 0.7, 0.8))
    # multi-label: a meme counts under every label it has
    assert frame.loc[("target", "a")]["n"] == 2 and frame.loc[("target", "a")]["mean"] == pytest.approx(0.5)
    assert frame.loc[("target", "b")]["mean"] == pytest.approx(0.5)
    c = frame.loc[("target", "c")]
    assert c["n"] == 0 and math.isnan(c["mean"])


def meme_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "meme_id": [f"m{i}" for i in range(6)],
            "text": ["cap | zero", "one", "two", "three", "four", "five"],
            "language": ["en", "en", "de", "en", "es", "en"],
            "image_path": [f"img/m{i}.png" for i in range(6)],
            "label_hateful": ["no", "yes", "yes", "no", None, "yes"],
            "label_target": [["a"], ["a", "b"], [], ["b"], None, []],
        }
    )


def test_gate_examples_picks_extremes() -> None:
    ex = gate_examples(gate_runs(), meme_table(), k=2)
    image, text = ex[ex["leaning"] == "image"], ex[ex["leaning"] == "text"]
    assert list(image["meme_id"]) == ["m5", "m1"] and image["gate"].tolist() == pytest.approx([0.9, 0.7])
    assert set(text["meme_id"]) == {"m0", "m3"} and text["gate"].tolist() == pytest.approx([0.3, 0.3])
    assert {"text", "language", "image_path", "label_hateful", "label_target"} <= set(ex.columns)
    assert ex.set_index("meme_id").loc["m1", "label_target"] == "a, b"
    # more examples asked than memes: no meme is listed twice
    assert not gate_examples(gate_runs(), meme_table(), k=10)["meme_id"].duplicated().any()


def test_gate_requires_one_arm() -> None:
    runs = gate_runs()
    other = make_run("gatedclip", "other", 0, runs[0].predictions.targets, 1.0, extras={"gate": np.zeros(6)})
    with pytest.raises(ValueError, match="one arm"):
        gate_by_class([*runs, other], SPECS, ["hateful"])
    with pytest.raises(ValueError, match="gate"):
        gate_by_class([make_run("g", "x", 0, runs[0].predictions.targets, 1.0)], SPECS, ["hateful"])


# --------------------------------------------------------------------------- MGMCF robustness


LEVELS = [("full", "detector"), ("degraded_1", "degraded 1"), ("degraded_2", "degraded 2")]


def robustness_runs(collapse: bool) -> list[ArmRun]:
    targets = make_targets(300, seed=7)
    out = []
    for seed in range(3):
        att = np.random.default_rng(seed).dirichlet(np.ones(8), size=300)  # 3 text, image, 4 regions
        fallback = make_run(
            "mgmcf", "no_object_level", seed, targets, noise=2.0, extras={"attention": att[:, :4]}
        )
        out += [
            make_run("mgmcf", "full", seed, targets, noise=1.0, extras={"attention": att}),
            make_run("mgmcf", "degraded_1", seed, targets, noise=1.5, extras={"attention": att}),
            make_run(
                "mgmcf",
                "degraded_2",
                seed,
                targets,
                noise=6.0 if collapse else 0.0,
                extras={"attention": att},
                probs=None if collapse else fallback.predictions.probs,
            ),
            fallback,
        ]
    return out


@pytest.mark.parametrize("collapse", [False, True])
def test_robustness_verdict_both_ways(collapse: bool) -> None:
    runs = robustness_runs(collapse)
    verdict = robustness_verdict(runs, SPECS, LEVELS, "no_object_level", "mean/macro_f1", n_boot=N_BOOT)
    assert verdict["verdict"] == (COLLAPSES if collapse else FALLS_BACK)
    assert verdict["degraded_arm"] == "degraded_2"
    assert (verdict["delta"] < 0) if collapse else verdict["delta"] == 0
    assert f"{verdict['degraded_mean']:.3f}" in verdict["text"] and verdict["verdict"] in verdict["text"]


def test_robustness_not_run_and_frame() -> None:
    runs = [r for r in robustness_runs(False) if r.arm not in ("degraded_1", "degraded_2", "full")]
    verdict = robustness_verdict(runs, SPECS, LEVELS, "no_object_level", "mean/macro_f1", n_boot=20)
    assert verdict["verdict"] == NOT_RUN

    runs = robustness_runs(True)
    mass = region_attention_mass(runs, slice(4, 8))
    att = np.stack([r.predictions.extras["attention"] for r in runs if r.arm == "full"])
    assert mass["full"] == pytest.approx(att[:, :, 4:8].sum(axis=2).mean())
    assert "no_object_level" not in mass  # no region slots: left out, not 0
    summary = summarise(runs, SPECS, ["mean/macro_f1"], n_boot=50)
    frame = robustness_frame(
        summary, [*LEVELS, ("degraded_3", "degraded 3")], "no_object_level", "mean/macro_f1", attention=mass
    )
    assert frame["arm"].tolist() == ["full", "degraded_1", "degraded_2", "degraded_3"]
    assert frame["level"].tolist()[0] == "detector" and math.isnan(frame["mean"].iloc[3])
    assert frame["mean"].iloc[0] == pytest.approx(row(summary, "full", "mean/macro_f1")["mean"])
    assert frame["region_attention"].iloc[0] == pytest.approx(mass["full"])
    assert frame.attrs["fallback"]["mean"] == pytest.approx(
        row(summary, "no_object_level", "mean/macro_f1")["mean"]
    )


# --------------------------------------------------------------------------- writers


def assert_png(path: Path) -> None:
    with Image.open(path) as img:
        pixels = np.asarray(img.convert("L"), dtype=np.float64)
    assert pixels.size > 1000 and pixels.std() > 1.0, path  # not a blank canvas


def test_writers(tmp_path: Path, runs: list[ArmRun], summary: pd.DataFrame) -> None:
    claims = check_claims(
        runs,
        SPECS,
        [
            {
                "claim": "denoising helps",
                "group": "g",
                "better": "full",
                "worse": "noisy",
                "metric": "mean/macro_f1",
            },
            {
                "claim": "missing arm",
                "group": "g",
                "better": "nope",
                "worse": "full",
                "metric": "hateful/auroc",
            },
        ],
        n_boot=N_BOOT,
        seed=1,
    )
    image_root = tmp_path / "images"
    (image_root / "img").mkdir(parents=True)
    Image.new("RGB", (64, 48), (200, 30, 30)).save(image_root / "img" / "m5.png")  # the others are missing
    gate = gate_report(gate_runs(), SPECS, ["hateful", "target"], meme_table(), image_root, k=2)
    rob_runs = robustness_runs(True)
    rob_summary = summarise(rob_runs, SPECS, ["mean/macro_f1"], n_boot=50)
    rob = robustness_report(
        rob_runs,
        SPECS,
        rob_summary,
        LEVELS,
        "no_object_level",
        "mean/macro_f1",
        "mgmcf",
        region_slots=(4, 8),
        n_boot=50,
    )
    out = tmp_path / "reports"
    written = write_ablation_reports(
        summary,
        claims,
        out,
        gate=gate,
        robustness=rob,
        descriptions={"noisy": "more label noise", "g/same": "copy of full"},
    )
    assert all(p.is_file() for p in written)

    csv = pd.read_csv(out / "ablations.csv")
    assert list(csv.columns[: len(CSV_COLUMNS)]) == list(CSV_COLUMNS)
    assert set(METRICS[1:]) <= set(csv.columns) and "mean/macro_f1" not in csv.columns
    assert csv["arm"].tolist() == ["full", "noisy", "same", "hateful_only"]
    head = summary[summary["metric"] == "mean/macro_f1"].reset_index(drop=True)
    np.testing.assert_allclose(csv["mean"], head["mean"])
    np.testing.assert_allclose(csv["hateful/auroc"], summary[summary["metric"] == "hateful/auroc"]["mean"])
    assert csv.set_index("arm").loc["same", "description"] == "copy of full"

    md = (out / "ablations.md").read_text(encoding="utf-8")
    for _, rec in summary.iterrows():
        if not math.isnan(rec["mean"]):
            assert value_cell(rec) in md, (rec["arm"], rec["metric"])
    noisy = row(summary, "noisy", "mean/macro_f1")
    assert f"**{noisy['delta']:+.3f}" in md  # significant deltas are bold
    assert "`hateful_only` has no value for sentiment/macro_f1" in md
    assert "## Mechanism checks" in md and SUPPORTED in md and "not run in group" in md
    assert "## GatedCLIP gate" in md and "## MGMCF robustness" in md and rob.verdict["verdict"] in md
    assert f"{rob.verdict['degraded_mean']:.3f}" in md
    assert "figures/g_mean_macro_f1.png" in md and "figures/gatedclip_gate_examples.png" in md
    assert "cap / zero" in md  # a '|' in a caption cannot break a table

    long = pd.read_csv(out / "plots" / "ablate" / "g.csv")
    assert list(long.columns) == ["arm", "metric", "mean", "ci_low", "ci_high"] and len(long) == len(summary)
    pngs = [p for p in written if p.suffix == ".png"]
    names = {p.name for p in pngs}
    assert {
        "g_mean_macro_f1.png",
        "gatedclip_gate_by_class.png",
        "gatedclip_gate_examples.png",
        "mgmcf_robustness.png",
    } <= names
    assert all(p.parent == out / "figures" for p in pngs)
    for png in pngs:
        assert_png(png)

    metrics = ablation_metrics_json(summary, claims)
    text = json.dumps(metrics, allow_nan=False)
    assert metrics["g"]["noisy"]["mean/macro_f1"] == pytest.approx(noisy["mean"])
    assert metrics["g"]["hateful_only"]["target/macro_f1"] is None
    assert metrics["claims"]["denoising_helps"]["verdict"] == SUPPORTED
    assert metrics["claims"]["missing_arm"]["p_value"] is None and "NaN" not in text


def test_markdown_tables_have_consistent_columns(tmp_path: Path, summary: pd.DataFrame) -> None:
    """The report's table parser splits rows on every '|': each table's rows must have the same count."""
    gate = gate_report(gate_runs(), SPECS, ["hateful", "target"], meme_table(), None, k=2)
    write_ablation_reports(summary, [], tmp_path, gate=gate)
    block: list[int] = []
    for line in (tmp_path / "ablations.md").read_text(encoding="utf-8").splitlines() + [""]:
        if line.startswith("|"):
            block.append(len(re.findall(r"\|", line)))
        elif block:
            assert len(set(block)) == 1, block
            block = []


def test_per_group_references(runs: list[ArmRun]) -> None:
    """``references`` picks each group's reference (200 resamples: Holm over 3 arms can reach 3 * 2/201)."""
    other = [
        ArmRun("h", r.arm, r.seed, r.predictions, r.val_metrics, r.best_epoch, r.seconds) for r in runs[:8]
    ]
    frame = summarise([*runs[:8], *other], SPECS, ["hateful/auroc"], n_boot=200, references={"h": "noisy"})
    assert math.isnan(frame[(frame["group"] == "g") & (frame["arm"] == "full")]["delta"].iloc[0])
    h_full = frame[(frame["group"] == "h") & (frame["arm"] == "full")].iloc[0]
    assert h_full["delta"] > 0 and h_full["significant"]
    with pytest.raises(ValueError, match="group 'h' has no reference arm 'nope'"):
        summarise(other, SPECS, ["hateful/auroc"], n_boot=10, references={"h": "nope"})


def test_writer_draws_the_diagnostics_figures(tmp_path: Path, summary: pd.DataFrame) -> None:
    """The diagnostics compute; the writer draws their figures into ``figures_dir`` and links them."""
    figs = tmp_path / "figures" / "ablate"
    gate = gate_report(gate_runs(), SPECS, ["hateful"], meme_table(), tmp_path, 2)
    rob_runs = robustness_runs(False)
    rob_summary = summarise(rob_runs, SPECS, ["mean/macro_f1"], n_boot=30)
    rob = robustness_report(rob_runs, SPECS, rob_summary, LEVELS, "no_object_level", "mean/macro_f1", n_boot=30)
    assert rob.verdict["verdict"] == FALLS_BACK
    written = write_ablation_reports(
        summary, [], tmp_path / "reports", gate=gate, robustness=rob, figures_dir=figs
    )
    names = ("gatedclip_gate_by_class.png", "gatedclip_gate_examples.png", "mgmcf_robustness.png")
    expected = {figs / n for n in names}
    assert expected <= set(written)
    md = (tmp_path / "reports" / "ablations.md").read_text(encoding="utf-8")
    assert (
        "`../figures/ablate/mgmcf_robustness.png`" in md and "`../figures/ablate/g_hateful_auroc.png`" in md
    )
    for png in figs.glob("*.png"):
        assert_png(png)
