"""Stage ``evaluate``'s outputs: the report files, the MLflow run and the console summary.

:func:`memeops.evaluation.evaluate.evaluate_variants` computes the report (a plain dict); this module
writes what the stage declares to DVC and logs it:

* ``reports/evaluation.json`` -- the whole report;
* ``reports/evaluation.md`` -- the readable summary (:mod:`memeops.reporting.evaluation`);
* ``reports/metrics/evaluate.json`` -- the headline numbers (DVC metrics);
* ``reports/figures/evaluate/<variant>_reliability.png`` -- one reliability diagram per variant;

then one MLflow run (stage ``evaluate``) with those files as artifacts and the headline numbers as
metrics, and one console line per evaluated (variant, version, split).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from memeops.evaluation.calibration import ReliabilityBins
from memeops.evaluation.evaluate import EvaluateConfig, evaluated_splits, headline_metrics
from memeops.reporting.evaluation import markdown_report, plot_reliability
from memeops.timing import without_run_ids

# The meme attributes evaluation breaks the metrics down by (read without the images' columns), and
# leak_of, which selects the leakage-clean subsets (read when the table has it).
MEME_COLUMNS = ["meme_id", "split", "source", "language", "extra"]
OPTIONAL_MEME_COLUMNS = ["leak_of"]


@dataclass(frozen=True)
class EvaluationFiles:
    """Where stage evaluate writes, under one reports folder."""

    reports: Path = Path("reports")

    @property
    def json(self) -> Path:
        return self.reports / "evaluation.json"

    @property
    def markdown(self) -> Path:
        return self.reports / "evaluation.md"

    @property
    def metrics(self) -> Path:
        return self.reports / "metrics" / "evaluate.json"

    @property
    def figures(self) -> Path:
        return self.reports / "figures" / "evaluate"


def default_variants(params: Any) -> list[str]:
    """Every ``train.variants`` entry (MGMCF included) and the VLM (``memeops-vlm``)."""
    train = params.model_dump(by_alias=True).get("train") or {}
    names = list((train.get("variants") or {}).keys())
    return names + (["vlm"] if "vlm" not in names else [])


def read_meme_attributes(memes_path: Path) -> pd.DataFrame:
    """The meme table's id, split, breakdown and ``leak_of`` columns."""
    present = set(pq.read_schema(memes_path).names)
    return pd.read_parquet(memes_path, columns=MEME_COLUMNS + [c for c in OPTIONAL_MEME_COLUMNS if c in present])


def write_evaluation(report: Mapping[str, Any], curves: Mapping[str, Mapping[str, ReliabilityBins]],
                     files: EvaluationFiles) -> tuple[dict[str, Any], dict[str, Path]]:  # fmt: skip
    """Write the JSON report, the markdown, the headline metrics and the reliability diagrams;
    returns the headline metrics and the figure of each variant that has one."""
    if files.figures.exists():  # stale diagrams of variants no longer evaluated must not linger
        shutil.rmtree(files.figures)
    files.figures.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Path] = {}
    for variant, variant_curves in curves.items():
        if variant_curves:
            figures[variant] = plot_reliability(
                variant_curves, files.figures / f"{variant}_reliability.png",
                f"{report['variants'][variant]['registered_model']}: reliability (pooled over tasks)")  # fmt: skip
    # A DVC out repeats byte for byte: run ids (random per run) stay in the MLflow run's tags; the
    # files name each version's run by its run name.
    files.json.write_text(json.dumps(without_run_ids(report), indent=1, sort_keys=False, allow_nan=False) + "\n", encoding="utf-8")
    links = {v: p.relative_to(files.reports).as_posix() for v, p in figures.items()}
    files.markdown.write_text(markdown_report(report, links), encoding="utf-8")
    headline = headline_metrics(report)
    files.metrics.parent.mkdir(parents=True, exist_ok=True)
    files.metrics.write_text(json.dumps(headline, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return headline, figures


def log_evaluation_run(experiment: str, cfg: EvaluateConfig, variants: list[str], digest: str,
                       report: Mapping[str, Any], headline: Mapping[str, Any], files: EvaluationFiles,
                       figures: list[Path]) -> None:  # fmt: skip
    """One MLflow run (stage ``evaluate``): the evaluated versions and their source runs as tags,
    every headline number as a metric, the written files as artifacts."""
    import mlflow  # heavy: only when the run is logged (``--no-mlflow`` skips it)

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
        for path in (files.json, files.markdown, files.metrics):
            mlflow.log_artifact(str(path), artifact_path="evaluation")
        for path in figures:
            mlflow.log_artifact(str(path), artifact_path="evaluation/figures")


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    """The console summary: each evaluated (variant, version, split) with its mean primary metric,
    interval and ECE; then what is missing (no predictions, no champion, nothing to evaluate)."""
    lines = []
    for variant, label, version, split, block in evaluated_splits(report):
        sm = block["summary"]
        ci = sm.get("mean_primary_ci95")
        interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        primary = "–" if sm["mean_primary"] is None else f"{sm['mean_primary']:.3f}"
        ece = "–" if sm["ece_pooled"] is None else f"{sm['ece_pooled']:.3f}"
        lines.append(f"{variant:>13} {label:<20} v{version:<4} {split:<12} mean primary {primary}{interval}  ECE {ece}")
    missing = [(v, e["version"], s) for v, vb in report["variants"].items() for e in vb["versions"].values()
               if "splits" in e for s, b in e["splits"].items() if b.get("status") != "ok"]  # fmt: skip
    for variant, version, split in missing:
        lines.append(f"{variant:>13} v{version}: no {split} predictions logged (see reports/evaluation.md)")
    no_champion = [v for v, vb in report["variants"].items()
                   if vb["versions"]["champion"].get("status") == "absent" and vb["versions"]["challenger"].get("splits")]  # fmt: skip
    if no_champion:
        lines.append(f"no champion yet (challenger only): {', '.join(no_champion)}")
    for variant, vb in report["variants"].items():
        if not any(e.get("splits") for e in vb["versions"].values()):
            lines.append(f"{variant:>13}: {'; '.join(vb['notes']) or 'nothing to evaluate'}")
    return lines


def print_summary(report: Mapping[str, Any], variants: list[str], seconds: float, files: EvaluationFiles) -> None:
    """:func:`summary_lines`, the stage's last line, and on stderr a hint when nothing was evaluated."""
    evaluated = evaluated_splits(report)
    for line in summary_lines(report):
        print(line)
    print(f"evaluate: {len(evaluated)} (version, split) pairs of {len(variants)} variants in {seconds:.1f} s "
          f"-> {files.json}, {files.markdown}, {files.figures}/")  # fmt: skip
    if not evaluated:
        print("stage evaluate: no registered version has logged test predictions: retrain the variants "
              "(stages train / train_mgmcf / train_vlm)", file=sys.stderr)  # fmt: skip
