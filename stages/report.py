"""Stage ``report``: one static page over the pipeline's outputs, ``reports/index.html``.

Run from the project root as ``python -m stages.report``. Reads the reports the other stages wrote
(metrics, comparison, ablations when present, VLM examples, datasheet, validation), predicts a few
test memes with the served model folders in ``models/``, computes MGMCF's attention on some of
them, and looks up the latest MLflow run per stage; writes ``reports/index.html`` and
``reports/report_assets/`` (page: memeops.reporting.page; what it gathers: memeops.reporting.gather;
predictions: memeops.evaluation.samples; docs/report.md). A model folder or the tracking store being unavailable leaves a note in its
section, not a failed stage.

Options (no params.yaml section): ``--models`` (model folders under ``models/`` whose predictions
are shown), ``--samples`` (how many test memes), ``--attention`` (how many of them get an MGMCF
attention map), ``--mlflow-ui`` (the UI base of the run links; default ``$MEMEOPS_MLFLOW_UI`` or
http://127.0.0.1:5000), ``--out``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from memeops.reporting.gather import gather
from memeops.reporting.page import build_report
from memeops.stage_context import StageContext
from stages import run_stage

MEMES = Path("data/consolidated/memes.parquet")  # the page needs no params: dvc.yaml's dep, not data.output_dir
MODELS = Path("models")
DEFAULT_MODELS = ["mgmcf", "gatedclip_mt", "vlm"]


def main(argv: list[str] | None = None) -> int:
    ctx = StageContext()
    parser = argparse.ArgumentParser(prog="python -m stages.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ctx.reports / "index.html"))
    parser.add_argument("--models", nargs="*", default=DEFAULT_MODELS)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--attention", type=int, default=4)
    parser.add_argument("--mlflow-ui", default=None)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    got = gather(MEMES, MODELS, args.models, args.samples, args.attention)
    out = build_report(ctx.reports, Path(args.out), samples=got.samples, attention=got.attention,
                       mlflow_runs=got.mlflow_runs, mlflow_error=got.mlflow_error, mlflow_ui=args.mlflow_ui,
                       meme_images=got.meme_images)  # fmt: skip
    print(f"report: wrote {out} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage("report", main))
