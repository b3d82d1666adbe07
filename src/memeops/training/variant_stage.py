"""Stages ``train`` / ``train_mgmcf`` as a library call: one variant over ``train.seeds``.

:func:`run_variant`, in one process:

1. trains the variant once per seed, the seeds side by side in worker processes (``train.workers``,
   :mod:`memeops.training.seed_pool`) (:func:`memeops.training.experiment.train_variant`: fit on
   TRAIN, select the epoch on VAL, score val / test / test_unseen once), each seed in its own
   nested MLflow run named ``<variant>-seed<seed>`` (tags ``memeops.variant`` and ``memeops.seed``,
   per-epoch metrics as they happen, its per-meme predictions as ``predictions/<split>.parquet``);
2. picks the registered seed on validation only (:func:`memeops.training.seed_runs.select_seed`,
   the median-validation seed) and tags its run ``memeops.selection_rule`` /
   ``memeops.selected_seed``; only that seed is packaged (``models/<variant>/`` and an MLflow
   pyfunc registered as ``memeops-<variant>`` with alias ``challenger``);
3. summarises the seeds on every evaluation split (mean +- std over seeds, 95% intervals that
   resample seeds and test memes together) into ``reports/metrics/<variant>.json`` -- the split
   metrics there are means over seeds; the registered seed's own numbers are under ``selected``;
4. writes every seed's per-meme test predictions to ``data/train/<variant>.parquet`` (stage
   ``compare`` tests variants against each other on them, paired over seeds and memes).

The parent run (``<variant>``, stage tags) holds the seed means and the summary file.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from memeops.config.train import TrainStageConfig
from memeops.data.consolidate import read_memes
from memeops.data.features import FeatureStore
from memeops.models.clip import load_clip
from memeops.serving.pyfunc import log_pyfunc, save_model_dir
from memeops.stats import ArmRun
from memeops.tracking import plots
from memeops.tracking.registry import register_and_alias
from memeops.tracking.runs import fail_runs, file_md5, log_dataset, log_metrics, open_run, tracked_run
from memeops.training.experiment import (
    EVAL_SPLITS,
    TEST_SPLITS,
    Family,
    family_inputs,
    history_csv,
    rounded_metrics,
    split_meme_ids,
    train_variant,
    variant_specs,
)
from memeops.training.seed_pool import SeedData, SeedJob, SeedOutcome, SeedRunner, seed_runner
from memeops.training.seed_runs import SELECTION_RULE, predictions_table, select_seed, summarise_seeds


def validation_passed(path: Path) -> str:
    """``"true"`` / ``"false"`` from the validate stage's report, ``"unknown"`` without one."""
    try:
        return str(bool(json.loads(Path(path).read_text(encoding="utf-8"))["success"])).lower()
    except (OSError, ValueError, KeyError):
        return "unknown"


def seed_means(outcomes: list[SeedOutcome]) -> dict[str, dict[str, float | None]]:
    """``{split: {"task/metric": mean over seeds}}`` of the point metrics (NaN seeds skipped)."""
    out: dict[str, dict[str, float]] = {}
    for split in outcomes[0].result.metrics:
        keys = outcomes[0].result.metrics[split]
        means = {}
        for key in keys:
            values = [o.result.metrics[split].get(key) for o in outcomes]
            values = [float(v) for v in values if v is not None and not math.isnan(v)]
            means[key] = statistics.fmean(values) if values else float("nan")
        out[split] = rounded_metrics(means)
    return out


def best_val_scores(fit: Any) -> dict[str, float]:
    """``{task/metric: value}``: the macro-F1 and AUROC scores on VAL at the selected epoch."""
    best = fit.history[fit.best_epoch - 1] if fit.history and fit.best_epoch else {}
    return {k.removeprefix("val/"): float(v) for k, v in best.items()
            if k.startswith("val/") and k.endswith(("macro_f1", "auroc"))}  # fmt: skip


