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
artifacts and the headline numbers as metrics (:mod:`memeops.evaluation.evaluate_stage`). Settings: ``params.evaluate``
(:class:`memeops.evaluation.evaluate.EvaluateConfig`: variants, splits, n_boot, seed, ece_bins,
min_group_size); ``variants`` unset means every ``train.variants`` entry plus ``vlm``.

Run from the project root: ``python -m stages.evaluate`` (``--no-mlflow`` skips the run, e.g. for
a look at the numbers without a tracking record).
"""

from __future__ import annotations

import argparse
import sys
import time

from memeops.evaluation.evaluate import EvaluateConfig, EvaluationError, evaluate_variants
from memeops.evaluation.evaluate_stage import EvaluationFiles, default_variants, log_evaluation_run, print_summary
from memeops.evaluation.evaluate_stage import read_meme_attributes, write_evaluation
from memeops.stage_context import StageContext
from stages import run_stage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-mlflow", action="store_true", help="write the reports, log no MLflow run")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    ctx = StageContext()
    cfg = ctx.section("evaluate", EvaluateConfig)
    variants = cfg.variants_or(default_variants(ctx.params))
    digest = ctx.data_digest()  # a missing meme table: one line, exit 2
    try:
        report, curves = evaluate_variants(variants, read_meme_attributes(ctx.memes_path), cfg, data_digest=digest)
    except EvaluationError as exc:
        print(f"stage evaluate: {exc}", file=sys.stderr)
        return 2
    files = EvaluationFiles(ctx.reports)
    headline, figures = write_evaluation(report, curves, files)
    if not args.no_mlflow:
        log_evaluation_run(ctx.experiment, cfg, variants, digest, report, headline, files, list(figures.values()))
    print_summary(report, variants, time.perf_counter() - start, files)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage("evaluate", main))
