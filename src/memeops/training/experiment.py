"""Training one model variant on cached features, end to end: the library side of stage ``train``.

One call of :func:`run_variant` does, in order:

1. builds the variant's model (``train.variants.<name>``: model name, model config, trainer
   overrides) with input widths taken from the feature cache, seeded;
2. fits it on the TRAIN split, selecting on VAL only (early stopping + best-epoch weights); a
   retrieval model (``build_index``) then gets its kNN index over the un-augmented TRAIN split
   (:mod:`memeops.training.retrieval_index`), kept in its state dict;
3. scores the selected model once on every evaluation split (val, then test and test_unseen:
   the test splits are touched here and nowhere else).

That is ONE seed. Stage ``train`` runs :func:`train_variant` once per seed of ``train.seeds`` and
summarises them (mean +- std over seeds, intervals over seeds and test memes, the registered seed
chosen on validation only): :mod:`memeops.training.variant_stage`.

MGMCF plugs in by providing its own datasets (:func:`family_inputs`); the selection and scoring
logic here is shared.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from pydantic import BaseModel, ValidationError
from torch import nn

from memeops.config import ConfigError
from memeops.config.data import SPLITS
from memeops.config.params import one_line
from memeops.config.train import TrainStageConfig, VariantConfig
from memeops.data.features import FeatureDataset, FeatureStore
from memeops.data.taxonomy import label_column, load_taxonomy
from memeops.evaluation.metrics import Predictions, all_metrics, primary_metric
from memeops.models.base import TaskSpec, count_trainable, task_specs
from memeops.models.factory import build_model, model_config_class
from memeops.threads import torch_threads
from memeops.timing import is_timing_key
from memeops.tracking.runs import file_md5
from memeops.training.fit_types import FitResult
from memeops.training.inference import predict
from memeops.training.retrieval_index import build_retrieval_index
from memeops.training.seeding import make_generator, seed_everything
from memeops.training.trainer import fit

EVAL_SPLITS = tuple(s for s in SPLITS if s != "train")  # val first: it is the selection split
TEST_SPLITS = tuple(s for s in EVAL_SPLITS if s.startswith("test"))


def trainable_specs(memes: pd.DataFrame, tasks: Sequence[str]) -> tuple[list[TaskSpec], list[str]]:
    """Specs of the requested tasks that have at least one TRAIN label; the names of those dropped."""
    train = memes[memes["split"] == "train"]
    keep = [t for t in tasks if label_column(t) in train and train[label_column(t)].notna().any()]
    return task_specs(load_taxonomy(), keep), [t for t in tasks if t not in keep]


@dataclass
class VariantResult:
    """What one variant's training produced (the model is in memory, selected on val)."""

    variant: str
    model: nn.Module
    specs: list[TaskSpec]
    fit: FitResult
    predictions: dict[str, Predictions]  # split -> predictions of the selected model
    metrics: dict[str, dict[str, float]]  # split -> {"task/metric": value}
    n_params: int
    dropped_tasks: list[str] = field(default_factory=list)
    model_config: Any = None  # the validated model config the model was built from

    def report(self) -> dict[str, Any]:
        """The JSON written to ``reports/metrics/<variant>.json`` (dvc metrics; nested by split). No
        timings (a DVC out must repeat byte for byte): samples/s goes to the MLflow run
        (``fit/train_samples_per_s``)."""
        primary = {s.name: primary_metric(s) for s in self.specs}
        return {
            "variant": self.variant,
            "best_epoch": self.fit.best_epoch,
            "epochs_run": self.fit.epochs_run,
            "monitor": self.fit.monitor,
            "val_best": self.fit.best_value,
            "trainable_params": self.n_params,
            "primary_metric": primary,
            **{split: rounded_metrics(m) for split, m in self.metrics.items()},
            "dropped_tasks": self.dropped_tasks,
            **({"gate": self.gate_summary()} if self.gate_summary() else {}),
        }

    def gate_summary(self) -> dict[str, dict[str, float]]:
        """Per evaluation split: mean / std of GatedCLIP's gate (1 = image, 0 = text), when exposed."""
        out = {}
        for split, preds in self.predictions.items():
            g = preds.extras.get("gate")
            if g is not None and len(g):
                g = np.asarray(g, dtype=np.float64).reshape(-1)
                out[split] = {"mean": round(float(g.mean()), 4), "std": round(float(g.std()), 4)}
        return out


