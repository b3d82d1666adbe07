"""Stage ``tune`` (a DVC matrix over the variants; ``tune_mgmcf`` for MGMCF): one Optuna study per variant.

``python -m stages.tune <variant>``: a fresh study of ``tune.n_trials`` trials (trial 0 = the
variant's untuned defaults), each trained under the per-trial budget (``tune.epochs`` /
``tune.patience``) and scored on VAL only; one MLflow parent run with a child run per trial; writes
``reports/tuning/<variant>.json`` (the overrides stage ``train`` merges) and
``reports/plots/tune/<variant>.csv``. A variant not listed in ``tune.variants`` gets a file with no
overrides (it trains with its params unchanged). See memeops.training.tune and docs/tuning.md.

``python -m stages.tune <variant> --worker --n-trials K --study-name S [--parent-run-id R]``: one
extra worker on an existing study (shared ``tune.storage``); flows/tune.py does this for you.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from memeops.config import Params, load_params
from stages import run_stage

if TYPE_CHECKING:
    from memeops.training.tune_study import TuneJob

# Variants tuned by a stage of their own in dvc.yaml (not the tune@<variant> matrix).
DVC_STAGES = {"mgmcf": "tune_mgmcf"}
OUTPUT_DIR = Path("reports/tuning")
PLOTS_DIR = Path("reports/plots/tune")


def job_from_params(variant: str, params: Params, *, storage: str | None = None) -> TuneJob:
    """The tuning job of ``variant`` as params.yaml describes it (the encoder resolved as stage train does)."""
    from memeops.data.features import FeatureConfig
    from memeops.data.mgmcf_inputs import RegionFeaturesConfig
    from memeops.models.clip import ClipEncoderConfig, resolve_encoder_config
    from memeops.training.experiment import TrainStageConfig
    from memeops.training.tune_config import TuneConfig
    from memeops.training.tune_study import TuneJob
    from memeops.vision.extract import RegionsConfig

    train = params.section("train", TrainStageConfig)
    train.variant(variant)  # fail fast on an unknown variant
    tune = params.section("tune", TuneConfig)
    unknown = [v for v in tune.variants if v not in train.variants]
    if unknown:
        raise ValueError(f"tune.variants: {unknown} not in train.variants ({', '.join(train.variants)})")
    encoder = resolve_encoder_config(params.section("encoders.clip", ClipEncoderConfig))
    mgmcf = train.variant(variant).model == "mgmcf"
    return TuneJob(
        variant=variant, train=train, tune=tune,
        memes_path=str(Path(params.data.output_dir) / "memes.parquet"),
        feature_dir=params.section("features", FeatureConfig).cache_dir,
        encoder=encoder.model_dump(mode="json"),
        region_features=params.section("region_features", RegionFeaturesConfig).model_dump(mode="json") if mgmcf else None,
        regions=params.section("regions", RegionsConfig).model_dump(mode="json") if mgmcf else None,
        storage=storage or "", stage=DVC_STAGES.get(variant, f"tune@{variant}"),
    )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.tune")
    parser.add_argument("variant", help="a key of params train.variants")
    parser.add_argument("--worker", action="store_true", help="only run trials on an existing study")
    parser.add_argument("--n-trials", type=int, default=None, help="worker: trials this process runs")
    parser.add_argument("--study-name", default=None, help="worker: the shared study")
    parser.add_argument("--parent-run-id", default=None, help="worker: MLflow parent run of the trials")
    parser.add_argument("--worker-index", type=int, default=1, help="worker: offsets the sampler seed")
    parser.add_argument("--storage", default=None, help="override tune.storage (e.g. an RDB URL)")
    args = parser.parse_args()
    params = load_params()
    raw = params.model_dump()
    if args.variant not in (raw.get("train") or {}).get("variants", {}):
        raise ValueError(f"unknown variant {args.variant!r}; train.variants has: {', '.join(raw['train']['variants'])}")
    if not args.worker and args.variant not in ((raw.get("tune") or {}).get("variants") or []):
        # Fast path (no torch import): the variant trains with its params unchanged.
        out = OUTPUT_DIR / f"{args.variant}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"overrides": {}, "tuned": False, "variant": args.variant}, indent=2) + "\n", encoding="utf-8")
        PLOTS_DIR.mkdir(parents=True, exist_ok=True)  # the declared plot output exists for every variant
        (PLOTS_DIR / f"{args.variant}.csv").write_text("trial,state,value,best_value,epochs\n", encoding="utf-8")
        print(f"tune {args.variant}: not in tune.variants; no overrides")
        return 0
    from memeops.training.tune import tune_variant
    from memeops.training.tune_study import load_data
    from memeops.training.tune_trials import run_trials

    job = job_from_params(args.variant, params, storage=args.storage)
    if args.worker:
        from memeops.training.tune_study import resolve_storage
        from memeops.training.tune_trials import trial_lineage

        if not args.study_name or args.n_trials is None:
            raise ValueError("--worker needs --study-name and --n-trials")
        job = job.with_(study_name=args.study_name, parent_run_id=args.parent_run_id,
                        storage=resolve_storage(args.storage or job.tune.storage, args.variant))  # fmt: skip
        data = load_data(job)
        study = run_trials(job, data, args.n_trials, trial_lineage(job, data), worker=args.worker_index)
        print(f"tune {args.variant} worker: {args.n_trials} trials; study {job.study_name} has {len(study.trials)}")
        return 0
    report = tune_variant(job, output=OUTPUT_DIR / f"{args.variant}.json", plot_csv=PLOTS_DIR / f"{args.variant}.csv")
    n = report["n_trials"]
    print(f"tune {args.variant}: best val {report['monitor']} {report['best_value']} (trial {report['best_trial']}) "
          f"vs defaults {report['default_value']}; {n['complete']} complete, {n['pruned']} pruned, {n['fail']} failed; "
          f"overrides {report['overrides']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage("tune", main))
