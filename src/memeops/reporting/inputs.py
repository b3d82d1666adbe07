"""What the report page shows, as records and readers: the train stages' metrics reports, the
records a stage computes with models (:class:`SampleMeme`, :class:`AttentionMap`; see
:mod:`memeops.evaluation.samples`) and the latest MLflow runs (:class:`MlflowRun`).

Reading only: nothing here runs a model, draws or writes HTML. A missing or unreadable file is
"no data" (None or an empty result), so the page can say so instead of failing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode
from typing import Any

import numpy as np

from memeops.reporting.markup import fmt, num

DEFAULT_MLFLOW_UI = "http://127.0.0.1:5000"
MLFLOW_UI_ENV = "MEMEOPS_MLFLOW_UI"


@dataclass
class SampleMeme:
    """One meme shown with its gold labels and models' predictions.

    ``predictions``: ``{model name: {task: (label, probability or None)}}``.
    """

    meme_id: str
    image: Path | None
    text: str
    gold: dict[str, str]
    predictions: dict[str, dict[str, tuple[str, float | None]]] = field(default_factory=dict)
    split: str = ""
    language: str = ""


@dataclass
class AttentionMap:
    """MGMCF's global-context attention for one meme (weights over the valid local tokens).

    ``boxes``: normalised ``x0, y0, x1, y1`` of the kept regions, ``box_labels`` their detector
    classes (or ``region i``), ``region_weights`` aligned with them; ``tokens`` / ``token_weights``
    the caption's valid text tokens; ``image_weight`` the global image token's weight.
    """

    meme_id: str
    image: Path | None
    text: str
    tokens: list[str]
    token_weights: list[float]
    image_weight: float
    boxes: list[list[float]]
    box_labels: list[str]
    region_weights: list[float]
    predictions: dict[str, str] = field(default_factory=dict)


@dataclass
class MlflowRun:
    """One top-level MLflow run of a DVC stage (``memeops.dvc_stage`` / ``memeops.variant`` tags)."""

    stage: str
    variant: str
    experiment_id: str
    experiment: str
    run_id: str
    run_name: str
    status: str
    start_time: int | None = None  # ms since the epoch


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or None when it is missing or not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_variant_reports(metrics_dir: str | Path, variants: Sequence[str] | None = None) -> dict[str, dict]:
    """``{variant: report}`` for the train stages' ``<variant>.json`` in ``metrics_dir`` (those with
    ``primary_metric`` and a ``test`` split); other stage metrics (ocr, detector, ...) are skipped."""
    folder = Path(metrics_dir)
    paths = [folder / f"{v}.json" for v in variants] if variants else sorted(folder.glob("*.json"))
    out = {}
    for path in paths:
        data = read_json(path)
        if (
            isinstance(data, dict)
            and isinstance(data.get("primary_metric"), dict)
            and isinstance(data.get("test"), dict)
        ):
            out[path.stem] = data
    return out


def report_tasks(reports: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Tasks in first-seen order over the reports' ``primary_metric``."""
    tasks: list[str] = []
    for report in reports.values():
        tasks += [t for t in report["primary_metric"] if t not in tasks]
    return tasks


def mean_metric(report: Mapping[str, Any], split: str, metric: str = "macro_f1") -> tuple[float | None, int]:
    """(mean of ``<task>/<metric>`` over the report's tasks on ``split``, number of tasks)."""
    values = [num((report.get(split) or {}).get(f"{t}/{metric}")) for t in report.get("primary_metric", {})]
    present = [v for v in values if v is not None]
    return (float(np.mean(present)) if present else None), len(present)


def seed_metric(report: Mapping[str, Any], split: str, metric: str) -> Mapping[str, Any]:
    """The seed summary of ``metric`` on ``split`` (n_seeds, mean, std, ci95, per_seed), or ``{}``."""
    return ((report.get("seed_summary") or {}).get(split) or {}).get(metric) or {}