def seed_report(variant: str, cfg: TrainStageConfig, outcomes: list[SeedOutcome], selected: SeedOutcome,
                memes: pd.DataFrame) -> tuple[dict[str, Any], pd.DataFrame]:  # fmt: skip
    """The variant's report (``reports/metrics/<variant>.json``) and its per-seed predictions table."""
    specs = selected.result.specs
    runs_by_split: dict[str, list[ArmRun]] = {}
    summary: dict[str, dict[str, Any]] = {}
    for split in (s for s in EVAL_SPLITS if s in selected.result.predictions):
        runs = [ArmRun("train", variant, o.seed, o.result.predictions[split], {}, o.result.fit.best_epoch, 0.0)
                for o in outcomes]  # fmt: skip
        for run in runs:  # the batches may not carry ids: the split's memes in table order
            run.predictions.meme_ids = split_meme_ids(memes, split, run.predictions)
        if split in TEST_SPLITS:
            runs_by_split[split] = runs
        stats = summarise_seeds(runs, specs, n_boot=cfg.bootstrap_samples, seed=cfg.seed)
        summary[split] = {metric: st.as_json() for metric, st in stats.items()}
    report = selected.result.report()
    for split in summary:
        report.pop(split, None)
    monitor = selected.result.fit.monitor
    report.update({
        **seed_means(outcomes),
        "seeds": [o.seed for o in outcomes],
        "selection": {"rule": SELECTION_RULE, "monitor": f"val/{monitor}", "selected_seed": selected.seed,
                      "val": {str(o.seed): o.result.fit.best_value for o in outcomes}},
        "selected": {split: rounded_metrics(m) for split, m in selected.result.metrics.items()},
        # what stage ablate needs to reuse a seed as an arm's run (memeops.training.ablate_reuse)
        "seed_runs": {str(o.seed): {"best_epoch": o.result.fit.best_epoch, "val": best_val_scores(o.result.fit)}
                      for o in outcomes},
        "seed_summary": summary,
        "ci95": {split: {m: v["ci95"] for m, v in block.items()} for split, block in summary.items()
                 if split in TEST_SPLITS},
    })  # fmt: skip
    return report, predictions_table(runs_by_split)


def package_selected(variant: str, cfg: TrainStageConfig, encoder_cfg: Any, selected: SeedOutcome,
                     family: Family | None, models_dir: Path) -> dict[str, Any] | None:  # fmt: skip
    """In the selected seed's run: test plots, ``models/<variant>/``, the pyfunc and its registration."""
    result = selected.result
    variant_cfg = cfg.variant(variant)
    client = mlflow.MlflowClient()
    client.set_tag(selected.run_id, "memeops.selection_rule", SELECTION_RULE)
    client.set_tag(selected.run_id, "memeops.selected_seed", str(selected.seed))
    with mlflow.start_run(run_id=selected.run_id, nested=True):
        with tempfile.TemporaryDirectory(prefix="memeops-train-") as tmp:
            if "test" in result.predictions:  # confusion matrices + ROC curves of the final model on test
                for path in plots.evaluation_plots(result.predictions["test"], result.specs, Path(tmp) / "test"):
                    mlflow.log_artifact(str(path), artifact_path="plots/test")
            clip_dir = Path(tmp) / "clip"  # the encoder as the packer reads it: clip_config.json + files
            clip_dir.mkdir()
            (clip_dir / "clip_config.json").write_text(encoder_cfg.model_dump_json(), encoding="utf-8")
            if (models_dir / variant).exists():  # a previous run's folder (DVC removes it on repro)
                shutil.rmtree(models_dir / variant)
            packer = family.packer(clip_dir) if family is not None else None
            model_dir = save_model_dir(models_dir / variant, result.model.cpu(), variant_cfg.model, result.model_config,
                                       result.specs, clip_dir, inputs_packer=packer)  # fmt: skip
        if not cfg.register_models:
            return None
        info = log_pyfunc(model_dir, registered_model_name=f"memeops-{variant}")
        version = register_and_alias(info, f"memeops-{variant}", alias="challenger",
                                     tags={"memeops.selection_rule": SELECTION_RULE,
                                           "memeops.selected_seed": str(selected.seed)})  # fmt: skip
    return {"name": f"memeops-{variant}", "version": int(version), "alias": "challenger",
            "seed": selected.seed, "rule": SELECTION_RULE}  # fmt: skip


@dataclass
class VariantPlan:
    """One variant's seed jobs and the arguments of its MLflow run (the seeds' parent)."""

    variant: str
    family: Family | None
    run_args: dict[str, Any]
    jobs: list[SeedJob]
    parent_run_id: str | None  # opened ahead for worker seeds to nest under; None: opened when finished


