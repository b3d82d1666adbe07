"""Stage ``ablate``'s work: train every (arm, seed) job, then the statistics, reports and MLflow runs.

The jobs and their training live in :mod:`memeops.training.ablate`; the statistics in
:mod:`memeops.stats`; the mechanism checks, gate diagnostics and robustness curve in
:mod:`memeops.evaluation.ablation`; the report files in :mod:`memeops.reporting.ablation`. This
module runs them in order under one MLflow parent run and writes every declared output of the
stage (``reports/ablations.{csv,md}``, ``reports/ablate/runs.csv``, ``reports/metrics/ablate.json``,
``reports/plots/ablate/``, ``reports/figures/ablate/``, ``data/ablate/predictions.parquet``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from memeops.config import ConfigError, TrainStageConfig
from memeops.models.base import TaskSpec
from memeops.stats import ArmRun
from memeops.training.ablate import AblateConfig, ArmJob, ArmSpec, arm_variant, ordered_runs, run_jobs
from memeops.training.ablate_reuse import load_train_runs, reusable_jobs
from memeops.training.seed_pool import SeedData

PREDICTIONS = Path("data/ablate/predictions.parquet")


def arm_variants(cfg: AblateConfig) -> set[str]:
    """Every ``train.variants`` entry an arm is built from (their tuned params apply to the arms)."""
    return {arm.variant or group.base for group in cfg.groups.values() for arm in group.arms.values()}


def check_metric_names(cfg: AblateConfig, specs: dict[str, TaskSpec]) -> None:
    """Every metric of ``ablate.metrics`` and of the claims names a task the runs will have; else a
    one-line :class:`ConfigError` (``run_stage`` prints it, exit 2)."""
    from memeops.stats import parse_metric

    for metric in [*cfg.metrics, *(c.metric for c in cfg.claims)]:
        try:
            parse_metric(metric, specs)
        except ValueError as exc:
            raise ConfigError(f"params.yaml ablate: {exc}") from exc


def region_slots(cfg: AblateConfig, train: TrainStageConfig) -> slice | None:
    """Where the region tokens sit in MGMCF's attention: after the T text tokens and the image token,
    to the end (K differs between region views; arms without object-level features have none)."""
    if cfg.robustness is None:
        return None
    base = train.variant(cfg.groups[cfg.robustness.group].base)
    if base.model != "mgmcf":
        return None
    from memeops.data.mgmcf_inputs import MgmcfInputsConfig

    text_len = MgmcfInputsConfig.model_validate(base.inputs).text_encoder.max_length
    return slice(text_len + 1, None)


def run_ablation(cfg: AblateConfig, train: TrainStageConfig, jobs: list[ArmJob], data: SeedData, *,
                 experiment: str, reports: Path = Path("reports")) -> tuple[list[ArmRun], list[Path]]:  # fmt: skip
    """Train ``jobs`` on ``cfg.workers`` processes (one progress line per finished job) inside one
    MLflow parent run (stage ``ablate``), write every output; returns the runs and written files."""
    from memeops.data.consolidate import read_memes
    from memeops.tracking.runs import file_md5, tracked_run
    from memeops.training.experiment import trainable_specs

    memes = read_memes(data.memes_path)
    specs = {s.name: s for s in trainable_specs(memes, train.tasks)[0]}
    check_metric_names(cfg, specs)  # a typo fails now, not after the training
    digest = file_md5(data.memes_path)
    reused = reusable_jobs(cfg, jobs, train)  # the seeds stage train already trained, as they are
    fresh = [j for j in jobs if j not in reused]

    def progress(job: Any, run: Any, n_done: int) -> None:
        print(f"ablate [{n_done:>3}/{len(fresh)}] {job.group}/{job.arm} seed {job.seed}: best epoch "
              f"{run.best_epoch}, {run.seconds:.1f} s", flush=True)  # fmt: skip

    from_train = load_train_runs(reused, cfg.split, specs, memes)  # a missing file fails before any training
    if reused:
        print(f"ablate: {len(reused)} runs read from stage train (same settings and seed): "
              f"{', '.join(sorted({f'{j.group}/{j.arm}' for j in reused}))}", flush=True)  # fmt: skip
    with tracked_run(experiment=experiment, run_name="ablate", stage="ablate", variant=None, seed=None,
                     data_digest=digest, params={"ablate": cfg.model_dump(mode="json")},
                     system_metrics=False):  # fmt: skip
        trained = run_jobs(fresh, data, workers=cfg.workers, split=cfg.split, on_done=progress) if fresh else []
        runs = ordered_runs([*trained, *from_train], cfg)
        # image paths are relative to their source_root, itself relative to the project root (cwd)
        reused_keys = {(j.group, j.arm, j.seed) for j in reused}
        written, metrics = write_outputs(cfg, runs, specs, memes, image_root=Path("."), reports=reports,
                                         region_slots=region_slots(cfg, train), reused=reused_keys,
                                         protocols=protocol_lines(cfg, train))  # fmt: skip
        log_to_mlflow(cfg, runs, jobs, specs, digest, written, metrics, reused=reused_keys)
    return runs, written


def _fresh(*dirs: Path) -> None:
    for d in dirs:  # DVC removes declared outs before a run; a manual run must not mix old files in
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True, exist_ok=True)


def protocol_lines(cfg: AblateConfig, train: TrainStageConfig) -> dict[str, str]:
    """Per group, how its arms were trained, against how the base variant's training stage trains it."""
    lines = {}
    for name, group in cfg.groups.items():
        stage = train.trainer_config(group.base)
        own = f"{stage.epochs} epochs, patience {stage.patience}"
        if not group.trainer.settings():
            lines[name] = f"every arm trains as its variant does in its training stage ({group.base}: {own})."
            continue
        base, vcfg = arm_variant(train, group, ArmSpec(), train.seed)  # the base under the group's protocol
        proto = train.model_copy(update={"variants": {base: vcfg}}).trainer_config(base)
        lines[name] = (f"every arm trains {proto.epochs} epochs, patience {proto.patience} (this group's cheaper protocol; "
                       f"{group.base}'s training stage: {own}), so `{group.reference}` is the full model under this "
                       "protocol, not the leaderboard's model.")  # fmt: skip
    return lines


