"""Guarded promotion (memeops.tracking.promotion, `memeops promote`, flows.promote) against the
per-session temp MLflow store of conftest: model versions registered from tiny runs that carry the
per-meme prediction artifact and the lineage / validation tags."""

from __future__ import annotations

import json
import math
import sys
import threading
import time
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from memeops.evaluation.metrics import Predictions, all_metrics
from memeops.models.base import IGNORE_INDEX, MISSING_MULTI, TaskSpec
from memeops.tracking import promotion as pr
from memeops.tracking.promotion import (
    KEPT,
    PROMOTED,
    REFUSED,
    TAG_DECISION,
    PromotionConfig,
    PromotionError,
    frame_arrays,
    paired_bootstrap,
    predictions_frame,
    primary_value,
    promote_variant,
)
from memeops.tracking.registry import alias_version, registered_model_name
from memeops.tracking.runs import tracked_run
from memeops.training.experiment import split_meme_ids

N = 240
IDS = [f"m{i:04d}" for i in range(N)]
SPECS = [TaskSpec("hateful", "single", ("no", "yes")), TaskSpec("sentiment", "single", ("neg", "neu", "pos")),
         TaskSpec("protected_category", "multi", ("a", "b", "c"))]  # fmt: skip
_rng = np.random.default_rng(7)
Y_HATEFUL = _rng.integers(0, 2, N)
Y_SENT = np.where(_rng.random(N) < 0.25, IGNORE_INDEX, _rng.integers(0, 3, N))  # a quarter unlabelled
Y_MULTI = np.where(_rng.random((N, 1)) < 0.3, MISSING_MULTI, (_rng.random((N, 3)) < 0.4).astype(float))
CFG = PromotionConfig(n_boot=300, seed=1)  # fewer resamples than the default: a fast test


def _predictions(skill: float, seed: int, *, ids: list[str] = IDS) -> Predictions:
    """Probabilities that put ``skill`` logits of weight on the true class, plus unit noise."""
    rng = np.random.default_rng(seed)
    n = len(ids)

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    hate = np.eye(2)[Y_HATEFUL[:n]] * skill + rng.normal(size=(n, 2))
    sent = np.eye(3)[np.clip(Y_SENT[:n], 0, 2)] * skill + rng.normal(size=(n, 3))
    multi = 1 / (1 + np.exp(-((np.clip(Y_MULTI[:n], 0, 1) * 2 - 1) * skill + rng.normal(size=(n, 3)))))
    return Predictions(
        probs={"hateful": softmax(hate), "sentiment": softmax(sent), "protected_category": multi},
        targets={"hateful": Y_HATEFUL[:n].copy(), "sentiment": Y_SENT[:n].copy(), "protected_category": Y_MULTI[:n].copy()},
        meme_ids=list(ids),
    )  # fmt: skip


def _variant() -> str:
    return f"pv-{uuid.uuid4().hex[:8]}"


def _register(
    variant: str, preds: Predictions | None, *, digest: str = "digest-1", validation: str = "true",
    ids: list[str] = IDS, alias: str | None = "challenger",
) -> str:  # fmt: skip
    """A tiny run (prediction artifact + tags + a stand-in model file), registered as a new version."""
    name = registered_model_name(variant)
    with tracked_run(experiment="test-promotion", run_name=variant, stage=f"train@{variant}", variant=variant,
                     seed=0, data_digest=digest, params={"v": variant}, system_metrics=False,
                     extra_tags={"memeops.validation_passed": validation}) as run:  # fmt: skip
        if preds is not None:
            pr.log_eval_predictions("val", ids, preds, SPECS)
        mlflow.log_text("stand-in model", "model/model.txt")
    client = mlflow.MlflowClient()
    try:
        client.create_registered_model(name)
    except mlflow.exceptions.MlflowException:
        pass
    run_id = run.info.run_id
    version = client.create_model_version(name, source=f"runs:/{run_id}/model", run_id=run_id).version
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return str(version)


def _tags(variant: str, version: str) -> dict[str, str]:
    return mlflow.MlflowClient().get_model_version(registered_model_name(variant), version).tags


