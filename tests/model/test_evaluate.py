"""Stage ``evaluate`` (memeops.evaluation.evaluate, memeops.evaluation.calibration, stages/evaluate.py):
ECE on hand-computed cases, the vectorised metrics against sklearn, and the evaluation of registered
fake versions (prediction artifacts in the per-session temp MLflow store of conftest)."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from memeops.evaluation.calibration import (
    binary_confidence,
    ece_from_confidence,
    expected_calibration_error,
    reliability_bins,
)
from memeops.evaluation.evaluate import (
    EvaluateConfig,
    EvaluationError,
    bootstrap_task_cis,
    evaluate_variants,
    fast_task_metrics,
    headline_metrics,
    primary_metric,
)
from memeops.evaluation.leakage_subset import EvalSplit, evaluation_splits
from memeops.evaluation.metrics import Predictions, fast_binary_auroc, task_metrics
from memeops.models.base import IGNORE_INDEX, TaskSpec
from memeops.reporting.evaluation import LEAKAGE_NOTE, markdown_report, plot_reliability
from memeops.tracking.promotion import log_eval_predictions
from memeops.tracking.registry import registered_model_name
from memeops.tracking.runs import tracked_run

REPO = Path(__file__).resolve().parents[2]
HATEFUL = TaskSpec("hateful", "single", ("no", "yes"))
SENTIMENT = TaskSpec("sentiment", "single", ("neg", "neu", "pos"))
MULTI = TaskSpec("protected_category", "multi", ("a", "b", "c"))
CFG = EvaluateConfig(n_boot=60, seed=3, min_group_size=20)


@pytest.fixture(autouse=True)
def _quiet_artifact_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


# --------------------------------------------------------------------------- ECE


def test_ece_is_zero_when_every_bin_is_calibrated() -> None:
    # bin (0.73, 0.8]: confidence 0.75, 3 of 4 right; bin (0.93, 1]: confidence 1.0, 2 of 2 right
    probs = np.array([[0.25, 0.75]] * 4 + [[0.0, 1.0]] * 2)
    targets = np.array([1, 1, 1, 0, 1, 1])
    assert expected_calibration_error(probs, targets) == 0.0
    assert expected_calibration_error(np.array([[0.5, 0.5]] * 2), np.array([0, 1])) == 0.0  # tie -> label 0


def test_ece_of_a_known_miscalibrated_model() -> None:
    # 4 rows at confidence 0.9, 1 right: |0.25 - 0.9| = 0.65, weight 4/8
    # 4 rows at confidence 0.7 (three classes), all right: |1 - 0.7| = 0.3, weight 4/8
    probs = np.array([[0.05, 0.9, 0.05]] * 4 + [[0.7, 0.2, 0.1]] * 4)
    targets = np.array([1, 0, 0, 2, 0, 0, 0, 0])
    assert expected_calibration_error(probs, targets) == pytest.approx(0.5 * 0.65 + 0.5 * 0.3, abs=1e-12)
    # always 100% confident, half right: ECE 0.5; bins matter: 1 bin pools over- and under-confidence
    assert expected_calibration_error(np.array([[0.0, 1.0]] * 4), np.array([1, 0, 1, 0])) == pytest.approx(
        0.5
    )
    p = np.array([[0.4, 0.6]] * 2 + [[0.1, 0.9]] * 2)  # 0.6 all right (+0.4), 0.9 none right (-0.9)
    y = np.array([1, 1, 0, 0])
    assert expected_calibration_error(p, y, n_bins=15) == pytest.approx(0.5 * 0.4 + 0.5 * 0.9)
    assert expected_calibration_error(p, y, n_bins=1) == pytest.approx(abs(0.5 - 0.75))


def test_reliability_bins_are_right_closed_and_match_a_naive_loop() -> None:
    bins = reliability_bins(np.array([0.0, 1 / 3, 0.34, 1.0]), np.array([1, 1, 0, 1]), n_bins=3)
    assert bins.count.tolist() == [2, 1, 1]  # 0 and exactly 1/3 in the first bin, 1.0 in the last
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 4)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = rng.integers(0, 4, 500)
    conf, ok = probs.max(1), probs.argmax(1) == y
    naive = 0.0
    for m in range(15):
        lo, hi = m / 15, (m + 1) / 15
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            naive += sel.mean() * abs(ok[sel].mean() - conf[sel].mean())
    assert expected_calibration_error(probs, y) == pytest.approx(naive, abs=1e-12)
    assert math.isnan(expected_calibration_error(np.empty((0, 2)), np.empty(0)))
    with pytest.raises(ValueError):
        expected_calibration_error(probs, y[:10])
    # multi-label: every (meme, label) a binary prediction
    conf_m, ok_m = binary_confidence(np.array([[0.8, 0.3]]), np.array([[1.0, 1.0]]))
    assert conf_m.tolist() == [0.8, 0.7] and ok_m.tolist() == [True, False]
    assert ece_from_confidence(conf_m, ok_m) == pytest.approx(0.5 * 0.2 + 0.5 * 0.7)


# --------------------------------------------------------------------------- vectorised metrics


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("spec", [HATEFUL, SENTIMENT, MULTI], ids=lambda s: s.name)
def test_fast_metrics_equal_sklearn(spec: TaskSpec) -> None:
    rng = np.random.default_rng(1)
    for n in (7, 120):
        if spec.kind == "multi":
            probs = rng.random((n, 3)).round(1)
            y = (rng.random((n, 3)) < 0.4).astype(float)
        else:
            probs = _softmax(rng.normal(size=(n, spec.num_labels))).round(1)  # rounding makes score ties
            probs = probs / probs.sum(axis=1, keepdims=True)
            y = rng.integers(0, spec.num_labels, n)
            if n == 7:
                y = np.zeros(n, dtype=int)  # one class present: AUROC NaN, macro over present classes
        expected = task_metrics(probs, y, spec)
        got = fast_task_metrics(spec, probs, y)
        assert set(got) == set(expected)
        for key, value in expected.items():
            assert (math.isnan(value) and math.isnan(got[key])) or got[key] == pytest.approx(
                value, abs=1e-12
            ), key


def naive_percentile_bootstrap(metric, probs: np.ndarray, y: np.ndarray, n_boot: int, seed: int) -> list[float]:
    """The textbook loop (one resample of n rows with replacement at a time, NaN resamples skipped):
    the reference the vectorised core must equal."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), size=len(y))
        values.append(metric(probs[idx], y[idx]))
    values = np.asarray(values)
    values = values[~np.isnan(values)]
    return list(np.percentile(values, [2.5, 97.5]))


