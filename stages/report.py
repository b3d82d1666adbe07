"""Stage ``report``: one static page over the pipeline's outputs, ``reports/index.html``.

Run from the project root as ``python -m stages.report``. Reads the reports the other stages wrote
(metrics, comparison, ablations when present, VLM examples, datasheet, validation), predicts a few
test memes with the served model folders in ``models/``, computes MGMCF's attention on some of
them, and looks up the latest MLflow run per stage; writes ``reports/index.html`` and
``reports/report_assets/`` (page: memeops.reporting.page; predictions: memeops.evaluation.samples;
docs/report.md). A model folder or the tracking store being unavailable leaves a note in its
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

import pandas as pd

from memeops.evaluation.samples import meme_image_path, mgmcf_attention, predict_samples, select_sample_memes
from memeops.reporting.inputs import latest_mlflow_runs
from memeops.reporting.page import build_report
from memeops.threads import torch_threads
from stages import run_stage

REPORTS = Path("reports")
MEMES = Path("data/consolidated/memes.parquet")
MODELS = Path("models")
DEFAULT_MODELS = ["mgmcf", "gatedclip_mt", "vlm"]


def _tasks(memes: pd.DataFrame) -> list[str]:
    try:
        from memeops.config import load_params

        return list(load_params().model_dump(by_alias=True)["train"]["tasks"])
    except Exception:  # noqa: BLE001 - fall back to every label column
        return [c.removeprefix("label_") for c in memes.columns if c.startswith("label_")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPORTS / "index.html"))
    parser.add_argument("--models", nargs="*", default=DEFAULT_MODELS)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--attention", type=int, default=4)
    parser.add_argument("--mlflow-ui", default=None)
    args = parser.parse_args(argv)
    start = time.perf_counter()

    samples = attention = None
    meme_images: dict[str, Path] = {}
    if MEMES.is_file():
        memes = pd.read_parquet(MEMES)
        meme_images = {str(r["meme_id"]): meme_image_path(r) for r in memes.to_dict("records")}
        rows = select_sample_memes(memes, args.samples)
        folders = {m: MODELS / m for m in args.models if (MODELS / m / "memeops_model.json").is_file()}
        with torch_threads(1):
            samples = predict_samples(rows, folders, _tasks(memes))
            mgmcf = MODELS / "mgmcf"
            if args.attention > 0 and (mgmcf / "memeops_model.json").is_file():
                try:
                    attention = mgmcf_attention(mgmcf, rows.head(args.attention))
                except Exception as exc:  # noqa: BLE001 - the section says what happened
                    print(f"report: MGMCF attention skipped: {' '.join(str(exc).split())[:200]}")
    else:
        print(f"report: {MEMES} not found: no sample memes")

    runs = error = None
    try:
        runs = latest_mlflow_runs()
    except Exception as exc:  # noqa: BLE001 - no tracking store is a note in the page
        error = " ".join(str(exc).split())[:200] or type(exc).__name__

    out = build_report(REPORTS, Path(args.out), samples=samples, attention=attention, mlflow_runs=runs,
                       mlflow_error=error, mlflow_ui=args.mlflow_ui, meme_images=meme_images)  # fmt: skip
    print(f"report: wrote {out} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage("report", main))
