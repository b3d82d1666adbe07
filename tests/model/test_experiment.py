"""Stage-train library: config merging, the checkpoint fingerprint, select-on-val / score-test-once,
bootstrap intervals, and the fast metric forms against sklearn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from memeops.config import TrainStageConfig
from memeops.data.features import FeatureStore
from memeops.evaluation.metrics import fast_binary_auroc, fast_macro_f1
from memeops.training import experiment as ex
from memeops.training.experiment import run_dir_for, train_variant

DIM = 8
VARIANTS = {"gatedclip": {"model": "gatedclip", "config": {"hidden": 16, "proj_dim": 8, "gate_hidden": 4,
                                                            "cls_hidden": 8}},
            "text_only": {"model": "text_only", "config": {"hidden": 8}, "trainer": {"lr": 0.01, "seed": 5}}}


def _cfg(**trainer: object) -> TrainStageConfig:
    return TrainStageConfig.model_validate({
        "tasks": ["hateful", "sentiment"], "seed": 3, "bootstrap_samples": 30, "variants": VARIANTS,
        "trainer": {"epochs": 3, "warmup_epochs": 1, "batch_size": 16, "patience": 5, "monitor": "mean/macro_f1",
                    **trainer},
    })  # fmt: skip


def test_trainer_config_merges_stage_seed_shared_settings_and_variant_overrides() -> None:
    cfg = _cfg(lr=0.002)
    gated = cfg.trainer_config("gatedclip")
    assert (gated.lr, gated.seed, gated.epochs) == (0.002, 3, 3)
    text = cfg.trainer_config("text_only")
    assert (text.lr, text.seed) == (0.01, 5)


def test_unknown_variant_and_task_fail_with_one_line() -> None:
    with pytest.raises(ValueError, match="unknown variant 'nope'"):
        _cfg().variant("nope")
    with pytest.raises(ValueError, match="unknown tasks"):
        TrainStageConfig.model_validate({"tasks": ["hatefull"], "variants": VARIANTS})


def test_run_dir_changes_with_data_or_features_not_otherwise(tmp_path: Path) -> None:
    base = {"data": "aa", "features": "clip-1", "variant": {"model": "x"}}
    assert run_dir_for(tmp_path, "v", base) == run_dir_for(tmp_path, "v", dict(base))
    assert run_dir_for(tmp_path, "v", base) != run_dir_for(tmp_path, "v", {**base, "data": "bb"})
    assert run_dir_for(tmp_path, "v", base) != run_dir_for(tmp_path, "v", {**base, "features": "clip-2"})


def test_fast_metrics_equal_sklearn() -> None:
    rng = np.random.default_rng(0)
    for _ in range(100):
        n, labels = int(rng.integers(5, 60)), int(rng.integers(2, 6))
        y, pred = rng.integers(0, labels, n), rng.integers(0, labels, n)
        assert fast_macro_f1(pred, y, labels) == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
        scores, yb = rng.integers(0, 5, n) / 4, rng.integers(0, 2, n)  # ties on purpose
        if len(set(yb)) == 2:
            assert fast_binary_auroc(scores, yb) == pytest.approx(roc_auc_score(yb, scores))
    assert np.isnan(fast_binary_auroc(np.ones(4), np.ones(4)))


def _store(tmp_path: Path, cached_features, n: int = 160) -> tuple[pd.DataFrame, FeatureStore]:
    """A meme table whose hateful label is a cross-modal rule on cached random features."""
    rng = np.random.default_rng(0)
    image, text = rng.normal(size=(n, DIM)).astype(np.float32), rng.normal(size=(n, DIM)).astype(np.float32)
    hateful = np.where((image[:, 0] > 0) == (text[:, 0] > 0), "yes", "no")
    sentiment = np.array(["positive", "negative", "neutral"])[rng.integers(0, 3, n)]
    splits = np.array(["train"] * 100 + ["val"] * 20 + ["test"] * 20 + ["test_unseen"] * 20)
    memes = pd.DataFrame({"meme_id": [f"m{i}" for i in range(n)], "split": splits, "text": [f"t{i}" for i in range(n)],
                          "image_sha256": [f"{i:064x}" for i in range(n)], "label_hateful": hateful,
                          "label_sentiment": sentiment})  # fmt: skip
    cached_features(tmp_path / "features", memes, image, text)
    return memes, FeatureStore(tmp_path / "features", "spec")


def test_train_variant_selects_on_val_and_scores_each_eval_split_once(tmp_path: Path, cached_features, monkeypatch) -> None:
    memes, store = _store(tmp_path, cached_features)
    scored: list[int] = []
    real_predict = ex.predict

    def counting_predict(model, dataset, specs, **kw):
        scored.append(len(dataset))
        return real_predict(model, dataset, specs, **kw)

    fit_sets: list[tuple[int, int]] = []
    real_fit = ex.fit

    def recording_fit(model, train_set, val_set, *a, **kw):
        fit_sets.append((len(train_set), len(val_set)))
        return real_fit(model, train_set, val_set, *a, **kw)

    monkeypatch.setattr(ex, "predict", counting_predict)
    monkeypatch.setattr(ex, "fit", recording_fit)
    result = train_variant("gatedclip", memes, store, DIM, _cfg(), tmp_path / "run")
    assert fit_sets == [(100, 20)]  # fit never sees a test split
    assert scored == [20, 20, 20]  # val, test, test_unseen: once each, after fit
    report = result.report()
    assert set(report) >= {"val", "test", "test_unseen", "best_epoch", "primary_metric"}
    assert 0.0 <= report["test"]["hateful/auroc"] <= 1.0
    assert report["primary_metric"] == {"hateful": "auroc", "sentiment": "macro_f1"}
    assert "ci95" not in report  # one seed's run: intervals come from the seed summary (variant_stage)


def test_variant_task_override_is_checked_and_used() -> None:
    cfg = TrainStageConfig.model_validate({"tasks": ["hateful", "sentiment"], "variants": {
        "g": {"model": "gatedclip", "tasks": ["hateful"]}, "t": {"model": "text_only"}}})  # fmt: skip
    assert cfg.tasks_for("g") == ["hateful"] and cfg.tasks_for("t") == ["hateful", "sentiment"]
    bad = TrainStageConfig.model_validate({"tasks": ["hateful"], "variants": {"g": {"model": "gatedclip",
                                                                                   "tasks": ["nope"]}}})  # fmt: skip
    with pytest.raises(ValueError, match="unknown tasks"):
        bad.tasks_for("g")


def test_finished_checkpoint_is_cleared_interrupted_one_kept(tmp_path: Path) -> None:
    import json

    from memeops.training.experiment import clear_finished_run

    for name, state, cleared in (("done", {"epoch": 5, "stopped_early": False}, True),
                                 ("early", {"epoch": 2, "stopped_early": True}, True),
                                 ("killed", {"epoch": 2, "stopped_early": False}, False)):  # fmt: skip
        run = tmp_path / name
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "state.json").write_text(json.dumps(state))
        assert clear_finished_run(run, epochs=5) is cleared
        assert run.exists() is not cleared
    assert clear_finished_run(tmp_path / "absent", epochs=5) is False


def test_gatedclip_report_carries_gate_statistics(tmp_path: Path, cached_features) -> None:
    memes, store = _store(tmp_path, cached_features)
    report = train_variant("gatedclip", memes, store, DIM, _cfg(), tmp_path / "run").report()
    assert set(report["gate"]) == {"val", "test", "test_unseen"}
    assert 0.0 <= report["gate"]["test"]["mean"] <= 1.0
    assert "gate" not in train_variant("text_only", memes, store, DIM, _cfg(), tmp_path / "run2").report()


def test_a_worker_seeds_config_error_reaches_the_stage_as_is_other_failures_name_the_seed() -> None:
    """SeedRunner.collect: a ConfigError (or a missing input) from a worker stays itself, so run_stage
    prints it as one line; any other failure is wrapped with the variant and seed that failed."""
    from concurrent.futures import Future
    from types import SimpleNamespace

    from memeops.config import ConfigError
    from memeops.training.seed_pool import SeedRunner

    def failed(exc: Exception) -> Future:
        future: Future = Future()
        future.set_exception(exc)
        return future

    runner = SeedRunner(context=None, pool=object())  # collect only reads the futures
    job = SimpleNamespace(variant="bilinear", seed=1)
    with pytest.raises(ConfigError, match="object_view"):
        runner.collect([job], [failed(ConfigError("inputs.object_view 'grid' must be a detector view"))])
    with pytest.raises(RuntimeError, match="train bilinear seed 1 failed: boom"):
        runner.collect([job], [failed(ValueError("boom"))])