def seeds_text(summary: Mapping[str, Any]) -> str:
    """`` ± 0.012 [0.650–0.760]`` from a seed summary (std over seeds, interval over seeds and memes)."""
    if not summary or summary.get("std") is None:
        return ""
    ci = summary.get("ci95") or []
    interval = f" [{fmt(ci[0])}–{fmt(ci[1])}]" if len(ci) == 2 and None not in ci else ""
    return f" ± {fmt(summary['std'])}{interval}"


def leaderboard(reports: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant, best test mean macro-F1 first (means over the variant's seeds; ``test_seeds``:
    std over seeds and the interval over seeds and memes of the test mean macro-F1)."""
    rows = []
    for name, report in reports.items():
        test, n = mean_metric(report, "test")
        seeds = seed_metric(report, "test", "mean/macro_f1")
        rows.append({
            "variant": name, "tasks": n, "test": test, "val": mean_metric(report, "val")[0],
            "test_unseen": mean_metric(report, "test_unseen")[0], "n_seeds": seeds.get("n_seeds", 1),
            "test_seeds": seeds_text(seeds),
        })  # fmt: skip
    return sorted(rows, key=lambda r: -(r["test"] if r["test"] is not None else -1.0))


def primary_cell(report: Mapping[str, Any], task: str, split: str = "test") -> str:
    """``0.712 ± 0.010 [0.650–0.760]`` for the task's primary metric (mean ± std over seeds, interval over
    seeds and memes), ``0.712 [0.650–0.760]`` for a report without seeds, or an en dash."""
    metric = report.get("primary_metric", {}).get(task)
    if metric is None:
        return "–"
    value = num((report.get(split) or {}).get(f"{task}/{metric}"))
    if value is None:
        return "–"
    seeds = seed_metric(report, split, f"{task}/{metric}")
    if seeds:
        return f"{value:.3f}{seeds_text(seeds)}"
    ci = ((report.get("ci95") or {}).get(split) or {}).get(f"{task}/{metric}")
    interval = f" [{fmt(ci[0])}–{fmt(ci[1])}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else ""
    return f"{value:.3f}{interval}"


def latest_mlflow_runs(tracking_uri: str | None = None, max_results: int = 5000) -> list[MlflowRun]:
    """The latest top-level (not nested) run per ``memeops.dvc_stage`` tag in the tracking store."""
    import mlflow  # heavy (~1 s); only the report stage asks the tracking store

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    if not experiments:
        return []
    runs = client.search_runs(
        list(experiments), max_results=max_results, order_by=["attributes.start_time DESC"]
    )
    seen: set[str] = set()
    out = []
    for run in runs:
        tags = run.data.tags
        stage = tags.get("memeops.dvc_stage")
        if not stage or "mlflow.parentRunId" in tags or stage in seen:
            continue
        seen.add(stage)
        out.append(MlflowRun(
            stage=stage, variant=tags.get("memeops.variant", ""), experiment_id=run.info.experiment_id,
            experiment=experiments.get(run.info.experiment_id, ""), run_id=run.info.run_id,
            run_name=run.info.run_name or "", status=run.info.status, start_time=run.info.start_time,
        ))  # fmt: skip
    return sorted(out, key=lambda r: r.stage)


def latest_train_runs(runs: Sequence[MlflowRun]) -> dict[str, MlflowRun]:
    """The newest ``train*`` stage run per variant (``train``, ``train_mgmcf``, ``train_vlm``)."""
    latest: dict[str, MlflowRun] = {}
    for run in runs:
        newer = run.variant not in latest or (run.start_time or 0) > (latest[run.variant].start_time or 0)
        if run.variant and run.stage.startswith("train") and newer:
            latest[run.variant] = run
    return latest


def run_url(ui: str, run: MlflowRun) -> str:
    """The MLflow UI at ``ui`` on the run's experiment, filtered to the runs of its DVC stage with its
    run name (the latest first). Not the run's own page: its id is random per run, and the report is
    a DVC out that must repeat byte for byte; the experiment id (a counter), the stage and the run
    name repeat."""
    expression = f"attributes.run_name = '{run.run_name}' and tags.`memeops.dvc_stage` = '{run.stage}'"
    return f"{ui.rstrip('/')}/#/experiments/{run.experiment_id}?" + urlencode({"searchFilter": expression})