def plan_variant(variant: str, cfg: TrainStageConfig, runner: SeedRunner, *, memes_path: Path,
                 validation_report: Path, stage: str | None = None,
                 work_dir: Path = Path(".cache/train")) -> VariantPlan:  # fmt: skip
    """The variant's seed jobs; with worker processes its MLflow run is opened now (not active) so
    the seeds can nest under it whenever a worker gets to them."""
    loaded = runner.context
    encoder = loaded.encoder
    digest = file_md5(memes_path)
    variant_cfg = cfg.variant(variant)
    family = loaded.family(variant, cfg)
    fingerprint = {"data": digest, "features": encoder.spec_key, "variant": variant_cfg.model_dump(),
                   "tasks": cfg.tasks_for(variant), **({"inputs": family.fingerprint()} if family is not None else {})}  # fmt: skip
    params = {"variant": variant, "model": variant_cfg.model, "model_config": variant_cfg.config, "seeds": cfg.seeds,
              "tasks": cfg.tasks_for(variant), "encoder": loaded.data.encoder_cfg.model_dump(),
              "feature_spec": encoder.spec_key, **({"inputs": variant_cfg.inputs} if variant_cfg.inputs else {})}  # fmt: skip
    tags = {"memeops.validation_passed": validation_passed(validation_report), "memeops.feature_spec": encoder.spec_key,
            "memeops.run_kind": "model"}  # fmt: skip
    run_args = {"experiment": cfg.experiment, "stage": stage or "train", "variant": variant,
                "data_digest": digest, "params": params, "extra_tags": tags}  # fmt: skip
    parent_id = None if runner.in_process else open_run(**run_args, run_name=variant, seed=None)
    jobs = [SeedJob(variant, seed, cfg, fingerprint, work_dir, run_args, parent_id) for seed in cfg.seeds]
    return VariantPlan(variant, family, run_args, jobs, parent_id)


def finish_variant(plan: VariantPlan, cfg: TrainStageConfig, encoder_cfg: Any, runner: SeedRunner,
                   queued: list[Future] | None, *, reports_dir: Path = Path("reports"),
                   models_dir: Path = Path("models"), predictions_dir: Path = Path("data/train")) -> dict[str, Any]:  # fmt: skip
    """In the variant's run: wait for (or, in process, train) its seeds, then select, summarise,
    report, track and register it (see the module docstring)."""
    variant, memes = plan.variant, runner.context.memes
    digest = plan.run_args["data_digest"]
    with tracked_run(**plan.run_args, run_name=variant, seed=None, run_id=plan.parent_run_id):
        for split in ("train", "val", "test"):
            log_dataset(memes[memes["split"] == split], name=f"memes-{split}", digest=digest, context=split)
        outcomes = runner.collect(plan.jobs, queued)
        mode = cfg.trainer_config(variant).monitor_mode
        chosen = select_seed({o.seed: o.result.fit.best_value for o in outcomes}, mode)
        selected = next(o for o in outcomes if o.seed == chosen)
        report, table = seed_report(variant, cfg, outcomes, selected, memes)

        metrics_path = reports_dir / "metrics" / f"{variant}.json"
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        predictions_dir.mkdir(parents=True, exist_ok=True)
        table.to_parquet(predictions_dir / f"{variant}.parquet", index=False)
        curve_csv = history_csv(selected.result.fit.history, reports_dir / "plots" / "train" / f"{variant}.csv")
        log_metrics({split: report[split] for split in selected.result.metrics})  # seed means
        mlflow.set_tags({"memeops.selected_seed": str(chosen), "memeops.selection_rule": SELECTION_RULE})
        mlflow.log_artifact(str(metrics_path), artifact_path="metrics")
        mlflow.log_artifact(str(curve_csv), artifact_path="curves")
        registered = package_selected(variant, cfg, encoder_cfg, selected, plan.family, models_dir)
    if registered is not None:
        report["registered"] = registered
    return report


