"""Stage ``tune`` (a DVC matrix over the variants; ``tune_mgmcf`` for MGMCF): one Optuna study per variant.

``python -m stages.tune <variant>``: a fresh study of ``tune.n_trials`` trials (trial 0 = the
variant's untuned defaults), each trained under the per-trial budget (``tune.epochs`` /
``tune.patience``) and scored on VAL only; one MLflow parent run with a child run per trial; writes
``reports/tuning/<variant>.json`` (the overrides stage ``train`` merges) and
``reports/plots/tune/<variant>.csv``. A variant not listed in ``tune.variants`` gets a file with no
overrides (it trains with its params unchanged). See memeops.training.tune_stage, memeops.training.tune and docs/tuning.md.

``python -m stages.tune <variant> --worker --n-trials K --study-name S [--parent-run-id R]``: one
extra worker on an existing study (shared ``tune.storage``); flows/tune.py does this for you.
"""

from __future__ import annotations

import argparse
import json

from memeops.stage_context import StageContext
from stages import run_stage


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
    ctx, variant = StageContext(), args.variant
    if variant not in ctx.raw("train").get("variants", {}):
        raise ValueError(f"unknown variant {variant!r}; train.variants has: {', '.join(ctx.raw('train')['variants'])}")
    if not args.worker and variant not in (ctx.raw("tune").get("variants") or []):
        # Fast path (no torch import): the variant trains with its params unchanged.
        out, plot = ctx.reports / "tuning" / f"{variant}.json", ctx.reports / "plots" / "tune" / f"{variant}.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"overrides": {}, "tuned": False, "variant": variant}, indent=2) + "\n", encoding="utf-8")
        plot.parent.mkdir(parents=True, exist_ok=True)  # the declared plot output exists for every variant
        plot.write_text("trial,state,value,best_value,epochs\n", encoding="utf-8")
        print(f"tune {variant}: not in tune.variants; no overrides")
        return 0
    from memeops.training.tune_stage import run_study, run_worker, summary_line, tune_job  # torch: tuned only

    job = tune_job(variant, ctx, storage=args.storage)
    if args.worker:
        print(run_worker(job, study_name=args.study_name, n_trials=args.n_trials, parent_run_id=args.parent_run_id,
                         worker_index=args.worker_index, storage=args.storage))  # fmt: skip
        return 0
    print(summary_line(run_study(job, ctx.reports)))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage("tune", main))
