"""What stage ``report`` gathers beside the report files: sample predictions, MGMCF attention, MLflow runs.

The page (:mod:`memeops.reporting.page`) reads the other stages' reports itself; the live parts come
from here: a few test memes predicted by the served model folders under ``models/``
(:mod:`memeops.evaluation.samples`), MGMCF's attention on some of them, and the latest MLflow run of
every stage. Each may be unavailable (no meme table, no model folder, no tracking store): that
becomes a note in the page, never a failed stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from memeops.config import load_params
from memeops.evaluation.samples import meme_image_path, mgmcf_attention, predict_samples, select_sample_memes
from memeops.reporting.inputs import AttentionMap, MlflowRun, SampleMeme, latest_mlflow_runs
from memeops.threads import torch_threads

MODEL_FILE = "memeops_model.json"  # what makes a folder under models/ a served model


@dataclass
class Gathered:
    """The page's live inputs: sample predictions, MGMCF attention (None: not available), each meme's
    image, the latest MLflow runs or why there are none."""

    samples: list[SampleMeme] | None = None
    attention: list[AttentionMap] | None = None
    meme_images: dict[str, Path] = field(default_factory=dict)
    mlflow_runs: list[MlflowRun] | None = None
    mlflow_error: str | None = None


def report_tasks(memes: pd.DataFrame, params_path: Path = Path("params.yaml")) -> list[str]:
    """``train.tasks`` of params.yaml, else every label column of the meme table (the page needs no params)."""
    try:
        return list(load_params(params_path).model_dump(by_alias=True)["train"]["tasks"])
    except Exception:  # noqa: BLE001 - fall back to every label column
        return [c.removeprefix("label_") for c in memes.columns if c.startswith("label_")]


def gather_samples(out: Gathered, memes_path: Path, models_dir: Path, models: Sequence[str], n_samples: int,
                   n_attention: int) -> None:  # fmt: skip
    """Fill ``out``'s samples, attention and meme images from ``n_samples`` test memes predicted by the
    model folders ``models`` under ``models_dir`` (the first ``n_attention`` get MGMCF's attention)."""
    if not memes_path.is_file():
        print(f"report: {memes_path} not found: no sample memes")
        return
    memes = pd.read_parquet(memes_path)
    out.meme_images = {str(r["meme_id"]): meme_image_path(r) for r in memes.to_dict("records")}
    rows = select_sample_memes(memes, n_samples)
    folders = {m: models_dir / m for m in models if (models_dir / m / MODEL_FILE).is_file()}
    with torch_threads(1):
        out.samples = predict_samples(rows, folders, report_tasks(memes))
        mgmcf = models_dir / "mgmcf"
        if n_attention > 0 and (mgmcf / MODEL_FILE).is_file():
            try:
                out.attention = mgmcf_attention(mgmcf, rows.head(n_attention))
            except Exception as exc:  # noqa: BLE001 - the section says what happened
                print(f"report: MGMCF attention skipped: {' '.join(str(exc).split())[:200]}")


def gather_mlflow_runs(out: Gathered) -> None:
    """Fill ``out``'s latest run per stage, or the one-line reason the tracking store gave none."""
    try:
        out.mlflow_runs = latest_mlflow_runs()
    except Exception as exc:  # noqa: BLE001 - no tracking store is a note in the page
        out.mlflow_error = " ".join(str(exc).split())[:200] or type(exc).__name__


def gather(memes_path: Path, models_dir: Path, models: Sequence[str], n_samples: int, n_attention: int) -> Gathered:
    """Everything the page shows beside the report files (see the module docstring)."""
    out = Gathered()
    gather_samples(out, memes_path, models_dir, models, n_samples, n_attention)
    gather_mlflow_runs(out)
    return out