def rounded_metrics(metrics: Mapping[str, float]) -> dict[str, float | None]:
    return {k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 6))
            for k, v in metrics.items()}  # fmt: skip


def run_dir_for(root: str | Path, variant: str, fingerprint: Mapping[str, Any]) -> Path:
    """Checkpoint folder of one (variant, data, encoder, config): a killed stage resumes from it,
    while any change of data or features starts fresh (the trainer's own hash cannot see data)."""
    key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Path(root) / variant / key


def clear_finished_run(run_dir: Path, epochs: int) -> bool:
    """Delete ``run_dir`` when its checkpoint is a *finished* run; keep an interrupted one.

    The stage only runs when DVC saw a change (code, params, data). A finished checkpoint found then
    belongs to an earlier version, and resuming it would silently return stale weights (the
    trainer's config hash cannot see code changes); an unfinished one is a killed run to resume.
    """
    state_path = run_dir / "checkpoints" / "state.json"
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if state.get("stopped_early") or int(state.get("epoch", 0)) >= epochs:
        shutil.rmtree(run_dir)
        return True
    return False


class VariantInputs(Protocol):
    """A model family's inputs: the config fields the data fixes, and one Dataset per split."""

    def model_dims(self) -> dict[str, Any]: ...

    def dataset(self, split: str, train: bool = False, generator: Any = None) -> Any: ...


class FeatureInputs:
    """Models on the frozen-CLIP feature cache (GatedCLIP, the baselines)."""

    def __init__(self, memes: pd.DataFrame, store: FeatureStore, specs: Sequence[TaskSpec], feature_dim: int):
        self.memes, self.store, self.specs, self.dim = memes, store, list(specs), feature_dim

    def model_dims(self) -> dict[str, Any]:
        """The image width, and the text width the cache holds (a sentence encoder's with ``encoders.text``)."""
        return {"image_dim": self.dim, "text_dim": self.store.text_dim}

    def dataset(self, split: str, train: bool = False, generator: Any = None) -> FeatureDataset:
        return FeatureDataset(self.memes, self.store, self.specs, split, train=train, generator=generator)


def variant_specs(variant: str, memes: pd.DataFrame, cfg: TrainStageConfig) -> tuple[list[TaskSpec], list[str]]:
    """The variant's trainable task specs and the requested tasks dropped for lack of train labels."""
    tasks = cfg.tasks_for(variant)
    specs, dropped = trainable_specs(memes, tasks)
    if not specs:
        raise ValueError(f"none of the tasks {tasks} of variant {variant!r} has a label in the train split")
    return specs, dropped


def variant_model_config(variant: str, cfg: TrainStageConfig, dims: Mapping[str, Any]) -> BaseModel:
    """The variant's model config: the data-fixed fields from its inputs, then ``config``.

    A config the inputs rule out (``average`` or GatedCLIP without projections when the text width
    differs from the image width, as with a sentence encoder in ``encoders.text``) is a one-line
    :class:`ConfigError` naming the variant, raised before anything trains."""
    spec_cfg = cfg.variant(variant)
    try:
        return model_config_class(spec_cfg.model).model_validate({**dims, **spec_cfg.config})
    except ValidationError as exc:
        raise ConfigError(f"train.variants.{variant} (model {spec_cfg.model}): {one_line(exc)}") from None


