"""Stage ``tune``'s work: the tuning job params.yaml describes, a study or one worker's trials.

``stages/tune.py`` parses the command line; this module builds the :class:`TuneJob` of a variant from
the :class:`~memeops.stage_context.StageContext` (the same meme table, feature cache and resolved
encoder stage ``train`` uses), runs the whole study (:func:`memeops.training.tune.tune_variant`) or
one extra worker on a shared study, and words the summary line. flows/tune.py builds its jobs here too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from memeops.stage_context import StageContext
from memeops.training.tune import tune_variant
from memeops.training.tune_config import TuneConfig
from memeops.training.tune_study import TuneJob, load_data, resolve_storage
from memeops.training.tune_trials import run_trials, trial_lineage

# Variants tuned by a stage of their own in dvc.yaml (not the tune@<variant> matrix).
DVC_STAGES = {"mgmcf": "tune_mgmcf"}


def tune_job(variant: str, ctx: StageContext, *, storage: str | None = None) -> TuneJob:
    """The tuning job of ``variant`` as params.yaml describes it (the encoder resolved as stage train does)."""
    train = ctx.train
    train.variant(variant)  # fail fast on an unknown variant
    tune = ctx.section("tune", TuneConfig)
    unknown = [v for v in tune.variants if v not in train.variants]
    if unknown:
        raise ValueError(f"tune.variants: {unknown} not in train.variants ({', '.join(train.variants)})")
    encoder = ctx.encoder_config
    mgmcf = train.variant(variant).model == "mgmcf"
    regions = {k: v.model_dump(mode="json") if mgmcf else None for k, v in ctx.region_inputs().items()}
    return TuneJob(variant=variant, train=train, tune=tune, memes_path=str(ctx.memes_path),
                   feature_dir=str(ctx.feature_dir), encoder=encoder.model_dump(mode="json"), **regions,
                   storage=storage or "", stage=DVC_STAGES.get(variant, f"tune@{variant}"))  # fmt: skip


def run_study(job: TuneJob, reports: Path = Path("reports")) -> dict[str, Any]:
    """A fresh study of ``tune.n_trials`` trials; writes ``reports/tuning/<variant>.json`` and
    ``reports/plots/tune/<variant>.csv``; returns the tuning report."""
    return tune_variant(job, output=reports / "tuning" / f"{job.variant}.json",
                        plot_csv=reports / "plots" / "tune" / f"{job.variant}.csv")  # fmt: skip


def run_worker(job: TuneJob, *, study_name: str | None, n_trials: int | None, parent_run_id: str | None,
               worker_index: int, storage: str | None) -> str:  # fmt: skip
    """``n_trials`` more trials on the existing study ``study_name`` (shared storage); returns the
    summary line."""
    if not study_name or n_trials is None:
        raise ValueError("--worker needs --study-name and --n-trials")
    job = job.with_(study_name=study_name, parent_run_id=parent_run_id,
                    storage=resolve_storage(storage or job.tune.storage, job.variant))  # fmt: skip
    data = load_data(job)
    study = run_trials(job, data, n_trials, trial_lineage(job, data), worker=worker_index)
    return f"tune {job.variant} worker: {n_trials} trials; study {job.study_name} has {len(study.trials)}"


def summary_line(report: dict[str, Any]) -> str:
    """The stage's last line: best value vs the defaults, trial counts, the overrides train will use."""
    n = report["n_trials"]
    return (f"tune {report['variant']}: best val {report['monitor']} {report['best_value']} (trial "
            f"{report['best_trial']}) vs defaults {report['default_value']}; {n['complete']} complete, "
            f"{n['pruned']} pruned, {n['fail']} failed; overrides {report['overrides']}")  # fmt: skip