def _champion(variant: str) -> str | None:
    return alias_version(registered_model_name(variant), "champion")


def _with_champion(skill: float = 1.0, **kwargs) -> tuple[str, str]:
    """A variant whose v1 is champion (the alias set directly: promotion itself is tested below)."""
    variant = _variant()
    v1 = _register(variant, _predictions(skill, seed=0), **kwargs)
    mlflow.MlflowClient().set_registered_model_alias(registered_model_name(variant), "champion", v1)
    return variant, v1


@pytest.fixture(autouse=True)
def _quiet_artifact_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


# --------------------------------------------------------------------------- artifacts and statistics


def test_predictions_frame_round_trips_targets_probs_and_missing_labels() -> None:
    preds = _predictions(1.0, seed=3)
    frame = predictions_frame(IDS, preds, SPECS)
    assert list(frame.columns) == ["meme_id", "task", "kind", "target", "target_multi", "probs"]
    assert len(frame) == 3 * N
    sent = frame[frame["task"] == "sentiment"]
    assert sent["target"].isna().sum() == (Y_SENT == IGNORE_INDEX).sum()
    shuffled = list(np.random.default_rng(0).permutation(IDS))  # arrays follow the requested order
    arrays = frame_arrays(frame.sample(frac=1.0, random_state=0), shuffled)
    pos = [IDS.index(m) for m in shuffled]
    for spec in SPECS:
        a = arrays[spec.name]
        assert a.spec.kind == spec.kind and a.probs.shape == preds.probs[spec.name].shape
        np.testing.assert_allclose(a.probs, preds.probs[spec.name][pos])
        np.testing.assert_array_equal(a.targets, preds.targets[spec.name][pos])
        # the primary metric read back equals the training report's number
        expected = all_metrics(preds, [spec])[
            f"{spec.name}/{'auroc' if spec.name == 'hateful' else 'macro_f1'}"
        ]
        assert primary_value(a.spec, a.probs[a.mask], a.targets[a.mask]) == pytest.approx(expected)


def test_split_meme_ids_uses_batch_ids_or_table_order() -> None:
    memes = pd.DataFrame({"meme_id": ["a", "b", "c", "d"], "split": ["val", "train", "val", "test"]})
    preds = Predictions(probs={"hateful": np.zeros((2, 2))})
    assert split_meme_ids(memes, "val", preds) == ["a", "c"]
    preds.meme_ids = ["c", "a"]
    assert split_meme_ids(memes, "val", preds) == ["c", "a"]
    with pytest.raises(ValueError, match="2 predictions but 1 meme ids"):
        split_meme_ids(memes, "test", Predictions(probs={"hateful": np.zeros((2, 2))}))


def test_paired_bootstrap_p_value_small_for_a_clear_gain_large_for_none() -> None:
    good = frame_arrays(predictions_frame(IDS, _predictions(2.0, 1), SPECS), IDS)
    weak = frame_arrays(predictions_frame(IDS, _predictions(0.5, 2), SPECS), IDS)
    tasks = ["hateful", "sentiment"]
    clear = paired_bootstrap(good, weak, tasks, margin=0.005, n_boot=200, seed=0)
    assert clear.delta > 0.1 and clear.p_value < 0.01 and clear.n_valid == 200
    same = paired_bootstrap(good, good, tasks, margin=0.005, n_boot=200, seed=0)
    assert same.delta == 0 and same.p_value == 1.0


# --------------------------------------------------------------------------- the rule


def test_first_model_becomes_champion_with_its_record() -> None:
    variant = _variant()
    v1 = _register(variant, _predictions(1.0, seed=0))
    decision = promote_variant(variant, CFG)
    assert decision.decision == PROMOTED and "first model" in decision.reason and decision.applied
    assert _champion(variant) == v1
    tags = _tags(variant, v1)
    assert tags[TAG_DECISION] == PROMOTED and tags["memeops.promotion.champion_version"] == "none"
    assert float(tags["memeops.promotion.challenger_metric"]) == pytest.approx(decision.challenger_metric)
    assert tags["memeops.promotion.time"].endswith("Z") and tags["memeops.promotion.git_commit"]
    # promoting again: the challenger already is the champion, nothing changes
    again = promote_variant(variant, CFG)
    assert again.decision == KEPT and "already is the champion" in again.reason and not again.applied