def test_bootstrap_intervals_equal_the_naive_loop() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 150)
    probs = _softmax(np.eye(2)[y] + rng.normal(size=(150, 2)))
    cis = bootstrap_task_cis(HATEFUL, probs, y, n_boot=300, seed=5, n_bins=15)
    assert set(cis) == {
        "accuracy",
        "macro_f1",
        "weighted_f1",
        "weighted_precision",
        "weighted_recall",
        "auroc",
        "ece",
    }
    expected = naive_percentile_bootstrap(lambda p, t: fast_binary_auroc(p[:, 1], t), probs, y, 300, 5)
    assert cis["auroc"] == pytest.approx(list(expected), abs=1e-6)
    ece_expected = naive_percentile_bootstrap(expected_calibration_error, probs, y, 300, 5)
    assert cis["ece"] == pytest.approx(list(ece_expected), abs=1e-6)
    low, high = cis["accuracy"]
    assert low <= task_metrics(probs, y, HATEFUL)["accuracy"] <= high
    assert primary_metric(HATEFUL) == "auroc" and primary_metric(SENTIMENT) == "macro_f1"


def test_primary_metric_rule_is_the_training_one() -> None:
    from memeops.training.experiment import primary_metric as training_rule

    for spec in (HATEFUL, SENTIMENT, MULTI):
        assert primary_metric(spec) == training_rule(spec)


# --------------------------------------------------------------------------- registered fake versions