def write_outputs(cfg: AblateConfig, runs: list[ArmRun], specs: dict[str, TaskSpec], memes: pd.DataFrame,
                  image_root: Path, region_slots: slice | None = None, reports: Path = Path("reports"),
                  predictions: Path = PREDICTIONS, reused: set[tuple[str, str, int]] = frozenset(),
                  protocols: dict[str, str] | None = None) -> tuple[list[Path], dict[str, Any]]:  # fmt: skip
    """The statistics, checks, diagnostics and every declared output; returns the written paths and
    the dvc metrics (``reports/metrics/ablate.json``)."""
    from memeops import stats
    from memeops.evaluation import ablation as ab
    from memeops.reporting import ablation as report
    from memeops.training.ablate import predictions_long, runs_frame

    figures, plots = reports / "figures" / "ablate", reports / "plots" / "ablate"
    runs_csv, metrics_out = reports / "ablate" / "runs.csv", reports / "metrics" / "ablate.json"
    summary = stats.summarise(runs, specs, cfg.metrics, references={g: grp.reference for g, grp in cfg.groups.items()},
                              n_boot=cfg.n_boot, seed=cfg.bootstrap_seed, confidence=cfg.confidence)  # fmt: skip
    claims = ab.check_claims(runs, specs, [c.model_dump() for c in cfg.claims], n_boot=cfg.n_boot,
                             seed=cfg.bootstrap_seed, confidence=cfg.confidence)  # fmt: skip
    _fresh(figures, plots, runs_csv.parent, predictions.parent)
    gate = robustness = None
    if cfg.gate is not None:
        gate_runs = [r for r in runs if r.group == cfg.gate.group and r.arm == cfg.gate.arm]
        gate = ab.gate_report(gate_runs, specs, cfg.gate.tasks, memes, image_root, cfg.gate.examples)
    if cfg.robustness is not None:
        rob = cfg.robustness
        group_runs = [r for r in runs if r.group == rob.group]
        robustness = ab.robustness_report(group_runs, specs, summary, rob.levels, rob.fallback, rob.metric,
                                          rob.group, region_slots, n_boot=cfg.n_boot, seed=cfg.bootstrap_seed,
                                          confidence=cfg.confidence)  # fmt: skip
    descriptions = {f"{g}/{a}": arm.description for g, grp in cfg.groups.items() for a, arm in grp.arms.items()}
    written = report.write_ablation_reports(summary, claims, reports, headline=cfg.metrics[0], gate=gate,
                                            robustness=robustness, figures_dir=figures, plots_dir=plots,
                                            descriptions=descriptions, protocols=protocols)  # fmt: skip
    runs_frame(runs, reused).to_csv(runs_csv, index=False)
    predictions_long(runs).to_parquet(predictions, index=False)
    metrics_out.parent.mkdir(parents=True, exist_ok=True)
    metrics = report.ablation_metrics_json(summary, claims)
    metrics_out.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return [*written, runs_csv, predictions, metrics_out], metrics


def log_to_mlflow(cfg: AblateConfig, runs: list[ArmRun], jobs: list[ArmJob], specs: dict[str, TaskSpec],
                  digest: str, written: list[Path], metrics: dict[str, Any],
                  reused: set[tuple[str, str, int]] = frozenset()) -> None:  # fmt: skip
    """Child runs of the active (parent) run, one per arm and seed: overrides, test metrics, best
    epoch (a run read from stage train is tagged ``memeops.reused_from=train``); then the summary
    metrics and the written files on the parent."""
    import mlflow  # heavy: only when a run is logged

    from memeops.evaluation.metrics import all_metrics
    from memeops.tracking.runs import flatten_params, lineage_tags, log_metrics

    by_key = {(j.group, j.arm, j.seed): j for j in jobs}
    for run in runs:
        job = by_key[(run.group, run.arm, run.seed)]
        vcfg = job.train.variant(job.variant)
        tags = lineage_tags(stage="ablate", variant=job.variant, seed=run.seed, data_digest=digest)
        tags.update({"memeops.ablation_group": run.group, "memeops.ablation_arm": run.arm})
        if (run.group, run.arm, run.seed) in reused:
            tags["memeops.reused_from"] = "train"
        with mlflow.start_run(run_name=f"{run.group}/{run.arm}/seed{run.seed}", nested=True, tags=tags):
            mlflow.log_params(flatten_params({"variant": job.variant, "model": vcfg.model, "config": vcfg.config,
                                              "inputs": vcfg.inputs, "trainer": vcfg.trainer}))  # fmt: skip
            run_specs = [specs[t] for t in run.predictions.probs if t in specs]
            log_metrics({cfg.split: all_metrics(run.predictions, run_specs), "best_epoch": run.best_epoch,
                         "seconds": run.seconds})  # fmt: skip
    log_metrics(metrics)
    for path in written:
        if path.is_file() and path.suffix in {".csv", ".md", ".json", ".png"}:
            mlflow.log_artifact(str(path), artifact_path="ablate")