def test_better_challenger_is_promoted_and_the_decision_recorded() -> None:
    variant, v1 = _with_champion(skill=0.7)
    v2 = _register(variant, _predictions(2.0, seed=1))
    decision = promote_variant(variant, CFG)
    assert decision.decision == PROMOTED, decision.reason
    assert _champion(variant) == v2 and alias_version(registered_model_name(variant), "challenger") == v2
    tags = _tags(variant, v2)
    assert tags[TAG_DECISION] == PROMOTED and tags["memeops.promotion.champion_version"] == v1
    assert float(tags["memeops.promotion.challenger_metric"]) > float(
        tags["memeops.promotion.champion_metric"]
    )
    assert float(tags["memeops.promotion.p_value"]) < 0.05
    assert tags["memeops.promotion.git_commit"] != "" and tags["memeops.promotion.time"]
    details = json.loads(tags["memeops.promotion.details"])
    assert details["split"] == "val" and details["tasks"] == ["hateful", "sentiment", "protected_category"]
    assert set(details["champion_task_metrics"]) == set(details["tasks"]) and details["margin"] == 0.005
    assert details["delta"] == pytest.approx(decision.delta)


def test_worse_challenger_is_kept() -> None:
    variant, v1 = _with_champion(skill=2.0)
    v2 = _register(variant, _predictions(0.7, seed=1))
    decision = promote_variant(variant, CFG)
    assert decision.decision == KEPT and "below the margin" in decision.reason
    assert decision.delta < 0 and _champion(variant) == v1
    assert _tags(variant, v2)[TAG_DECISION] == KEPT


def test_insignificantly_better_challenger_is_kept() -> None:
    """A challenger that differs from the champion on a few memes only: above the margin on this
    sample, but the paired bootstrap does not call it significant."""
    variant, v1 = _with_champion(skill=1.0)
    champ = _predictions(1.0, seed=0)
    chal = _predictions(1.0, seed=0)
    fixed = np.flatnonzero(Y_SENT >= 0)[:6]  # six memes now right on sentiment
    chal.probs["sentiment"][fixed] = np.eye(3)[Y_SENT[fixed]] * 0.9 + 0.1 / 3
    cfg = PromotionConfig(n_boot=300, seed=1, tasks={variant: ["sentiment"]})
    _register(variant, chal)
    decision = promote_variant(variant, cfg)
    base = all_metrics(champ, SPECS[1:2])["sentiment/macro_f1"]
    assert decision.champion_metric == pytest.approx(base)
    assert decision.delta >= cfg.margin, decision.reason  # better than the margin ...
    assert decision.decision == KEPT and "not significant" in decision.reason  # ... but not significantly
    assert decision.p_value >= 0.05 and decision.tasks == ["sentiment"]
    assert _champion(variant) == v1


def test_different_evaluation_data_is_refused() -> None:
    variant, v1 = _with_champion(skill=0.7)
    v2 = _register(variant, _predictions(2.0, seed=1), digest="digest-2")
    decision = promote_variant(variant, CFG)
    assert decision.decision == REFUSED and "different evaluation data" in decision.reason
    assert _champion(variant) == v1 and _tags(variant, v2)[TAG_DECISION] == REFUSED
    # same digest tag but other memes in the split: refused too
    other = [f"x{i}" for i in range(N)]
    _register(variant, _predictions(2.0, seed=1, ids=other), ids=other)
    decision = promote_variant(variant, CFG)
    assert decision.decision == REFUSED and "different evaluation sets" in decision.reason
    assert _champion(variant) == v1