N = 120
IDS = [f"synthmeme:t{i:04d}" for i in range(N)]
UNSEEN = [f"synthmeme:u{i:04d}" for i in range(60)]


def _memes() -> pd.DataFrame:
    """A meme table: N test memes (en / zh, three styles; a 'web' source without a style whose 8
    memes make a small group) and 60 test_unseen memes."""
    rows = []
    for i, mid in enumerate(IDS):
        web = i >= N - 8
        rows.append({"meme_id": mid, "split": "test", "source": "web" if web else "synthmeme",
                     "language": "zh" if i % 3 == 0 else "en",
                     "extra": json.dumps({} if web else {"style": ["gradient", "texture", "photo_noise"][i % 3]})})  # fmt: skip
    rows += [{"meme_id": mid, "split": "test_unseen", "source": "synthmeme", "language": "en",
              "extra": json.dumps({"style": "texture"})} for mid in UNSEEN]  # fmt: skip
    rows.append(
        {"meme_id": "synthmeme:v0000", "split": "val", "source": "synthmeme", "language": "en", "extra": None}
    )
    return pd.DataFrame(rows)


def _predictions(ids: list[str], skill: float, seed: int) -> Predictions:
    rng = np.random.default_rng(seed)
    n = len(ids)
    y_h = rng.integers(0, 2, n)
    y_s = np.where(rng.random(n) < 0.2, IGNORE_INDEX, rng.integers(0, 3, n))
    return Predictions(
        probs={"hateful": _softmax(np.eye(2)[y_h] * skill + rng.normal(size=(n, 2))),
               "sentiment": _softmax(np.eye(3)[np.clip(y_s, 0, 2)] * skill + rng.normal(size=(n, 3)))},
        targets={"hateful": y_h, "sentiment": y_s}, meme_ids=list(ids),
    )  # fmt: skip


def _register(variant: str, splits: dict[str, list[str]], *, skill: float = 1.5, alias: str | None = "challenger",
              digest: str = "digest-now") -> str:  # fmt: skip
    name = registered_model_name(variant)
    with tracked_run(experiment="test-evaluate", run_name=variant, stage=f"train@{variant}", variant=variant, seed=0,
                     data_digest=digest, params={"v": variant}, system_metrics=False) as run:  # fmt: skip
        for i, (split, ids) in enumerate(splits.items()):
            log_eval_predictions(split, ids, _predictions(ids, skill, seed=i), [HATEFUL, SENTIMENT])
        mlflow.log_text("stand-in model", "model/model.txt")
    client = mlflow.MlflowClient()
    try:
        client.create_registered_model(name)
    except mlflow.exceptions.MlflowException:
        pass
    version = str(
        client.create_model_version(
            name, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
        ).version
    )
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return version


def _variant() -> str:
    return f"ev-{uuid.uuid4().hex[:8]}"