def run_variants(variants: Sequence[str], cfg: TrainStageConfig, encoder_cfg: Any, runner: SeedRunner, *,
                 memes_path: Path, validation_report: Path, stages: Mapping[str, str] | None = None,
                 work_dir: Path = Path(".cache/train"), **paths: Path) -> Iterator[tuple[str, dict[str, Any]]]:  # fmt: skip
    """``(variant, report)`` for each of ``variants`` in order, every variant's seeds queued on the
    workers up front: while this process packages and registers one variant, the workers train the
    next ones, and a core a finishing variant leaves free goes to the next variant's seeds (each seed
    trains as it would alone: the outputs do not change). ``stages``: the DVC stage per variant
    (default ``train``); ``paths``: ``reports_dir`` / ``models_dir`` / ``predictions_dir`` overrides.
    Runs opened ahead and never reached (a variant failed) end FAILED."""
    plans = [plan_variant(v, cfg, runner, memes_path=memes_path, validation_report=validation_report,
                          stage=(stages or {}).get(v), work_dir=work_dir) for v in variants]  # fmt: skip
    queued = [runner.submit(plan.jobs) for plan in plans]
    try:
        for plan, futures in zip(plans, queued):
            yield plan.variant, finish_variant(plan, cfg, encoder_cfg, runner, futures, **paths)
    finally:
        fail_runs([plan.parent_run_id for plan in plans if plan.parent_run_id is not None])


def run_variant(
    variant: str,
    cfg: TrainStageConfig,
    encoder_cfg: Any,
    *,
    memes_path: Path,
    feature_dir: Path,
    validation_report: Path,
    reports_dir: Path = Path("reports"),
    models_dir: Path = Path("models"),
    predictions_dir: Path = Path("data/train"),
    work_dir: Path = Path(".cache/train"),
    region_features: Any = None,
    regions: Any = None,
    stage: str | None = None,
    runner: SeedRunner | None = None,
) -> dict[str, Any]:
    """Train every seed of ``train.seeds``, select, summarise, report, track and register one variant.

    ``region_features`` / ``regions`` (``RegionFeaturesConfig`` / ``RegionsConfig``) are needed by
    MGMCF variants only. ``stage`` is the DVC stage the runs are tagged with (default ``train``).
    ``runner`` trains the seeds (:func:`memeops.training.seed_pool.seed_runner`: worker processes, its
    data loaded once for several variants); None: one made here, training in this process.
    """
    if runner is None:
        data = SeedData(memes_path, feature_dir, encoder_cfg, region_features, regions)
        with seed_runner(data, workers=1) as own:
            return run_variant(variant, cfg, encoder_cfg, memes_path=memes_path, feature_dir=feature_dir,
                               validation_report=validation_report, reports_dir=reports_dir, models_dir=models_dir,
                               predictions_dir=predictions_dir, work_dir=work_dir, stage=stage, runner=own)  # fmt: skip
    plan = plan_variant(variant, cfg, runner, memes_path=memes_path, validation_report=validation_report,
                        stage=stage, work_dir=work_dir)  # fmt: skip
    try:
        return finish_variant(plan, cfg, encoder_cfg, runner, runner.submit(plan.jobs), reports_dir=reports_dir,
                              models_dir=models_dir, predictions_dir=predictions_dir)  # fmt: skip
    finally:
        if plan.parent_run_id is not None:
            fail_runs([plan.parent_run_id])


def follow_variant(variant: str, cfg: TrainStageConfig, encoder_cfg: Any, rank: int, *, memes_path: Path,
                   feature_dir: Path, region_features: Any = None, regions: Any = None) -> None:  # fmt: skip
    """A DDP rank > 0: the model, datasets and trainer config rank 0's :func:`run_variant` builds (the
    same :func:`train_variant` calls, seed by seed), in a throw-away run dir the trainer never writes
    to on this rank. Nothing is tracked, reported, saved or registered here."""
    memes = read_memes(memes_path)
    encoder = load_clip(encoder_cfg)
    store = FeatureStore(feature_dir, encoder.spec_key)
    specs, _ = variant_specs(variant, memes, cfg)
    family = family_inputs(cfg.variant(variant), memes, store, specs, encoder, region_features, regions)
    for seed in cfg.seeds:
        with tempfile.TemporaryDirectory(prefix=f"memeops-rank{rank}-") as tmp:
            train_variant(variant, memes, store, encoder.dim, cfg, Path(tmp),
                          inputs=family.inputs if family is not None else None, seed=seed)  # fmt: skip
