"""What ``make bench`` reads off a finished project copy: feature throughput, training speed per
variant and the MLflow registry (:mod:`benchmarks.pipeline` runs the copy and merges these sections).

The copy's DVC outs hold no timings (docs/reproducibility.md), so speeds come from the stages' summary
lines in the logs and from the metrics the stages logged to the copy's MLflow store.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from memeops import runtime

def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def rounded(value: Any, digits: int = 1) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return round(float(value), digits)
    return None


#: The features stage's summary line (``stages/features.py``): its encoder throughput. Timings are not
#: in the stage's metrics file (a DVC out must repeat byte for byte), so the bench reads the log.
FEATURES_LINE = re.compile(r"^features: (\d+) computed, (\d+) cached, ([0-9.]+) images/s", re.MULTILINE)


def features_rate_from_logs(logs: Path | None) -> float | None:
    """The images/s of the features stage's summary line in the run's logs (None: not found or 0)."""
    for path in sorted(Path(logs).glob("*.log")) if logs is not None and Path(logs).is_dir() else []:
        found = FEATURES_LINE.findall(path.read_text(encoding="utf-8", errors="replace"))
        if found:
            return rounded(float(found[-1][2])) or None
    return None


def collect_features(project: Path, stage_seconds: float | None = None, logs: Path | None = None) -> dict[str, Any]:
    """Feature extraction from ``reports/metrics/features.json`` (counts) and the stage's summary
    line in ``logs`` (``images_per_s``: computed images, each with its flipped copy and its caption,
    per second of encoding). When the stage computed nothing it is null; without the line,
    ``computed / stage seconds`` (process start and model load included) stands in if something was."""
    metrics = read_json(project / "reports" / "metrics" / "features.json")
    if metrics is None:
        return {}
    computed = metrics.get("computed")
    rate = features_rate_from_logs(logs) if computed else None
    source = "features stage summary line"
    if rate is None and computed and stage_seconds:
        rate, source = rounded(computed / stage_seconds), "computed / stage seconds"
    out = {
        "images_per_s": rate,
        "images_per_s_source": source if rate is not None else None,
        "computed": computed,
        "cached": metrics.get("cached"),
        "total": metrics.get("total"),
        "spec_key": metrics.get("spec_key"),
    }
    if stage_seconds is not None:
        out["stage_seconds"] = round(stage_seconds, 2)
    return out


def trained_variants(order: tuple[str, ...] | list[str], project: Path | None = None) -> list[str]:
    """The variants a plan trains: ``train_<v>`` (mgmcf, vlm) -> v; stage ``train`` (the heads, one
    process) -> the variants its command names (``project``'s dvc.yaml); ``train@<v>`` -> v."""
    out = []
    for stage in order:
        name = stage.rsplit(":", 1)[-1]
        if name == "train" and project is not None:
            out.extend(train_stage_variants(project))
        elif name.startswith("train@"):
            out.append(name.split("@", 1)[1])
        elif name.startswith("train_") and name != "train_detector":
            out.append(name[len("train_") :])
    return out


def train_stage_variants(project: Path) -> list[str]:
    """The variants stage ``train`` trains: the arguments of its ``python -m stages.train ...`` command."""
    stages = (yaml.safe_load((project / "dvc.yaml").read_text(encoding="utf-8")) or {}).get("stages", {})
    cmd = str(stages.get("train", {}).get("cmd", ""))
    return cmd.split("stages.train", 1)[1].split() if "stages.train" in cmd else []


def run_timings(project: Path) -> dict[str, dict[str, float]]:
    """Per variant, the timings its training logged to the copy's MLflow store (they are not in the
    DVC outs): the mean over its runs of each timing metric (``fit/train_samples_per_s`` of every
    seed run; the VLM's ``models/<name>/train_tokens_per_s`` and ``models/<name>/fit_seconds``)."""
    if not (project / "mlflow.db").is_file():
        return {}
    from mlflow import MlflowClient

    from memeops.timing import is_timing_key
    from memeops.tracking.runs import TAG_SEED, TAG_STAGE, TAG_VARIANT

    uri = runtime.default_tracking_uri(project)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    values: dict[str, dict[str, list[float]]] = {}
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id], max_results=5000):
            variant = run.data.tags.get(TAG_VARIANT)
            for key, value in run.data.metrics.items() if variant else ():
                if is_timing_key(key):
                    values.setdefault(variant, {}).setdefault(key, []).append(value)
            tags = run.data.tags
            if variant and tags.get(TAG_STAGE) == "train" and TAG_SEED in tags and run.info.end_time:
                # a seed run: its wall time. Not the variant's parent run, which stage train opens when it
                # queues the seeds, so its time includes the wait behind the variants before it.
                seconds = (run.info.end_time - run.info.start_time) / 1000
                values.setdefault(variant, {}).setdefault("seed_run_seconds", []).append(seconds)
    return {v: {k: sum(xs) / len(xs) for k, xs in sorted(m.items())} for v, m in sorted(values.items())}