def test_challenger_and_champion_are_evaluated_with_breakdowns_and_notes() -> None:
    variant = _variant()
    v_champ = _register(variant, {"test": IDS, "test_unseen": UNSEEN}, skill=1.0, alias="champion")
    v_chal = _register(variant, {"test": IDS}, skill=2.0)  # logged no test_unseen predictions
    report, curves = evaluate_variants([variant, "never-trained"], _memes(), CFG, data_digest="digest-now")

    vb = report["variants"][variant]
    assert vb["registered_model"] == f"memeops-{variant}"
    chal, champ = vb["versions"]["challenger"], vb["versions"]["champion"]
    assert (chal["version"], champ["version"]) == (v_chal, v_champ)
    assert chal["aliases"] == ["challenger"] and chal["run_id"]
    test = chal["splits"]["test"]
    assert test["status"] == "ok" and test["n_memes"] == N
    assert set(test) >= {"overall", "summary", "by_source", "by_language", "by_style", "ece", "notes"}
    hateful = test["overall"]["hateful"]
    assert set(hateful) >= {"accuracy", "macro_f1", "weighted_f1", "weighted_precision", "weighted_recall", "auroc",
                            "ece", "n", "primary", "ci95"}  # fmt: skip
    assert hateful["primary"] == "auroc" and hateful["n"] == N
    assert set(hateful["ci95"]) == {"accuracy", "macro_f1", "weighted_f1", "weighted_precision", "weighted_recall",
                                    "auroc", "ece"}  # fmt: skip
    low, high = hateful["ci95"]["auroc"]
    assert low <= hateful["auroc"] <= high
    sentiment = test["overall"]["sentiment"]
    assert "auroc" not in sentiment and sentiment["primary"] == "macro_f1" and 0 < sentiment["n"] < N
    # the same numbers as the metrics module on the same predictions
    preds = _predictions(IDS, 2.0, seed=0)
    assert hateful["macro_f1"] == pytest.approx(
        task_metrics(preds.probs["hateful"], preds.targets["hateful"], HATEFUL)["macro_f1"], abs=1e-6
    )
    summary = test["summary"]
    assert summary["mean_primary"] == pytest.approx((hateful["auroc"] + sentiment["macro_f1"]) / 2, abs=1e-5)
    assert summary["mean_primary_ci95"][0] <= summary["mean_primary"] <= summary["mean_primary_ci95"][1]
    assert 0 <= test["ece"]["pooled"] <= 1 and set(test["ece"]["per_task"]) == {"hateful", "sentiment"}
    assert sum(test["ece"]["bins"]["count"]) == hateful["n"] + sentiment["n"]

    # breakdowns: the 8 'web' memes are a small group (n, no metrics); they have no style
    web = test["by_source"]["web"]
    assert web["n_memes"] == 8 and web["small"] is True
    assert web["tasks"]["hateful"] == {"n": 8, "small": True, "primary": "auroc"}
    synth = test["by_source"]["synthmeme"]["tasks"]["hateful"]
    assert synth["small"] is False and synth["n"] == N - 8 and set(synth["ci95"]) == {"auroc"}
    assert set(test["by_language"]) == {"en", "zh"}
    assert sum(g["n_memes"] for g in test["by_language"].values()) == N
    assert set(test["by_style"]) == {"gradient", "texture", "photo_noise"}
    assert sum(g["n_memes"] for g in test["by_style"].values()) == N - 8
    assert any("without a style" in n and "web" in n for n in test["notes"])

    # the challenger logged no test_unseen predictions: a note, not a crash; the champion has both
    assert chal["splits"]["test_unseen"]["status"] == "missing"
    assert "predictions/test_unseen.parquet" in chal["splits"]["test_unseen"]["note"]
    assert (
        champ["splits"]["test_unseen"]["status"] == "ok" and champ["splits"]["test_unseen"]["n_memes"] == 60
    )
    assert not any("cover" in n for n in champ["splits"]["test"]["notes"])  # all test memes of the table

    assert report["variants"]["never-trained"]["versions"]["challenger"]["status"] == "absent"
    assert "no registered model" in report["variants"]["never-trained"]["notes"][0]
    assert set(curves[variant]) == {f"challenger v{v_chal} · test", f"champion v{v_champ} · test",
                                    f"champion v{v_champ} · test_unseen"}  # fmt: skip
    json.dumps(report, allow_nan=False)  # strict JSON: NaN became null

    head = headline_metrics(report)
    assert set(head[variant]) == {"challenger", "champion"} and set(head[variant]["champion"]) == {
        "test",
        "test_unseen",
    }
    assert head[variant]["challenger"]["test"]["mean_primary"] == summary["mean_primary"]
    md = markdown_report(report, {variant: f"figures/evaluate/{variant}_reliability.png"})
    assert f"| {variant} | challenger | v{v_chal} | test | {N} |" in md
    assert "(n=8, small)" in md and "predictions/test_unseen.parquet" in md and "no registered model" in md