def test_failed_validation_is_refused() -> None:
    variant, v1 = _with_champion(skill=0.7)
    v2 = _register(variant, _predictions(2.0, seed=1), validation="false")
    decision = promote_variant(variant, CFG)
    assert decision.decision == REFUSED and "validation_passed=false" in decision.reason
    assert _champion(variant) == v1 and _tags(variant, v2)[TAG_DECISION] == REFUSED
    # an unknown validation outcome is no pass either, even for the first model of a variant
    fresh = _variant()
    _register(fresh, _predictions(2.0, seed=1), validation="unknown")
    decision = promote_variant(fresh, CFG)
    assert decision.decision == REFUSED and "validation_passed=unknown" in decision.reason
    assert _champion(fresh) is None
    # a validated challenger without the prediction artifact cannot be compared: refused
    _register(variant, None)
    decision = promote_variant(variant, CFG)
    assert decision.decision == REFUSED and "for the challenger" in decision.reason
    assert _champion(variant) == v1


def test_dry_run_changes_nothing() -> None:
    variant, v1 = _with_champion(skill=0.7)
    v2 = _register(variant, _predictions(2.0, seed=1))
    before = dict(_tags(variant, v2))
    decision = promote_variant(variant, CFG, dry_run=True)
    assert decision.decision == PROMOTED and decision.dry_run and not decision.applied
    assert decision.summary().startswith("dry run: promoted")
    assert _champion(variant) == v1 and _tags(variant, v2) == before
    fresh = _variant()
    _register(fresh, _predictions(1.0, seed=0))
    assert promote_variant(fresh, CFG, dry_run=True).decision == PROMOTED and _champion(fresh) is None


def test_errors_unknown_variant_and_no_challenger() -> None:
    with pytest.raises(PromotionError, match="no registered model memeops-nope-"):
        promote_variant(f"nope-{uuid.uuid4().hex[:6]}", CFG)
    variant = _variant()
    _register(variant, _predictions(1.0, seed=0), alias=None)
    with pytest.raises(PromotionError, match="no 'challenger' alias"):
        promote_variant(variant, CFG)


def test_failure_before_the_alias_switch_leaves_the_old_champion(monkeypatch: pytest.MonkeyPatch) -> None:
    variant, v1 = _with_champion(skill=0.7)
    v2 = _register(variant, _predictions(2.0, seed=1))
    original = mlflow.MlflowClient.set_model_version_tag

    def flaky(self, name, version, key, value):  # the registry fails half-way through the record
        if key == pr.TAG_P_VALUE:
            raise RuntimeError("registry went away")
        return original(self, name, version, key, value)

    monkeypatch.setattr(mlflow.MlflowClient, "set_model_version_tag", flaky)
    with pytest.raises(RuntimeError, match="registry went away"):
        promote_variant(variant, CFG)
    assert _champion(variant) == v1
    tags = _tags(variant, v2)
    assert tags[TAG_DECISION] == "failed" and "registry went away" in tags[pr.TAG_REASON]
    monkeypatch.undo()  # the registry is back: the promotion goes through
    assert promote_variant(variant, CFG).decision == PROMOTED and _champion(variant) == v2


def test_concurrent_promotions_leave_the_aliases_consistent(monkeypatch: pytest.MonkeyPatch) -> None:
    variant, _ = _with_champion(skill=0.7)
    v2 = _register(variant, _predictions(2.0, seed=1))
    inside, overlaps = [0], []
    real = pr._decide

    def slow_decide(*args, **kwargs):  # widen the window in which the two calls could interleave
        inside[0] += 1
        overlaps.append(inside[0])
        try:
            time.sleep(0.3)
            return real(*args, **kwargs)
        finally:
            inside[0] -= 1

    monkeypatch.setattr(pr, "_decide", slow_decide)
    barrier, results, errors = threading.Barrier(2), [], []

    def worker() -> None:
        barrier.wait()
        try:
            results.append(promote_variant(variant, CFG))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 2
    assert max(overlaps) == 1  # the lock serialised the decisions
    decisions = sorted(r.decision for r in results)
    assert decisions == [KEPT, PROMOTED]  # the second saw the new champion inside the lock
    kept = next(r for r in results if r.decision == KEPT)
    assert kept.champion_version == v2 and "already is the champion" in kept.reason
    assert _champion(variant) == v2 and _tags(variant, v2)[TAG_DECISION] == PROMOTED
    assert pr.lock_path(registered_model_name(variant)).is_file()


