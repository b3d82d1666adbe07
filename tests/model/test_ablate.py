"""Stage ablate's training half: config checks, arm merging, job order, and deterministic runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from memeops.config import TrainStageConfig
from memeops.data.features import FeatureStore
from memeops.stats import ArmRun
from memeops.timing import is_timing_key
from memeops.training.ablate import (
    AblateConfig,
    ArmWorker,
    arm_variant,
    build_jobs,
    ordered_runs,
    predictions_long,
    run_jobs,
    runs_frame,
)

DIM = 8
TRAIN = TrainStageConfig.model_validate({
    "tasks": ["hateful", "sentiment"], "seed": 3, "bootstrap_samples": 0,
    "trainer": {"epochs": 3, "warmup_epochs": 1, "batch_size": 16, "patience": 5, "monitor": "mean/macro_f1"},
    "variants": {
        "gatedclip_mt": {"model": "gatedclip", "config": {"hidden": 16, "proj_dim": 8, "gate_hidden": 4, "cls_hidden": 8},
                         "trainer": {"lr": 0.01}},
        "text_only": {"model": "text_only", "config": {"hidden": 8}},
    },
})  # fmt: skip


def _ablate(**extra: object) -> AblateConfig:
    return AblateConfig.model_validate({
        "seeds": [0, 1], "workers": 1, "n_boot": 100, "metrics": ["mean/macro_f1", "hateful/auroc"],
        "groups": {"gatedclip": {"base": "gatedclip_mt", "trainer": {"epochs": 2}, "arms": {
            "full": {}, "no_gate": {"config": {"fusion": "fixed"}, "trainer": {"lr": 0.02}},
            "text_only": {"variant": "text_only"}}}},
        **extra,
    })  # fmt: skip


def test_config_rejects_missing_reference_unknown_claim_arm_and_duplicate_seeds() -> None:
    with pytest.raises(ValidationError, match="reference arm 'full'"):
        AblateConfig.model_validate({"seeds": [0], "metrics": ["mean/macro_f1"],
                                     "groups": {"g": {"base": "text_only", "arms": {"other": {}}}}})  # fmt: skip
    with pytest.raises(ValidationError, match="has no arm 'nope'"):
        _ablate(claims=[{"claim": "c", "group": "gatedclip", "better": "full", "worse": "nope", "metric": "m"}])
    with pytest.raises(ValidationError, match="duplicates"):
        AblateConfig.model_validate({**_ablate().model_dump(), "seeds": [1, 1]})
    with pytest.raises(ValidationError, match="robustness"):
        _ablate(robustness={"group": "gatedclip", "levels": [["full", "x"], ["gone", "y"]], "fallback": "full"})


def test_arm_variant_merges_arm_then_group_protocol_then_seed() -> None:
    cfg = _ablate()
    group = cfg.groups["gatedclip"]
    name, vcfg = arm_variant(TRAIN, group, group.arms["no_gate"], seed=7)
    assert name == "gatedclip_mt" and vcfg.config["fusion"] == "fixed" and vcfg.config["hidden"] == 16
    # the arm's own lr override, the group's epochs (its protocol, for every arm), the job's seed
    assert vcfg.trainer.settings() == {"lr": 0.02, "epochs": 2, "seed": 7}
    name, vcfg = arm_variant(TRAIN, group, group.arms["text_only"], seed=0)
    assert name == "text_only" and vcfg.model == "text_only" and vcfg.trainer.settings() == {"epochs": 2, "seed": 0}


def test_jobs_cover_every_arm_and_seed_and_order_back_by_params() -> None:
    cfg = _ablate()
    jobs = build_jobs(cfg, TRAIN)
    assert sorted((j.arm, j.seed) for j in jobs) == sorted((a, s) for a in ("full", "no_gate", "text_only") for s in (0, 1))
    for job in jobs:  # each job carries one variant, seeded, under the group's protocol
        assert list(job.train.variants) == [job.variant]
        assert job.train.trainer_config(job.variant).seed == job.seed
        assert job.train.trainer_config(job.variant).epochs == 2


def _worker(tmp_path: Path, cached_features, n: int = 120) -> ArmWorker:
    """Cached random features with a cross-modal hateful rule and a text-only sentiment rule."""
    rng = np.random.default_rng(0)
    image, text = rng.normal(size=(n, DIM)).astype(np.float32), rng.normal(size=(n, DIM)).astype(np.float32)
    memes = pd.DataFrame({
        "meme_id": [f"m{i}" for i in range(n)], "text": [f"t{i}" for i in range(n)],
        "split": ["train"] * 80 + ["val"] * 20 + ["test"] * 20, "image_sha256": [f"{i:064x}" for i in range(n)],
        "label_hateful": np.where((image[:, 0] > 0) == (text[:, 0] > 0), "yes", "no"),
        "label_sentiment": np.array(["positive", "negative", "neutral"])[(text[:, 1] > 0).astype(int) + (text[:, 2] > 1)],
    })  # fmt: skip
    cached_features(tmp_path / "features", memes, image, text)
    return ArmWorker(memes, FeatureStore(tmp_path / "features", "spec"), DIM)


def test_runs_are_scored_on_test_aligned_by_meme_and_deterministic(tmp_path: Path, cached_features) -> None:
    cfg = _ablate()
    jobs = build_jobs(cfg, TRAIN)
    worker = _worker(tmp_path, cached_features)
    done = []
    runs = run_jobs(jobs, worker, workers=1, on_done=lambda job, run, n: done.append(n))
    assert done == list(range(1, len(jobs) + 1))
    test_ids = [f"m{i}" for i in range(100, 120)]
    for run in runs:
        assert run.predictions.meme_ids == test_ids  # TEST split only, in meme order
        assert set(run.predictions.probs) == {"hateful", "sentiment"} and 1 <= run.best_epoch <= 2
        assert "mean/macro_f1" in run.val_metrics  # what selection saw on VAL
    gated = [r for r in runs if r.arm == "full"]
    assert all("gate" in r.predictions.extras for r in gated)  # the gate diagnostics' input
    again = run_jobs(jobs[:1], worker, workers=1)[0]  # the same job twice: the same predictions
    first = runs[0]
    for task in first.predictions.probs:
        np.testing.assert_allclose(again.predictions.probs[task], first.predictions.probs[task], rtol=0, atol=0)
    seeds = {r.seed: r for r in runs if r.arm == "full"}
    assert not np.allclose(seeds[0].predictions.probs["hateful"], seeds[1].predictions.probs["hateful"])

    ordered = ordered_runs(runs, cfg)
    assert [(r.arm, r.seed) for r in ordered] == [(a, s) for a in ("full", "no_gate", "text_only") for s in (0, 1)]
    frame = runs_frame(ordered)
    assert list(frame.columns[:5]) == ["group", "arm", "seed", "trained_in", "best_epoch"] and len(frame) == 6
    assert set(frame["trained_in"]) == {"ablate"}
    assert not [c for c in frame.columns if is_timing_key(c)]  # a DVC out: no wall-clock column
    long = predictions_long(ordered)
    assert len(long) == 6 * 2 * 20 and set(long["task"]) == {"hateful", "sentiment"}


def _same_protocol(**extra: object) -> AblateConfig:
    """_ablate without the group protocol: arms train as stage train trains their variant."""
    base = _ablate(**extra).model_dump()
    base["groups"]["gatedclip"]["trainer"] = {}
    return AblateConfig.model_validate(base)


def test_only_jobs_with_stage_trains_exact_settings_are_reused() -> None:
    from memeops.training.ablate_reuse import reusable_jobs

    cfg = _same_protocol(gate={"group": "gatedclip", "arm": "full"})
    reused = reusable_jobs(cfg, build_jobs(cfg, TRAIN), TRAIN)
    # full: the gate arm (needs the gate per meme); no_gate: its own config and lr
    assert sorted((j.arm, j.seed) for j in reused) == [("text_only", 0), ("text_only", 1)]
    assert [j.arm for j in reusable_jobs(_same_protocol(), build_jobs(_same_protocol(), TRAIN), TRAIN)].count("full") == 2
    assert reusable_jobs(_ablate(), build_jobs(_ablate(), TRAIN), TRAIN) == []  # the group's own protocol
    val_split = _same_protocol(split="val")
    assert reusable_jobs(val_split, build_jobs(val_split, TRAIN), TRAIN) == []  # train keeps test splits only
    no_seed = TRAIN.model_copy(update={"seeds": [0]})
    assert {j.seed for j in reusable_jobs(_same_protocol(), build_jobs(_same_protocol(), no_seed), no_seed)} == {0}


def test_reused_runs_are_the_runs_stage_train_wrote(tmp_path: Path, cached_features) -> None:
    """Train the text_only arm here, write it as stage train does, read it back: the same predictions,
    best epoch and val scores, aligned to the same memes."""
    import json

    from memeops.training.ablate_reuse import load_train_runs, reusable_jobs
    from memeops.training.experiment import trainable_specs
    from memeops.training.seed_runs import predictions_table

    cfg = _same_protocol()
    jobs = [j for j in reusable_jobs(cfg, build_jobs(cfg, TRAIN), TRAIN) if j.arm == "text_only"]
    worker = _worker(tmp_path, cached_features)
    trained = ordered_runs(run_jobs(jobs, worker, workers=1), cfg)
    table = predictions_table({"test": [ArmRun("train", "text_only", r.seed, r.predictions, {}, 0, 0.0) for r in trained]})
    (tmp_path / "data").mkdir()
    table.to_parquet(tmp_path / "data" / "text_only.parquet", index=False)
    seed_runs = {str(r.seed): {"best_epoch": r.best_epoch, "val": dict(r.val_metrics)} for r in trained}
    (tmp_path / "text_only.json").write_text(json.dumps({"seed_runs": seed_runs}), encoding="utf-8")
    specs = {s.name: s for s in trainable_specs(worker.memes, TRAIN.tasks)[0]}
    read = ordered_runs(load_train_runs(jobs, "test", specs, worker.memes, predictions_dir=tmp_path / "data",
                                        reports_dir=tmp_path), cfg)  # fmt: skip
    for mine, theirs in zip(read, trained, strict=True):
        assert (mine.group, mine.arm, mine.seed, mine.best_epoch) == (theirs.group, theirs.arm, theirs.seed, theirs.best_epoch)
        assert mine.predictions.meme_ids == theirs.predictions.meme_ids and mine.val_metrics == theirs.val_metrics
        for task, probs in theirs.predictions.probs.items():
            np.testing.assert_allclose(mine.predictions.probs[task], probs, rtol=0, atol=1e-7)
            np.testing.assert_array_equal(mine.predictions.targets[task], theirs.predictions.targets[task])
    with pytest.raises(FileNotFoundError, match="cross.parquet is missing"):
        load_train_runs([j.__class__(**{**j.__dict__, "variant": "cross"}) for j in jobs[:1]], "test", specs,
                        worker.memes, predictions_dir=tmp_path / "data", reports_dir=tmp_path)  # fmt: skip


def test_the_report_says_which_protocol_each_group_trained_under() -> None:
    from memeops.training.ablate_stage import protocol_lines

    cheap = protocol_lines(_ablate(), TRAIN)["gatedclip"]  # the group's own 2 epochs; train's 3, patience 5
    assert cheap.startswith("every arm trains 2 epochs, patience 5 (this group's cheaper protocol; gatedclip_mt's "
                            "training stage: 3 epochs, patience 5)") and "`full` is the full model under" in cheap
    same = protocol_lines(_same_protocol(), TRAIN)["gatedclip"]
    assert same == "every arm trains as its variant does in its training stage (gatedclip_mt: 3 epochs, patience 5)."


def test_dvc_ablate_depends_on_every_train_variants_outputs(repo_root: Path) -> None:
    """Whatever arm the params make reusable, its files are ablate dependencies (a retrained variant
    re-runs the ablation)."""
    import yaml

    deps = set(yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]["ablate"]["deps"])
    variants = yaml.safe_load((repo_root / "params.yaml").read_text())["train"]["variants"]
    missing = [f for v in variants for f in (f"data/train/{v}.parquet", f"reports/metrics/{v}.json") if f not in deps]
    assert not missing, missing


def test_a_metric_the_tasks_cannot_have_is_a_one_line_config_error() -> None:
    from memeops.config import ConfigError
    from memeops.models.base import TaskSpec
    from memeops.training.ablate_stage import check_metric_names

    specs = {"hateful": TaskSpec("hateful", "single", ("no", "yes")),
             "sentiment": TaskSpec("sentiment", "single", ("negative", "neutral", "positive"))}  # fmt: skip
    check_metric_names(_ablate(), specs)  # mean/macro_f1 and hateful/auroc exist
    with pytest.raises(ConfigError, match="params.yaml ablate: .*sentiment"):
        check_metric_names(_ablate(metrics=["sentiment/auroc"]), specs)  # not a binary task
    claim = {"claim": "c", "group": "gatedclip", "better": "full", "worse": "no_gate", "metric": "sarcasm/macro_f1"}
    with pytest.raises(ConfigError, match="sarcasm"):
        check_metric_names(_ablate(claims=[claim]), specs)  # a task no run predicts


def test_an_arm_of_a_lexical_variant_trains_on_caption_ngrams_and_detector_tags(tmp_path: Path, cached_features) -> None:
    """Arms built from an `inputs: {lexical: ...}` variant get that family's inputs in the worker (a config
    switch of the arm, here text_view, keeps them), not the plain feature cache."""
    import json
    from types import SimpleNamespace

    from memeops.data.lexical import LexicalInputs
    from memeops.vision.extract import RegionsConfig

    worker = _worker(tmp_path, cached_features)
    detector_dir, regions_dir = tmp_path / "detector", tmp_path / "regions"
    detector_dir.mkdir()
    regions_dir.mkdir()
    (detector_dir / "detector_config.json").write_text(json.dumps({"class_names": ["a", "b", "c"]}))
    keys = worker.memes["image_sha256"].tolist()
    pd.DataFrame({"image_sha256": keys, "rank": 0, "x0": 0.1, "y0": 0.1, "x1": 0.5, "y1": 0.5, "score": 0.9,
                  "class_id": [i % 3 for i in range(len(keys))]}).to_parquet(regions_dir / "detections.parquet")  # fmt: skip
    worker.encoder = SimpleNamespace(dim=DIM)
    worker.regions = RegionsConfig(detector_dir=str(detector_dir), output_dir=str(regions_dir))
    train = TrainStageConfig.model_validate({
        **TRAIN.model_dump(), "variants": {"bilinear_h": {
            "model": "bilinear", "tasks": ["hateful"], "inputs": {"lexical": {"min_df": 1}},
            "config": {"trunk": False, "rank": 2}}}})  # fmt: skip
    cfg = AblateConfig.model_validate({
        "seeds": [0], "workers": 1, "n_boot": 100, "metrics": ["hateful/auroc"],
        "groups": {"interaction": {"base": "bilinear_h", "arms": {"full": {}, "clip_text": {"config": {"text_view": "clip"}}}}},
    })  # fmt: skip
    jobs = build_jobs(cfg, train)
    inputs = worker.inputs_for(jobs[0], [])
    assert isinstance(inputs, LexicalInputs) and inputs.model_dims()["object_classes"] == 3
    runs = run_jobs(jobs, worker, workers=1)
    assert sorted(r.arm for r in runs) == ["clip_text", "full"]
    assert all(set(r.predictions.probs) == {"hateful"} and len(r.predictions) == 20 for r in runs)