def test_champion_absent_and_same_version() -> None:
    alone, shared = _variant(), _variant()
    _register(alone, {"test": IDS})
    v = _register(shared, {"test": IDS, "test_unseen": UNSEEN})
    mlflow.MlflowClient().set_registered_model_alias(registered_model_name(shared), "champion", v)
    report, curves = evaluate_variants([alone, shared], _memes(), CFG)

    a = report["variants"][alone]
    assert a["versions"]["champion"]["status"] == "absent"
    assert any("no champion yet" in n and "only the challenger" in n for n in a["notes"])
    assert a["versions"]["challenger"]["splits"]["test"]["status"] == "ok"

    s = report["variants"][shared]
    assert s["versions"]["challenger"]["aliases"] == ["challenger", "champion"]
    assert s["versions"]["champion"] == {"version": v, "same_as": "challenger"}
    assert any("same version" in n and "evaluated once" in n for n in s["notes"])
    assert len(curves[shared]) == 2  # once per split, not twice
    head = headline_metrics(report)
    assert head[shared]["champion"] == head[shared]["challenger"]
    assert "champion" not in head[alone]


def test_split_mismatch_and_unknown_memes_are_refused() -> None:
    variant = _variant()
    _register(variant, {"test": IDS[:50] + ["synthmeme:v0000"]})  # a val meme among the test predictions
    with pytest.raises(EvaluationError) as info:
        evaluate_variants([variant], _memes(), CFG)
    message = str(info.value)
    assert "\n" not in message and "not in split 'test'" in message and "val (1)" in message
    other = _variant()
    _register(other, {"test": IDS[:10] + ["synthmeme:gone"]})
    with pytest.raises(EvaluationError, match="not in the meme table"):
        evaluate_variants([other], _memes(), CFG)


def test_partial_coverage_is_noted_and_config_is_checked() -> None:
    variant = _variant()
    _register(variant, {"test": IDS[:40]})
    report, _ = evaluate_variants([variant], _memes(), CFG.model_copy(update={"splits": ["test"]}))
    notes = report["variants"][variant]["versions"]["challenger"]["splits"]["test"]["notes"]
    assert any("cover 40 of the 120 test memes" in n for n in notes)
    with pytest.raises(ValueError):
        EvaluateConfig(splits=["train"])
    with pytest.raises(ValueError):
        EvaluateConfig(bogus=1)


FLAGGED = IDS[::10]  # 12 test memes whose image duplicates an earlier-split meme


def _leaky_memes(flagged: list[str] = FLAGGED) -> pd.DataFrame:
    """:func:`_memes` with ``leak_of`` as consolidation's ``auto`` policy leaves it: set on official
    test memes that duplicate an earlier-split meme, null elsewhere."""
    memes = _memes()
    memes["leak_of"] = [("synthmeme:v0000" if mid in flagged else None) for mid in memes["meme_id"]]
    return memes


def test_clean_subset_is_planned_only_for_splits_with_flagged_memes() -> None:
    from memeops.evaluation.evaluate import meme_attributes

    splits = ["test", "test_unseen"]
    plain = [EvalSplit("test", "test"), EvalSplit("test_unseen", "test_unseen")]
    assert evaluation_splits(meme_attributes(_memes()), splits) == plain  # no leak_of column
    assert evaluation_splits(meme_attributes(_leaky_memes([])), splits) == plain  # nothing flagged
    assert evaluation_splits(meme_attributes(_leaky_memes()), splits) == [
        EvalSplit("test", "test"), EvalSplit("test_clean", "test", clean=True), EvalSplit("test_unseen", "test_unseen")]
    assert evaluation_splits(meme_attributes(_leaky_memes(IDS)), splits) == plain  # all flagged: no clean meme