def train_variant(
    variant: str,
    memes: pd.DataFrame,
    store: FeatureStore,
    feature_dim: int,
    cfg: TrainStageConfig,
    run_dir: Path,
    callbacks: Sequence[object] = (),
    inputs: VariantInputs | None = None,
    seed: int | None = None,
) -> VariantResult:
    """Fit one variant on TRAIN, select on VAL, then score every evaluation split once.

    ``inputs`` builds the datasets (default: the CLIP feature cache, :class:`FeatureInputs`);
    its task specs must be :func:`variant_specs`'s.
    """
    spec_cfg = cfg.variant(variant)
    specs, dropped = variant_specs(variant, memes, cfg)
    trainer_cfg = cfg.trainer_config(variant, seed)
    inputs = inputs if inputs is not None else FeatureInputs(memes, store, specs, feature_dim)
    model_cfg = variant_model_config(variant, cfg, inputs.model_dims())
    seed_everything(trainer_cfg.seed)
    model = build_model(spec_cfg.model, model_cfg, specs)

    train_set = inputs.dataset("train", train=True, generator=make_generator(trainer_cfg.seed + 1))
    eval_sets = {s: inputs.dataset(s) for s in EVAL_SPLITS if (memes["split"] == s).any()}
    if "val" not in eval_sets:
        raise ValueError("no VAL memes: model selection needs a validation split")
    result = fit(model, train_set, eval_sets["val"], specs, trainer_cfg, run_dir, callbacks=callbacks)

    predictions, metrics = {}, {}
    # scored on the fit's thread count too: the same floats in whichever process scores, and no second
    # OpenMP thread spinning beside the other seed workers (stage train with every thread count at 1:
    # 304 s CPU instead of 332 s on 3 workers)
    with torch_threads(trainer_cfg.threads):
        if hasattr(model, "build_index"):  # a retrieval model: its kNN index is the un-augmented TRAIN split,
            # built after selection (fit selected on VAL with the classifier alone) and before any scoring
            build_retrieval_index(model, inputs.dataset("train"), specs, result.device)
        for split, dataset in eval_sets.items():  # after selection; each split scored exactly once
            preds = predict(model, dataset, specs, batch_size=256, device=result.device)
            predictions[split] = preds
            metrics[split] = all_metrics(preds, specs)
    return VariantResult(variant, model, specs, result, predictions, metrics,
                         count_trainable(model), dropped, model_cfg)  # fmt: skip


def split_meme_ids(memes: pd.DataFrame, split: str, predictions: Predictions) -> list[str]:
    """The meme ids of ``predictions``' rows: the ids the batches carried, else the split's memes in
    table order (the order :class:`FeatureDataset` and the MGMCF datasets read them in)."""
    ids = predictions.meme_ids
    if ids is None:
        ids = memes.loc[memes["split"] == split, "meme_id"].astype(str).tolist()
    if len(ids) != len(predictions):
        raise ValueError(f"{split}: {len(predictions)} predictions but {len(ids)} meme ids")
    return [str(i) for i in ids]


def history_csv(history: Sequence[Mapping[str, float]], path: Path) -> Path:
    """Per-epoch curve for ``dvc plots``: epoch, train loss, val loss and every val metric; no timing
    columns (:func:`memeops.timing.is_timing_key`: the CSV is a DVC out and must repeat byte for byte)."""
    rows = [{"epoch": i + 1, **{k: v for k, v in h.items() if isinstance(v, (int, float)) and not is_timing_key(k)}}
            for i, h in enumerate(history)]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False, float_format="%.6g")
    return path


@dataclass
class Family:
    """A non-default model family's training inputs and how to pack its serving encoder."""

    inputs: Any
    fingerprint: Any  # () -> JSON-able identity of the inputs (part of the checkpoint key)
    packer: Any  # (clip_dir) -> (dest -> section)


