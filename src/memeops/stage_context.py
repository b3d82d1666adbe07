"""What every DVC stage shares: params, the meme table, the feature cache, the encoder, the reports.

Each module in ``stages/`` is an adapter of a few lines: it builds one :class:`StageContext`, asks it
for the paths and configs params.yaml names, calls the library and prints one summary line. The
context is the single place that knows

* the consolidated meme table: ``{data.output_dir}/memes.parquet``;
* the feature cache: ``features.cache_dir``;
* the frozen encoder: ``encoders.clip`` resolved (its own weights, else stage pretrain_clip's), and
  ``encoders.text`` (a sentence encoder for the captions) when set;
* MGMCF's region inputs: ``region_features`` and ``regions``;
* the reports folder: ``reports/``, its ``validation.json`` and ``metrics/<name>.json``;
* the MLflow experiment (``train.experiment``) and the run every stage logs.

Importing this module is cheap (no torch, no mlflow): stages that only write reports (evaluate,
report, tune of an untuned variant) must not pay for torch. The typed configs of the sections that
live beside torch code (:class:`~memeops.data.features.FeatureConfig`,
:class:`~memeops.models.clip.ClipEncoderConfig`, ...) are therefore imported inside the lazy helpers
that need them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from memeops.config import Params, SentenceEncoderConfig, TrainStageConfig, load_params
from memeops.timing import without_timings
from memeops.tracking.runs import file_md5, tracked_run

if TYPE_CHECKING:
    import pandas as pd

    from memeops.models.clip import ClipEncoder, ClipEncoderConfig

__all__ = ["StageContext"]


@dataclass(frozen=True)
class StageContext:
    """One stage's view of the project, built once per process; everything is read on first use.

    ``params_path`` is read when a stage first needs a param (a stage that needs none, such as
    ``report``, also runs without params.yaml); ``reports`` is the folder every report goes to.
    """

    params_path: Path = Path("params.yaml")
    reports: Path = Path("reports")

    @cached_property
    def params(self) -> Params:
        """The validated params.yaml (:class:`~memeops.config.ConfigError` on a bad file)."""
        return load_params(self.params_path)

    def section(self, name: str, model_cls: type[BaseModel]) -> Any:
        """``params.<name>`` (dotted for nesting) as its typed config."""
        return self.params.section(name, model_cls)

    def raw(self, name: str) -> dict[str, Any]:
        """``params.<name>`` as plain data (``{}`` when absent): for sections read without their typed
        config, whose class would import torch."""
        return dict(self.params.model_dump(by_alias=True).get(name) or {})

    # ------------------------------------------------------------------ paths
    @property
    def memes_path(self) -> Path:
        """The consolidated meme table every stage after ``consolidate`` reads."""
        return Path(self.params.data.output_dir) / "memes.parquet"

    @property
    def validation_report(self) -> Path:
        """Stage validate's report: training refuses to run on a failed validation."""
        return self.reports / "validation.json"

    @property
    def metrics_dir(self) -> Path:
        """``reports/metrics``: one JSON per stage, what ``dvc metrics show`` lists."""
        return self.reports / "metrics"

    @cached_property
    def feature_dir(self) -> Path:
        """``features.cache_dir``: the frozen-encoder embeddings stage features writes."""
        from memeops.data.features import FeatureConfig  # torch: only stages that read features

        return Path(self.section("features", FeatureConfig).cache_dir)

    # ------------------------------------------------------------------ typed sections
    @cached_property
    def encoder_config(self) -> ClipEncoderConfig:
        """``encoders.clip`` resolved: its weights / pretrained tag, else stage pretrain_clip's encoder
        (FileNotFoundError, one line, when neither exists); with ``encoders.text`` in it when that
        names a sentence encoder for the captions (every stage that loads the encoder then agrees on
        the feature cache's key)."""
        from memeops.models.clip import ClipEncoderConfig, resolve_encoder_config, with_text_encoder  # torch

        clip = resolve_encoder_config(self.section("encoders.clip", ClipEncoderConfig))
        return with_text_encoder(clip, self.section("encoders.text", SentenceEncoderConfig))

    @cached_property
    def train(self) -> TrainStageConfig:
        """``params.train`` typed (the variants, tasks, trainer, seeds)."""
        return self.section("train", TrainStageConfig)

    @property
    def experiment(self) -> str:
        """The MLflow experiment every stage's run goes to (``train.experiment``)."""
        return str(self.raw("train").get("experiment", "memeops"))

    @property
    def tasks(self) -> list[str]:
        """``train.tasks``: the label columns the models predict."""
        return list(self.raw("train")["tasks"])

    def region_inputs(self) -> dict[str, Any]:
        """MGMCF's inputs beside the features: ``region_features`` and ``regions``, typed; keyword
        arguments of the training entry points (other models ignore them)."""
        from memeops.data.mgmcf_inputs import RegionFeaturesConfig  # torch
        from memeops.vision.extract import RegionsConfig

        return {"region_features": self.section("region_features", RegionFeaturesConfig),
                "regions": self.section("regions", RegionsConfig)}  # fmt: skip

    # ------------------------------------------------------------------ data and models
    def require_memes(self) -> Path:
        """The meme table's path; a one-line FileNotFoundError when stage consolidate has not run."""
        if not self.memes_path.is_file():
            raise FileNotFoundError(f"{self.memes_path}: no meme table (run stage consolidate first)")
        return self.memes_path

    def memes(self) -> pd.DataFrame:
        """The consolidated meme table."""
        from memeops.data.consolidate import read_memes  # pandas / pyarrow: stages that read it

        return read_memes(self.memes_path)

    def data_digest(self) -> str:
        """The md5 DVC records for the meme table: every run's data lineage tag (the table must exist)."""
        return file_md5(self.require_memes())

    def encoder(self) -> ClipEncoder:
        """The frozen encoder of :attr:`encoder_config`, loaded from local files."""
        from memeops.models.clip import load_clip  # torch, open_clip

        return load_clip(self.encoder_config)

    # ------------------------------------------------------------------ outputs
    def tracked_run(self, stage: str, *, seed: int | None, params: Mapping[str, Any], data_digest: str | None = None,
                    **kwargs: Any) -> AbstractContextManager[Any]:  # fmt: skip
        """The stage's MLflow run (named after the stage, in :attr:`experiment`, with the lineage tags);
        the data digest defaults to the meme table's. ``kwargs`` go to
        :func:`memeops.tracking.runs.tracked_run`."""
        digest = self.data_digest() if data_digest is None else data_digest
        return tracked_run(experiment=self.experiment, run_name=stage, stage=stage, variant=None, seed=seed,
                           data_digest=digest, params=params, **kwargs)  # fmt: skip

    def write_metrics(self, name: str, payload: Any, **dumps: Any) -> Path:
        """Write ``reports/metrics/<name>.json`` (indented, keys sorted unless ``sort_keys=False``;
        other ``json.dumps`` options in ``dumps``) and return its path.

        Timings and rates (:func:`memeops.timing.is_timing_key`: ``seconds``, ``images_per_s``, ...)
        are dropped at any depth: the file is a DVC out and must repeat byte for byte; the stage
        prints them in its summary line or logs them to its MLflow run."""
        path = self.metrics_dir / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        options = {"indent": 2, "sort_keys": True} | dumps
        path.write_text(json.dumps(without_timings(payload), **options) + "\n", encoding="utf-8")
        return path