def test_flagged_memes_give_the_official_split_and_its_clean_subset() -> None:
    variant = _variant()
    _register(variant, {"test": IDS, "test_unseen": UNSEEN}, skill=2.0)
    report, curves = evaluate_variants([variant], _leaky_memes(), CFG)
    entry = report["variants"][variant]["versions"]["challenger"]
    assert list(entry["splits"]) == ["test", "test_clean", "test_unseen"]
    official, clean = entry["splits"]["test"], entry["splits"]["test_clean"]
    assert official["n_memes"] == N and official["leakage"] == {"flagged": 12, "clean_split": "test_clean"}
    assert any("12 of the 120 test memes duplicate" in n for n in official["notes"])
    assert clean["n_memes"] == N - 12 and clean["leakage"] == {"subset_of": "test", "flagged_left_out": 12}
    assert any("leakage-clean subset of test: its 108 of 120" in n for n in clean["notes"])
    assert not any("cover" in n for n in clean["notes"])  # every clean test meme is predicted
    # the clean figures are the metrics of the subset computed directly
    preds = _predictions(IDS, 2.0, seed=0)
    keep = np.array([mid not in FLAGGED for mid in IDS])
    direct = task_metrics(preds.probs["hateful"][keep], preds.targets["hateful"][keep], HATEFUL)
    for key, value in direct.items():
        assert clean["overall"]["hateful"][key] == pytest.approx(value, abs=1e-6), key
    assert clean["overall"]["hateful"]["auroc"] != official["overall"]["hateful"]["auroc"]
    assert "leakage" not in entry["splits"]["test_unseen"]  # no flagged meme there: as before
    head = headline_metrics(report)[variant]["challenger"]
    assert set(head) == {"test", "test_clean", "test_unseen"} and head["test_clean"]["n_memes"] == N - 12
    assert any(k.endswith("· test_clean") for k in curves[variant])
    md = markdown_report(report)
    assert f"| {variant} | challenger | v{entry['version']} | test_clean | {N - 12} |" in md and LEAKAGE_NOTE in md


def test_without_flagged_memes_the_report_is_unchanged() -> None:
    variant = _variant()
    _register(variant, {"test": IDS, "test_unseen": UNSEEN})
    before, _ = evaluate_variants([variant], _memes(), CFG)  # a table without leak_of
    after, _ = evaluate_variants([variant], _leaky_memes([]), CFG)  # leak_of present, all null
    assert json.dumps(after, sort_keys=False) == json.dumps(before, sort_keys=False)
    assert LEAKAGE_NOTE not in markdown_report(after)


def test_reliability_png_is_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, 300)
    curves = {"challenger v2 · test": reliability_bins(conf, rng.random(300) < conf, 15),
              "champion v1 · test": reliability_bins(conf, rng.random(300) < conf - 0.2, 15)}  # fmt: skip
    path = plot_reliability(curves, tmp_path / "figs" / "x_reliability.png", "memeops-x")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


# --------------------------------------------------------------------------- the stage module