def family_inputs(
    variant_cfg: VariantConfig, memes: pd.DataFrame, store: FeatureStore, specs: list[TaskSpec], encoder: Any,
    region_features: Any, regions: Any,
) -> Family | None:  # fmt: skip
    """MGMCF's inputs (text tokens, region features) and packer, the lexical family's (``inputs:
    {lexical: ...}``: caption n-grams and detector tags), or None for plain feature-cache models."""
    if variant_cfg.model != "mgmcf" and "lexical" in variant_cfg.inputs:
        return lexical_family(variant_cfg, memes, store, specs, encoder, regions)
    if variant_cfg.model != "mgmcf":
        if variant_cfg.inputs:
            raise ValueError(f"model {variant_cfg.model!r} takes no `inputs` section other than `lexical`")
        return None
    from memeops.data.mgmcf_inputs import MgmcfInputs, MgmcfInputsConfig
    from memeops.serving.mgmcf import MgmcfInputEncoder

    if region_features is None or regions is None:
        raise ValueError("an mgmcf variant needs the region_features and regions params")
    inputs_cfg = MgmcfInputsConfig.model_validate(variant_cfg.inputs)
    if inputs_cfg.regions_view not in regions.views:
        raise ValueError(f"regions view {inputs_cfg.regions_view!r} is not in params regions.views "
                         f"({', '.join(regions.views)})")  # fmt: skip
    if inputs_cfg.regions_view not in region_features.views:
        raise ValueError(f"regions view {inputs_cfg.regions_view!r} is not encoded: add it to region_features.views")
    inputs = MgmcfInputs(memes, store, specs, inputs_cfg, encoder, region_features)
    view = regions.views[inputs_cfg.regions_view]

    def packer(clip_dir: Path) -> Any:
        sources = {"clip_dir": clip_dir, "detector_dir": regions.detector_dir, "view": view,
                   "text_encoder": inputs_cfg.text_encoder, "region_cnn": region_features.cnn}  # fmt: skip
        return lambda dest: MgmcfInputEncoder.pack(sources, dest)

    def fingerprint() -> dict[str, Any]:
        return {"cfg": inputs_cfg.model_dump(mode="json"), "regions": file_md5(inputs.regions_path),
                "text": inputs.text_encoder.spec_key}  # fmt: skip

    return Family(inputs, fingerprint, packer)




def lexical_family(variant_cfg: VariantConfig, memes: pd.DataFrame, store: FeatureStore, specs: list[TaskSpec],
                   encoder: Any, regions: Any) -> Family:  # fmt: skip
    """The interaction models' inputs: the CLIP feature cache, caption n-grams fitted on TRAIN, and the
    detector's object tags from stage regions (``detections.parquet``, the ``object_view``'s min score)."""
    from memeops.data.lexical import LexicalInputs, LexicalInputsConfig
    from memeops.serving.lexical import LexicalInputEncoder
    from memeops.vision.extract import DETECTIONS_FILE

    if regions is None:
        raise ConfigError("a variant with `inputs: {lexical: ...}` needs the regions params (the detector's tags)")
    cfg = LexicalInputsConfig.model_validate(variant_cfg.inputs)
    view = regions.views.get(cfg.object_view)
    if view is None or view.source != "detector":
        raise ConfigError(f"inputs.object_view {cfg.object_view!r} must be a detector view of params regions.views "
                         f"({', '.join(regions.views)})")  # fmt: skip
    detections_path = Path(regions.output_dir) / DETECTIONS_FILE
    config_path = Path(regions.detector_dir) / "detector_config.json"
    for path in (detections_path, config_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: the lexical inputs need stages train_detector and regions")
    class_names = json.loads(config_path.read_text(encoding="utf-8")).get("class_names") or []
    if not class_names:
        raise ConfigError(f"{config_path} names no classes: the lexical inputs need a detector with classes")
    inputs = LexicalInputs(memes, store, specs, encoder.dim, cfg, pd.read_parquet(detections_path),
                           len(class_names), view.min_score)  # fmt: skip

    def packer(clip_dir: Path) -> Any:
        return lambda dest: LexicalInputEncoder.pack({"clip_dir": clip_dir, "ngrams": inputs.ngrams}, dest)

    def fingerprint() -> dict[str, Any]:
        return {"cfg": cfg.model_dump(mode="json"), "detections": file_md5(detections_path),
                "min_score": view.min_score, "classes": len(class_names)}  # fmt: skip

    return Family(inputs, fingerprint, packer)
