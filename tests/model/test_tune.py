"""Stage-tune library: search-space parsing, merging tuned params, a tiny study with pruning and its
MLflow parent / child runs and report, and two worker processes sharing one study."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest

from memeops.config import ConfigError, Params, TrainStageConfig
from memeops.training.experiment import variant_model_config
from memeops.training.tune import run_parallel, split_trials, tune_variant
from memeops.training.tune_config import TuneConfig, check_space, default_params, parse_space, trial_trainer_overrides
from memeops.training.tune_study import TuneJob, prepare, resolve_storage
from memeops.training.tune_trials import TAG_DEFAULTS, TAG_STATE, TAG_STUDY, TAG_TRIAL, fit_trial
from memeops.training.tuned import apply_tuned, params_to_overrides, with_tuned

DIM = 8
VARIANTS = {"text_only": {"model": "text_only", "config": {"hidden": 8}},
            "gatedclip": {"model": "gatedclip", "config": {"hidden": 16, "proj_dim": 8, "gate_hidden": 4,
                                                            "cls_hidden": 8}, "trainer": {"lr": 0.001}}}  # fmt: skip
SPACE = {"trainer.lr": {"type": "float", "low": 1e-4, "high": 0.3, "log": True},
         "config.dropout": {"type": "categorical", "choices": [0.0, 0.3]}}  # fmt: skip


def _train_cfg() -> TrainStageConfig:
    return TrainStageConfig.model_validate({
        "tasks": ["hateful", "sentiment"], "seed": 3, "variants": VARIANTS,
        "trainer": {"epochs": 50, "warmup_epochs": 2, "batch_size": 32, "patience": 20, "lr": 0.01,
                    "monitor": "mean/macro_f1", "threads": 1},
    })  # fmt: skip


# --------------------------------------------------------------------------- search spaces


def test_space_parses_float_log_int_categorical_and_suggests_within_bounds() -> None:
    space = parse_space({"trainer.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                         "trainer.batch_size": {"type": "int", "low": 16, "high": 64, "step": 16},
                         "config.hidden": {"type": "int", "low": 8, "high": 128, "log": True},
                         "config.dropout": {"type": "categorical", "choices": [0.0, 0.1, 0.3]}})  # fmt: skip
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        values = {k: s.suggest(trial, k) for k, s in space.items()}
        assert 1e-4 <= values["trainer.lr"] <= 1e-2
        assert values["trainer.batch_size"] in (16, 32, 48, 64)
        assert isinstance(values["config.hidden"], int) and 8 <= values["config.hidden"] <= 128
        assert values["config.dropout"] in (0.0, 0.1, 0.3)
        study.tell(trial, 0.0)
    dists = study.trials[0].distributions
    assert dists["trainer.lr"].log and dists["config.hidden"].log and dists["trainer.batch_size"].step == 16
    assert isinstance(dists["config.dropout"], optuna.distributions.CategoricalDistribution)


@pytest.mark.parametrize(("spec", "message"), [
    ({"trainer.lr": {"type": "float", "low": 0.1, "high": 0.01}}, "must be below"),
    ({"trainer.lr": {"type": "float", "low": 0.0, "high": 0.01, "log": True}}, "log scale needs low > 0"),
    ({"config.dropout": {"type": "categorical", "choices": []}}, "non-empty"),
    ({"config.dropout": {"type": "normal", "low": 0, "high": 1}}, "type"),
    ({"trainer.epochs": {"type": "int", "low": 5, "high": 50}}, "fixed by the tuning budget"),
    ({"trainer.lrr": {"type": "float", "low": 0.1, "high": 1}}, "not a trainer setting"),
    ({"optimizer.lr": {"type": "float", "low": 0.1, "high": 1}}, "keys are"),
    ({"config.hidden": {"type": "int", "low": 8.5, "high": 16}}, "whole numbers"),
    ({"config.hidden": 16}, "expected"),
])  # fmt: skip
def test_bad_space_is_a_one_line_error(spec: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_space(spec)
    assert "\n" not in str(info.value)
    params = Params.model_validate({"data": {"sources": [{"name": "s", "format": "synthmeme", "path": "x"}]},
                                    "tune": {"spaces": {"default": spec}}})  # fmt: skip
    with pytest.raises(ConfigError) as info:
        params.section("tune", TuneConfig)
    assert "\n" not in str(info.value) and "params tune" in str(info.value)


def test_unknown_model_config_field_is_caught_before_training(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="config.cls_dropout not in the text_only config"):
        check_space(parse_space({"config.cls_dropout": {"type": "float", "low": 0, "high": 0.5}}), "text_only", _train_cfg())


# --------------------------------------------------------------------------- merging


def test_apply_tuned_merges_into_one_variant_and_is_pure() -> None:
    cfg = _train_cfg()
    tuned = {"overrides": {"trainer": {"lr": 0.02, "weight_decay": 0.05}, "config": {"cls_dropout": 0.1}}, "variant": "gatedclip"}
    out = apply_tuned(cfg, "gatedclip", tuned)
    assert out is not cfg and cfg.variant("gatedclip").trainer.settings() == {"lr": 0.001}  # input untouched
    trainer = out.trainer_config("gatedclip")
    assert (trainer.lr, trainer.weight_decay, trainer.epochs, trainer.patience) == (0.02, 0.05, 50, 20)  # full budget kept
    assert out.variant("gatedclip").config == {**VARIANTS["gatedclip"]["config"], "cls_dropout": 0.1}
    assert out.variant("text_only") == cfg.variant("text_only")
    # the bare override dict works too; an untuned file or nothing leaves the config as it is
    assert apply_tuned(cfg, "gatedclip", tuned["overrides"]) == out
    assert apply_tuned(cfg, "text_only", {"variant": "text_only", "tuned": False, "overrides": {}}) is cfg
    assert apply_tuned(cfg, "text_only", None) is cfg
    with pytest.raises(ValueError, match="unknown sections"):
        apply_tuned(cfg, "text_only", {"optimizer": {"lr": 1}})
    with pytest.raises(ValueError, match="unknown variant"):
        apply_tuned(cfg, "nope", {})
    merged = apply_tuned(cfg, "text_only", {"config": {"dropoutt": 0.1}})  # a typo fails when the model is built
    with pytest.raises(ValueError, match="dropoutt"):
        variant_model_config("text_only", merged, {"image_dim": DIM, "text_dim": DIM})


def test_with_tuned_reads_each_variants_file_through_the_one_merge(tmp_path: Path) -> None:
    cfg = _train_cfg()
    report = {"variant": "gatedclip", "tuned": True, "overrides": {"trainer": {"lr": 0.02}, "config": {"cls_dropout": 0.1}}}
    (tmp_path / "gatedclip.json").write_text(json.dumps(report), encoding="utf-8")
    (tmp_path / "text_only.json").write_text(json.dumps({"variant": "text_only", "tuned": False, "overrides": {}}))
    out = with_tuned(cfg, ["text_only", "gatedclip"], tmp_path)
    assert out == apply_tuned(cfg, "gatedclip", report) and out.trainer_config("gatedclip").lr == 0.02
    assert out.variant("text_only") == cfg.variant("text_only")
    assert with_tuned(cfg, ["gatedclip"], tmp_path / "none") is cfg  # no tuning files: params unchanged
    with pytest.raises(ValueError, match="unknown variant"):
        with_tuned(cfg, ["nope"], tmp_path)


def test_defaults_caps_and_overrides() -> None:
    cfg = _train_cfg()
    space = parse_space({"trainer.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
                         "config.dropout": {"type": "float", "low": 0, "high": 0.5}})  # fmt: skip
    assert default_params(space, "text_only", cfg) == {"trainer.lr": 0.01, "config.dropout": 0.3}  # model default
    assert params_to_overrides({"trainer.lr": 0.1, "config.dropout": 0.2}) == {"trainer": {"lr": 0.1}, "config": {"dropout": 0.2}}
    caps = trial_trainer_overrides(cfg.trainer_config("text_only"), TuneConfig(epochs=3, patience=2))
    assert caps == {"epochs": 3, "patience": 2, "warmup_epochs": 1.5}
    # no cap (the default): trials train exactly like train@<variant>
    base = cfg.trainer_config("text_only")
    assert trial_trainer_overrides(base, TuneConfig()) == {"epochs": base.epochs, "patience": base.patience,
                                                          "warmup_epochs": base.warmup_epochs}  # fmt: skip
    assert split_trials(5, 2) == [3, 2] and split_trials(1, 3) == [1]


def test_storage_specs_resolve_inside_the_project(tmp_path: Path) -> None:
    assert resolve_storage("sqlite:///.cache/optuna/{variant}.db", "concat", tmp_path) == \
        f"sqlite:///{tmp_path.resolve()}/.cache/optuna/concat.db"  # fmt: skip
    assert resolve_storage("sqlite:////abs/x.db", "v", tmp_path) == "sqlite:////abs/x.db"
    assert resolve_storage("journal:j/{variant}.log", "v", tmp_path) == f"journal:{tmp_path.resolve()}/j/v.log"
    assert resolve_storage("postgresql://u:p@db/optuna", "v", tmp_path) == "postgresql://u:p@db/optuna"
    with pytest.raises(ValueError, match="SQLAlchemy URL"):
        resolve_storage("optuna.db", "v", tmp_path)


# --------------------------------------------------------------------------- a tiny study


def _tiny_project(tmp_path: Path, cached_features, n: int = 200) -> tuple[Path, Path]:
    """memes.parquet + a feature store whose hateful label is a cross-modal rule (as test_experiment)."""
    rng = np.random.default_rng(0)
    image, text = rng.normal(size=(n, DIM)).astype(np.float32), rng.normal(size=(n, DIM)).astype(np.float32)
    hateful = np.where((image[:, 0] > 0) == (text[:, 0] > 0), "yes", "no")
    sentiment = np.array(["positive", "negative", "neutral"])[np.digitize(text[:, 1], [-0.4, 0.4])]
    splits = np.array(["train"] * 130 + ["val"] * 40 + ["test"] * (n - 170))
    memes = pd.DataFrame({"meme_id": [f"m{i}" for i in range(n)], "split": splits, "text": [f"t{i}" for i in range(n)],
                          "image_sha256": [f"{i:064x}" for i in range(n)], "label_hateful": hateful,
                          "label_sentiment": sentiment})  # fmt: skip
    memes_path = tmp_path / "memes.parquet"
    memes.to_parquet(memes_path)
    cached_features(tmp_path / "features", memes, image, text)
    return memes_path, tmp_path / "features"


def _job(tmp_path: Path, cached_features, storage: str, n_trials: int, **tune: object) -> TuneJob:
    memes_path, feature_dir = _tiny_project(tmp_path, cached_features)
    tune_cfg = TuneConfig.model_validate({
        "variants": ["text_only"], "n_trials": n_trials, "epochs": 4, "patience": 4, "sampler_seed": 1,
        "n_startup_trials": 2, "storage": storage, "experiment": f"tune-test-{uuid.uuid4().hex[:8]}",
        "pruner": {"n_startup_trials": 1, "n_warmup_steps": 0}, "spaces": {"default": SPACE}, **tune,
    })  # fmt: skip
    return TuneJob(variant="text_only", train=_train_cfg(), tune=tune_cfg, memes_path=str(memes_path),
                   feature_dir=str(feature_dir), feature_spec="spec", feature_dim=DIM, root=str(tmp_path))  # fmt: skip


def assert_report_matches_study(report: dict, db: Path) -> None:
    """The report's best is the study's: the maximum value over the completed trials (read back from
    the storage), with that trial's number and params; the defaults are trial 0's params."""
    study = optuna.load_study(study_name=report["study"], storage=f"sqlite:///{db}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert report["direction"] == "maximize"
    top = max(complete, key=lambda t: t.value)
    assert report["best_trial"] == top.number and report["best_value"] == pytest.approx(top.value, rel=1e-5)
    assert report["best_params"] == pytest.approx(top.params, rel=1e-5)
    assert report["default_params"] == pytest.approx(study.trials[0].params) and study.trials[0].user_attrs["defaults"]


def _children(parent_id: str) -> pd.DataFrame:
    return mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")


def test_tiny_study_prunes_tracks_every_trial_and_writes_the_report(tmp_path: Path, cached_features, monkeypatch) -> None:
    from memeops.training import experiment as ex

    scored: list[str] = []
    monkeypatch.setattr(ex, "predict", lambda *a, **k: scored.append("predict"))  # a trial never scores a split
    job = _job(tmp_path, cached_features, "sqlite:///.cache/optuna/{variant}.db", n_trials=6)
    out, csv = tmp_path / "reports" / "tuning" / "text_only.json", tmp_path / "reports" / "plots" / "text_only.csv"
    report = tune_variant(job, output=out, plot_csv=csv)

    assert scored == [] and (tmp_path / ".cache" / "optuna" / "text_only.db").is_file()  # storage inside the project
    assert json.loads(out.read_text()) == report
    assert report["n_trials"]["total"] == 6 and report["n_trials"]["pruned"] >= 1 and report["n_trials"]["fail"] == 0
    assert report["default_params"] == {"config.dropout": 0.3, "trainer.lr": 0.01}
    assert_report_matches_study(report, tmp_path / ".cache" / "optuna" / "text_only.db")
    # the reported default value is that of the default config, trained again on its own
    prepared, data = prepare(job)
    refit = fit_trial(prepared, data, params_to_overrides(report["default_params"]), tmp_path / "refit")
    assert report["default_value"] == pytest.approx(refit.best_value, rel=1e-5)
    assert report["improvement"] == pytest.approx(report["best_value"] - report["default_value"], abs=1e-5)
    assert set(report["overrides"]) == {"trainer", "config"} and report["budget"]["epochs"] == 4
    assert apply_tuned(job.train, "text_only", report).trainer_config("text_only").lr == report["best_params"]["trainer.lr"]
    rows = pd.read_csv(csv)
    assert list(rows["trial"]) == list(range(6)) and "pruned" in set(rows["state"])

    parents = mlflow.search_runs(experiment_names=[job.experiment]).query("`tags.mlflow.parentRunId`.isnull()")
    assert len(parents) == 1 and parents.iloc[0]["tags.memeops.dvc_stage"] == "tune@text_only"
    parent = parents.iloc[0]
    assert parent["tags.memeops.variant"] == "text_only" and parent["tags.memeops.git_commit"]
    assert parent["tags.memeops.data_digest"] and parent["metrics.best_value"] == pytest.approx(report["best_value"], abs=1e-5)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent["run_id"], "plots")}
    assert {"plots/optimization_history.png", "plots/param_importances.png"} <= artifacts
    kids = _children(parent["run_id"])
    assert len(kids) == 6 and sorted(kids[f"tags.{TAG_TRIAL}"].astype(int)) == list(range(6))
    assert set(kids[f"tags.{TAG_STUDY}"]) == {report["study"]}
    states = dict(zip(kids[f"tags.{TAG_TRIAL}"].astype(int), kids[f"tags.{TAG_STATE}"]))
    assert list(states.values()).count("PRUNED") == report["n_trials"]["pruned"]
    assert states[0] == "COMPLETE" and set(states.values()) <= {"COMPLETE", "PRUNED"}
    zero = kids[kids[f"tags.{TAG_TRIAL}"] == "0"].iloc[0]
    assert zero[f"tags.{TAG_DEFAULTS}"] == "true" and float(zero["params.trainer.lr"]) == 0.01
    assert zero["metrics.value"] == pytest.approx(report["default_value"], abs=1e-5)
    assert set(kids["status"]) == {"FINISHED"} and zero["tags.memeops.dvc_stage"] == "tune@text_only"

    # not in tune.variants: an empty tuning file, nothing trained
    other = tune_variant(job.with_(variant="gatedclip"), output=tmp_path / "g.json")
    assert other == {"variant": "gatedclip", "tuned": False, "overrides": {}}
    assert apply_tuned(job.train, "gatedclip", other) is job.train


def test_one_complete_trial_skips_importances_gracefully(tmp_path: Path, cached_features) -> None:
    job = _job(tmp_path, cached_features, "sqlite:///opt.db", n_trials=1)
    report = tune_variant(job, output=tmp_path / "t.json")
    assert report["best_trial"] == 0 and report["improvement"] == 0
    parent = mlflow.search_runs(experiment_names=[job.experiment]).query("`tags.mlflow.parentRunId`.isnull()").iloc[0]
    assert "skipped" in parent["tags.memeops.tune.plot.param_importances"]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent["run_id"], "plots")}
    assert "plots/optimization_history.png" in artifacts


# --------------------------------------------------------------------------- parallel workers


def test_two_worker_processes_share_one_study(tmp_path: Path, cached_features, subprocess_env: dict[str, str]) -> None:
    """Done-when test: N trials over 2 processes on one journal-file storage, no duplicate trial
    numbers, all N as MLflow child runs of the one parent run."""
    n = 4
    job = _job(tmp_path, cached_features, "journal:optuna/{variant}.journal", n_trials=n)
    report = run_parallel(job, n_workers=2, output=tmp_path / "tuning.json", env=subprocess_env, work_dir=tmp_path)
    assert report["n_trials"]["total"] == n

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "optuna" / "text_only.journal")))
    study = optuna.load_study(study_name=report["study"], storage=storage)
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == list(range(n))  # N trials, no duplicates
    assert len({json.dumps(t.params, sort_keys=True) for t in study.trials}) == n  # no repeated suggestion
    run_ids = {t.user_attrs["mlflow_run_id"] for t in study.trials}

    parent = mlflow.search_runs(experiment_names=[job.experiment]).query("`tags.mlflow.parentRunId`.isnull()")
    assert len(parent) == 1 and parent.iloc[0]["tags.memeops.tune.workers"] == "2"
    kids = _children(parent.iloc[0]["run_id"])
    assert set(kids["run_id"]) == run_ids and sorted(kids[f"tags.{TAG_TRIAL}"].astype(int)) == list(range(n))
    assert not kids[f"tags.{TAG_STATE}"].isin(["RUNNING", "FAIL"]).any()
    assert sum(bool(t.user_attrs.get("defaults")) for t in study.trials) == 1  # defaults ran exactly once


def test_flow_shares_a_multiprocess_storage() -> None:
    from flows.tune import PARALLEL_FILE_STORAGE, parallel_storage, tune_flow

    assert parallel_storage(None, "sqlite:///.cache/optuna/{variant}.db") == PARALLEL_FILE_STORAGE  # not sqlite
    assert parallel_storage(None, "postgresql://db/optuna") == "postgresql://db/optuna"
    assert parallel_storage("sqlite:////tmp/x.db", "journal:x") == "sqlite:////tmp/x.db"  # explicit wins
    assert tune_flow.name == "tune"