def test_stage_writes_reports_and_logs_a_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    variant = _variant()
    v = _register(variant, {"test": IDS, "test_unseen": UNSEEN})
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "consolidated").mkdir(parents=True)
    _memes().to_parquet(tmp_path / "data" / "consolidated" / "memes.parquet", index=False)
    (tmp_path / "params.yaml").write_text(
        "data:\n  sources: [{name: synthmeme, format: synthmeme, path: data/synthmeme}]\n"
        "train:\n  experiment: test-evaluate-stage\n  tasks: [hateful, sentiment]\n  variants: {}\n"
        f"evaluate:\n  variants: [{variant}]\n  n_boot: 40\n  seed: 1\n", encoding="utf-8")  # fmt: skip
    import stages.evaluate as stage

    assert stage.main([]) == 0
    out = capsys.readouterr().out
    assert f"v{v}" in out and "mean primary" in out and "2 (version, split) pairs of 1 variants" in out
    report = json.loads((tmp_path / "reports" / "evaluation.json").read_text(encoding="utf-8"))
    assert report["settings"]["n_boot"] == 40 and report["settings"]["variants"] == [variant]
    assert report["variants"][variant]["versions"]["challenger"]["splits"]["test_unseen"]["status"] == "ok"
    assert (tmp_path / "reports" / "evaluation.md").read_text(encoding="utf-8").startswith("# Evaluation")
    assert (tmp_path / "reports" / "figures" / "evaluate" / f"{variant}_reliability.png").is_file()
    headline = json.loads((tmp_path / "reports" / "metrics" / "evaluate.json").read_text(encoding="utf-8"))
    assert set(headline[variant]["challenger"]) == {"test", "test_unseen"}

    runs = mlflow.search_runs(experiment_names=["test-evaluate-stage"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["memeops.dvc_stage"] == "evaluate" and run.data.tags["memeops.data_digest"]
    assert json.loads(run.data.tags["memeops.evaluate.versions"])[variant] == {"challenger": v}
    assert f"{variant}/challenger/test/mean_primary" in run.data.metrics
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/evaluation.json", "evaluation/evaluation.md", "evaluation/evaluate.json",
            "evaluation/figures"} <= artifacts  # fmt: skip


def test_a_version_trained_over_seeds_is_also_summarised_over_its_seeds() -> None:
    """The registered version is one seed's nested run; evaluate finds its sibling seed runs under
    the same parent and reports mean, std over seeds and the seeds-and-memes interval."""
    variant = _variant()
    name = registered_model_name(variant)
    with tracked_run(experiment="test-evaluate", run_name=variant, stage=f"train@{variant}", variant=variant, seed=None,
                     data_digest="digest-now", params={"v": variant}, system_metrics=False):  # fmt: skip
        run_ids = {}
        for seed, skill in ((0, 1.0), (1, 2.0), (2, 3.0)):
            with tracked_run(experiment="test-evaluate", run_name=f"{variant}-seed{seed}", stage=f"train@{variant}",
                             variant=variant, seed=seed, data_digest="digest-now", params={"v": variant},
                             system_metrics=False, nested=True) as run:  # fmt: skip
                log_eval_predictions("test", IDS, _predictions(IDS, skill, seed=seed), [HATEFUL, SENTIMENT])
                mlflow.log_text("stand-in model", "model/model.txt")
                run_ids[seed] = run.info.run_id
    client = mlflow.MlflowClient()
    client.set_tag(run_ids[1], "memeops.selection_rule", "median-val")
    client.create_registered_model(name)
    version = client.create_model_version(name, source=f"runs:/{run_ids[1]}/model", run_id=run_ids[1]).version
    client.set_registered_model_alias(name, "challenger", str(version))

    report, _ = evaluate_variants([variant], _memes(), CFG.model_copy(update={"splits": ["test"]}), data_digest="digest-now")
    entry = report["variants"][variant]["versions"]["challenger"]
    assert entry["selection_rule"] == "median-val"
    seeds = entry["seeds"]["test"]
    assert seeds["status"] == "ok" and seeds["seeds"] == [0, 1, 2]
    auroc = seeds["metrics"]["hateful/auroc"]
    per_seed = [task_metrics(_predictions(IDS, k, seed=s).probs["hateful"], _predictions(IDS, k, seed=s).targets["hateful"],
                             HATEFUL)["auroc"] for s, k in ((0, 1.0), (1, 2.0), (2, 3.0))]  # fmt: skip
    assert auroc["per_seed"] == pytest.approx(per_seed, abs=1e-6) and auroc["n_seeds"] == 3
    assert auroc["mean"] == pytest.approx(np.mean(per_seed), abs=1e-6)
    assert auroc["ci95"][0] <= auroc["mean"] <= auroc["ci95"][1]
    # the registered seed's own numbers stay what its run logged
    assert entry["splits"]["test"]["overall"]["hateful"]["auroc"] == pytest.approx(per_seed[1], abs=1e-6)
    md = markdown_report(report)
    assert "(3 seeds)" in md
    # with flagged test memes, the seeds are summarised on the leakage-clean subset too
    leaky, _ = evaluate_variants([variant], _leaky_memes(), CFG.model_copy(update={"splits": ["test"]}))
    clean = leaky["variants"][variant]["versions"]["challenger"]["seeds"]["test_clean"]
    keep = np.array([mid not in FLAGGED for mid in IDS])
    per_seed_clean = [task_metrics(p.probs["hateful"][keep], p.targets["hateful"][keep], HATEFUL)["auroc"]
                      for p in (_predictions(IDS, k, seed=s) for s, k in ((0, 1.0), (1, 2.0), (2, 3.0)))]  # fmt: skip
    assert clean["status"] == "ok"
    assert clean["metrics"]["hateful/auroc"]["per_seed"] == pytest.approx(per_seed_clean, abs=1e-6)