def test_lock_lives_in_the_runtime_state_dir(state_dir: Path) -> None:
    path = pr.lock_path("memeops-x")
    assert path.is_relative_to(state_dir) and not path.is_relative_to(Path.home())


def test_config_rejects_the_train_split_and_reads_defaults() -> None:
    assert PromotionConfig().split == "val" and PromotionConfig().margin == 0.005
    with pytest.raises(ValueError, match="train split"):
        PromotionConfig(split="train")
    assert PromotionConfig(tasks={"a": ["hateful"]}).tasks_for("a") == ["hateful"]
    assert PromotionConfig().tasks_for("a") is None


# --------------------------------------------------------------------------- CLI and flow


def test_cli_promote_dry_run_and_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from memeops.cli import app

    monkeypatch.chdir(tmp_path)  # no params.yaml here: the documented defaults
    variant, v1 = _with_champion(skill=0.7)
    v2 = _register(variant, _predictions(2.0, seed=1))
    runner = CliRunner()
    out = runner.invoke(app, ["promote", variant, "--dry-run"])
    assert out.exit_code == 0, out.output
    assert out.output.startswith(f"dry run: promoted: memeops-{variant} v{v2} vs champion v{v1} on val")
    assert _champion(variant) == v1
    out = runner.invoke(app, ["promote", f"nope-{uuid.uuid4().hex[:6]}"])
    assert out.exit_code == 2 and out.output.startswith("error: no registered model")
    assert len(out.output.strip().splitlines()) == 1


@pytest.mark.slow  # the harness starts a temporary Prefect server (~5-15 s)
def test_prefect_flow_promotes(tmp_path: Path, repo_root: Path, prefect_harness) -> None:
    if str(repo_root) not in sys.path:
        sys.path.insert(0, str(repo_root))
    from flows.promote import promote_flow

    variant, v1 = _with_champion(skill=0.7)
    v2 = _register(variant, _predictions(2.0, seed=1))
    with prefect_harness(tmp_path / "prefect"):
        dry = promote_flow(variant, dry_run=True, params_path=str(repo_root / "params.yaml"))
        assert dry["decision"] == PROMOTED and dry["dry_run"] and _champion(variant) == v1
        result = promote_flow(variant, params_path=str(repo_root / "params.yaml"))
    assert result["decision"] == PROMOTED and result["champion_after"] == v2
    assert _champion(variant) == v2
    assert not math.isnan(result["p_value"])


def test_serving_falls_back_to_the_challenger_until_something_is_champion() -> None:
    """make serve's URI (memeops serve-uri): the champion, else the challenger with a note, else a
    one-line error that says what to run; memeops predict explains a missing alias the same way."""
    from typer.testing import CliRunner

    from memeops.cli import app
    from memeops.tracking.registry import explain_missing_alias, servable_uri

    variant = _variant()
    name = registered_model_name(variant)
    with pytest.raises(LookupError, match=r"@champion does not exist: train and register it first"):
        servable_uri(variant)  # nothing registered yet
    v1 = _register(variant, _predictions(0.5, seed=0))
    uri, note = servable_uri(variant)
    assert uri == f"models:/{name}@challenger" and f"memeops promote {variant}" in note
    assert f"memeops promote {variant}" in explain_missing_alias(f"models:/{name}@champion")
    assert explain_missing_alias(f"models:/{name}@challenger") is None and explain_missing_alias("/a/folder") is None
    with pytest.raises(LookupError, match=r"@staging does not exist: train and register it first"):
        servable_uri(variant, "staging")
    runner = CliRunner()
    result = runner.invoke(app, ["serve-uri", variant])
    assert result.exit_code == 0 and result.stdout.strip() == f"models:/{name}@challenger", result.output
    assert "note: no @champion" in result.stderr
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", v1)
    assert servable_uri(variant) == (f"models:/{name}@champion", None)
    result = runner.invoke(app, ["serve-uri", _variant()])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    result = runner.invoke(app, ["predict", "--model", f"models:/{name}@gone", __file__])
    assert result.exit_code == 2 and "@gone does not exist: train and register it first" in result.stderr