def collect_training(project: Path, variants: list[str], stage_seconds: Mapping[str, float] | None = None,
                     timings: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Per variant: epochs from ``reports/metrics/<variant>.json``; training samples/s (mean over
    seeds of the trainer's mean over epochs) from ``timings`` (default :func:`run_timings`: the
    copy's MLflow runs); for the VLM its tokens/s per model and an approximate samples/s (train
    samples x epochs / fit seconds, which include the per-epoch val loss)."""
    stage_seconds = stage_seconds or {}
    timings = run_timings(project) if timings is None else timings
    out: dict[str, dict[str, Any]] = {}
    for variant in variants:
        metrics = read_json(project / "reports" / "metrics" / f"{variant}.json")
        if metrics is None:
            out[variant] = {"missing": True}
            continue
        logged = timings.get(variant, {})
        entry: dict[str, Any] = {}
        if "models" in metrics:  # the VLM
            models = {
                name: {
                    "train_tokens_per_s": rounded(logged.get(f"models/{name}/train_tokens_per_s")),
                    "epochs": m.get("epochs"),
                    "fit_seconds": rounded(logged.get(f"models/{name}/fit_seconds")),
                }
                for name, m in (metrics.get("models") or {}).items()
            }
            entry["kind"] = "vlm"
            entry["regime"] = metrics.get("regime")
            entry["models"] = models
            tokens = [m["train_tokens_per_s"] for m in models.values() if m["train_tokens_per_s"] is not None]
            entry["train_tokens_per_s"] = rounded(sum(tokens)) if len(tokens) == 1 else None
            if len(models) == 1:
                (only,) = models.values()
                samples, epochs, fit = metrics.get("train_samples"), only["epochs"], only["fit_seconds"]
                entry["train_samples_per_s"] = (
                    rounded(samples * epochs / fit) if samples and epochs and fit else None
                )
                entry["epochs_run"] = epochs
                entry["train_samples_per_s_note"] = "approximate: train samples x epochs / fit seconds"
            else:
                entry["train_samples_per_s"] = None
        else:
            entry["train_samples_per_s"] = rounded(logged.get("fit/train_samples_per_s"))
            entry["epochs_run"] = metrics.get("epochs_run")
            entry["best_epoch"] = metrics.get("best_epoch")
        stage = {"vlm": "train_vlm", "mgmcf": "train_mgmcf"}.get(variant, f"train@{variant}")
        if stage in stage_seconds:
            entry["stage_seconds"] = round(stage_seconds[stage], 2)
        elif logged.get("seed_run_seconds") is not None:  # stage train: its seed runs (mean), not the stage
            entry["seed_run_seconds"] = rounded(logged["seed_run_seconds"])
        out[variant] = entry
    return out


def collect_registry(project: Path) -> dict[str, Any]:
    """The copy's MLflow registry: per registered model its versions and aliases."""
    db = project / "mlflow.db"
    if not db.is_file():
        return {}
    from mlflow import MlflowClient

    uri = runtime.default_tracking_uri(project)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    out: dict[str, Any] = {}
    for model in client.search_registered_models(max_results=1000):
        versions = client.search_model_versions(f"name='{model.name}'")
        out[model.name] = {
            "versions": len(versions),
            "latest_version": max((int(v.version) for v in versions), default=None),
            "aliases": {alias: int(version) for alias, version in sorted((model.aliases or {}).items())},
        }
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------- where it ran
