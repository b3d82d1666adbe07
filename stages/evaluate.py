"""Stage ``evaluate``: every variant's registered ``challenger`` and ``champion`` on test and test_unseen.

Reads, never re-scores: each version's source run logged its per-meme predictions when it was
trained (``predictions/<split>.parquet``); they are joined with the meme table and evaluated by
:mod:`memeops.evaluation.evaluate` (per-task metrics with bootstrap 95% intervals, expected
calibration error, breakdowns by source / language / image style). Writes

* ``reports/evaluation.json`` -- variant -> versions -> alias -> splits -> split -> {overall,
  summary, by_source, by_language, by_style, ece, notes};
* ``reports/evaluation.md`` -- the readable summary and tables;
* ``reports/metrics/evaluate.json`` -- the headline numbers (DVC metrics: variant -> alias ->
  split -> mean primary metric, mean macro-F1, pooled ECE);
* ``reports/figures/evaluate/<variant>_reliability.png`` -- one reliability diagram per variant;

and logs one MLflow run (stage ``evaluate``, the lineage tags of every stage) with those files as
artifacts and the headline numbers as metrics. Settings: ``params.evaluate``
(:class:`memeops.evaluation.evaluate.EvaluateConfig`: variants, splits, n_boot, seed, ece_bins,
min_group_size); ``variants`` unset means every ``train.variants`` entry plus ``vlm``.

Run from the project root: ``python -m stages.evaluate`` (``--no-mlflow`` skips the run, e.g. for
a look at the numbers without a tracking record).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from memeops.config import load_params
from memeops.evaluation.evaluate import (
    EvaluateConfig,
    EvaluationError,
    evaluate_variants,
    evaluated_splits,
    headline_metrics,
)
from memeops.reporting.evaluation import markdown_report, plot_reliability
from memeops.tracking.runs import file_md5
from stages import run_stage

__all__ = ["EvaluateConfig", "main"]

REPORTS = Path("reports")
JSON_OUT = REPORTS / "evaluation.json"
MD_OUT = REPORTS / "evaluation.md"
METRICS_OUT = REPORTS / "metrics" / "evaluate.json"
FIGURES = REPORTS / "figures" / "evaluate"


def default_variants(params: object) -> list[str]:
    """Every ``train.variants`` entry (MGMCF included) and the VLM (``memeops-vlm``)."""
    train = params.model_dump(by_alias=True).get("train") or {}  # type: ignore[attr-defined]
    names = list((train.get("variants") or {}).keys())
    return names + (["vlm"] if "vlm" not in names else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-mlflow", action="store_true", help="write the reports, log no MLflow run")
    args = parser.parse_args(argv)
    start = time.perf_counter()

    import pandas as pd

    params = load_params()
    cfg = params.section("evaluate", EvaluateConfig)
    experiment = (params.model_dump(by_alias=True).get("train") or {}).get("experiment", "memeops")
    variants = cfg.variants_or(default_variants(params))
    memes_path = Path(params.data.output_dir) / "memes.parquet"
    if not memes_path.is_file():
        raise FileNotFoundError(f"{memes_path}: no meme table (run stage consolidate first)")
    digest = file_md5(memes_path)
    memes = pd.read_parquet(memes_path, columns=["meme_id", "split", "source", "language", "extra"])

    try:
        report, curves = evaluate_variants(variants, memes, cfg, data_digest=digest)
    except EvaluationError as exc:
        print(f"stage evaluate: {exc}", file=sys.stderr)
        return 2

    if FIGURES.exists():  # stale diagrams of variants no longer evaluated must not linger
        shutil.rmtree(FIGURES)
    FIGURES.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Path] = {}
    for variant, variant_curves in curves.items():
        if variant_curves:
            figures[variant] = plot_reliability(
                variant_curves, FIGURES / f"{variant}_reliability.png",
                f"{report['variants'][variant]['registered_model']}: reliability (pooled over tasks)")  # fmt: skip
    JSON_OUT.write_text(
        json.dumps(report, indent=1, sort_keys=False, allow_nan=False) + "\n", encoding="utf-8"
    )
    MD_OUT.write_text(markdown_report(report, {v: p.relative_to(REPORTS).as_posix() for v, p in figures.items()}),
                      encoding="utf-8")  # fmt: skip
    headline = headline_metrics(report)
    METRICS_OUT.parent.mkdir(parents=True, exist_ok=True)
    METRICS_OUT.write_text(json.dumps(headline, indent=2, allow_nan=False) + "\n", encoding="utf-8")

    evaluated = evaluated_splits(report)
    if not args.no_mlflow:
        _log_run(experiment, cfg, variants, digest, report, headline, list(figures.values()))
    seconds = time.perf_counter() - start
    for variant, label, version, split, block in evaluated:
        sm = block["summary"]
        ci = sm.get("mean_primary_ci95")
        interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        primary = "–" if sm["mean_primary"] is None else f"{sm['mean_primary']:.3f}"
        ece = "–" if sm["ece_pooled"] is None else f"{sm['ece_pooled']:.3f}"
        print(
            f"{variant:>13} {label:<20} v{version:<4} {split:<12} mean primary {primary}{interval}  ECE {ece}"
        )
    missing = [(v, e["version"], s) for v, vb in report["variants"].items() for e in vb["versions"].values()
               if "splits" in e for s, b in e["splits"].items() if b.get("status") != "ok"]  # fmt: skip
    for variant, version, split in missing:
        print(f"{variant:>13} v{version}: no {split} predictions logged (see reports/evaluation.md)")
    no_champion = [
        v
        for v, vb in report["variants"].items()
        if vb["versions"]["champion"].get("status") == "absent" and vb["versions"]["challenger"].get("splits")
    ]
    if no_champion:
        print(f"no champion yet (challenger only): {', '.join(no_champion)}")
    for variant, vb in report["variants"].items():
        if not any(e.get("splits") for e in vb["versions"].values()):
            print(f"{variant:>13}: {'; '.join(vb['notes']) or 'nothing to evaluate'}")
    print(f"evaluate: {len(evaluated)} (version, split) pairs of {len(variants)} variants in {seconds:.1f} s "
          f"-> {JSON_OUT}, {MD_OUT}, {FIGURES}/")  # fmt: skip
    if not evaluated:
        print("stage evaluate: no registered version has logged test predictions: retrain the variants "
              "(stages train / train_mgmcf / train_vlm)", file=sys.stderr)  # fmt: skip
    return 0


def _log_run(experiment: str, cfg: EvaluateConfig, variants: list[str], digest: str, report: dict,
             headline: dict, figures: list[Path]) -> None:  # fmt: skip
    import mlflow

    from memeops.tracking.runs import log_metrics, tracked_run

    versions = {v: {alias: e.get("version") for alias, e in vb["versions"].items() if e.get("version")}
                for v, vb in report["variants"].items()}  # fmt: skip
    runs = {v: sorted({e["run_id"] for e in vb["versions"].values() if e.get("run_id")})
            for v, vb in report["variants"].items()}  # fmt: skip
    with tracked_run(experiment=experiment, run_name="evaluate", stage="evaluate", variant=None, seed=cfg.seed,
                     data_digest=digest, params={"evaluate": cfg.model_dump(mode="json") | {"variants": variants}},
                     extra_tags={"memeops.evaluate.versions": json.dumps(versions, sort_keys=True),
                                 "memeops.evaluate.source_runs": json.dumps(runs, sort_keys=True)},
                     system_metrics=False):  # fmt: skip
        flat = {}
        for variant, by_alias in headline.items():
            for alias, by_split in by_alias.items():
                for split, values in by_split.items():
                    for key in ("mean_primary", "mean_macro_f1", "ece"):
                        if values.get(key) is not None:
                            flat[f"{variant}/{alias}/{split}/{key}"] = values[key]
        log_metrics(flat)
        for path in (JSON_OUT, MD_OUT, METRICS_OUT):
            mlflow.log_artifact(str(path), artifact_path="evaluation")
        for path in figures:
            mlflow.log_artifact(str(path), artifact_path="evaluation/figures")


if __name__ == "__main__":
    raise SystemExit(run_stage("evaluate", main))
