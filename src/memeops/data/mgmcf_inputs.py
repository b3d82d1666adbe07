"""MGMCF's training inputs: cached region features and the training Dataset.

Per meme MGMCF needs (see :mod:`memeops.models.mgmcf` for shapes)

* the global image feature (and its horizontal flip) from the frozen-CLIP feature cache;
* a global text feature and per-token states from the configured text encoder
  (:mod:`memeops.models.text_encoders`), computed in memory once per training run (a few seconds
  for SynthMeme; the frozen encoder makes it deterministic);
* region features: stage ``regions`` keeps the top-K boxes and crops per image for every region
  *view* (detector, grid, degraded detector levels); stage ``region_features`` encodes every
  crop -- and its mirror image, for flip augmentation -- with the frozen region CNN
  (:mod:`memeops.models.region_cnn`) into one safetensors file per view:
  ``<cache_dir>/<cnn spec_key>/<view>.safetensors`` (tensors ``feats`` / ``feats_flip``
  ``float16 [N, K, g*g, C]``, ``boxes [N, K, 4]``, ``scores [N, K]``, ``valid [N, K]``; the
  image SHA-256 keys in the header).

The serving side (:class:`memeops.serving.mgmcf.MgmcfInputEncoder`) runs the same chain on raw
images: CLIP, text encoder, detector, crops, region CNN.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from memeops.data.features import BatchedDataset, FeatureStore, content_keys, meme_labels
from memeops.models.base import TaskSpec, batch_targets
from memeops.models.region_cnn import RegionCNN, RegionCNNConfig, build_region_cnn
from memeops.models.text_encoders import TextEncoderConfig, TextFeatures, TextTokenEncoder, load_text_encoder
from memeops.safetensors_io import save_tensors
from memeops.threads import torch_threads
from memeops.vision.regions import RegionStore


class MgmcfInputsConfig(BaseModel):
    """A variant's ``inputs`` section: which text encoder and which region view it trains on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text_encoder: TextEncoderConfig = TextEncoderConfig()
    regions_view: str = "detector"
    # Memo of the frozen text encoder's outputs (keyed by encoder spec and the texts): every MGMCF
    # run and ablation on the same memes reuses it. Not a pipeline output; safe to delete.
    text_cache_dir: str | None = ".cache/text_features"


class RegionFeaturesConfig(BaseModel):
    """``params.region_features``: the frozen region CNN and which views to encode."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cnn: RegionCNNConfig = RegionCNNConfig()
    views: list[str] = Field(default_factory=lambda: ["detector"])
    cache_dir: str = "data/region_features"
    threads: int = 2


# --------------------------------------------------------------------------- region features


@dataclass
class RegionFeatures:
    """Encoded regions of N images (rows aligned with ``keys``)."""

    keys: list[str]
    feats: Tensor  # [N, K, P, C]
    feats_flip: Tensor  # [N, K, P, C] features of the mirrored crops
    boxes: Tensor  # [N, K, 4] normalised xyxy
    scores: Tensor  # [N, K]
    valid: Tensor  # [N, K] bool
    classes: Tensor  # [N, K] int64 detector class ids (-1: none / grid cell)

    def take(self, keys: Sequence[str]) -> RegionFeatures:
        """Rows for ``keys`` in that order (repeats allowed); one-line KeyError for unknown keys."""
        index = {k: i for i, k in enumerate(self.keys)}
        missing = [k for k in keys if k not in index]
        if missing:
            raise KeyError(f"{len(missing)} of {len(keys)} images have no region features (e.g. {missing[0][:12]}): "
                           "run stages regions and region_features on these memes")  # fmt: skip
        rows = torch.tensor([index[k] for k in keys], dtype=torch.long)
        return RegionFeatures(list(keys), self.feats[rows], self.feats_flip[rows], self.boxes[rows],
                              self.scores[rows], self.valid[rows], self.classes[rows])  # fmt: skip

    @property
    def max_regions(self) -> int:
        return int(self.boxes.shape[1])

    @property
    def patches(self) -> int:
        return int(self.feats.shape[2])

    @property
    def dim(self) -> int:
        return int(self.feats.shape[3])

    @property
    def class_vocab(self) -> int:
        """Detector class ids seen (max id + 1; 0 when there are none, e.g. grid views)."""
        return int(self.classes.max()) + 1 if self.classes.numel() else 0


def region_features_path(cache_dir: str | Path, cnn_spec_key: str, view: str) -> Path:
    return Path(cache_dir) / cnn_spec_key / f"{view}.safetensors"


def save_region_features(path: Path, rf: RegionFeatures, meta: Mapping[str, Any]) -> Path:
    """Write atomically (temp file + rename): a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"feats": rf.feats.half().contiguous(), "feats_flip": rf.feats_flip.half().contiguous(),
               "boxes": rf.boxes.float().contiguous(), "scores": rf.scores.float().contiguous(),
               "valid": rf.valid.to(torch.uint8).contiguous(), "classes": rf.classes.long().contiguous()}  # fmt: skip
    tmp = path.with_name(path.name + ".tmp")
    save_tensors(tensors, tmp, metadata={"keys": json.dumps(rf.keys), "meta": json.dumps(dict(meta), sort_keys=True)})
    os.replace(tmp, path)
    return path


def load_region_features(path: Path) -> RegionFeatures:
    from safetensors import safe_open

    if not path.is_file():
        raise FileNotFoundError(f"no region features at {path}: run stage region_features (view and CNN as configured)")
    with safe_open(str(path), framework="pt") as fh:
        keys = json.loads(fh.metadata()["keys"])
        t = {name: fh.get_tensor(name) for name in ("feats", "feats_flip", "boxes", "scores", "valid", "classes")}
    return RegionFeatures(keys, t["feats"].float(), t["feats_flip"].float(), t["boxes"], t["scores"], t["valid"].bool(),
                          t["classes"])  # fmt: skip


def encode_regions(keys: list[str], crops: np.ndarray | Tensor, boxes: Any, scores: Any, valid: Any,
                   cnn: RegionCNN, classes: Any = None) -> RegionFeatures:  # fmt: skip
    """Crops ``uint8 [N, K, S, S, 3]`` -> :class:`RegionFeatures` (invalid slots get zero features)."""
    crops = torch.as_tensor(np.ascontiguousarray(crops))
    n, k = crops.shape[:2]
    valid_t = torch.as_tensor(np.asarray(valid)).bool()
    kept = crops[valid_t]  # [M, S, S, 3]: only kept regions are encoded
    feats = torch.zeros(n, k, cnn.patches_per_region, cnn.dim)
    feats_flip = torch.zeros_like(feats)
    # the crop and its mirror image (width axis) in one pass
    both = cnn.encode(torch.cat([kept, kept.flip(2)])) if len(kept) else torch.zeros(0, cnn.patches_per_region, cnn.dim)
    feats[valid_t], feats_flip[valid_t] = both[: len(kept)], both[len(kept) :]
    return RegionFeatures(list(keys), feats, feats_flip,
                          torch.as_tensor(np.asarray(boxes), dtype=torch.float32),
                          torch.as_tensor(np.asarray(scores), dtype=torch.float32), valid_t,
                          torch.full((n, k), -1, dtype=torch.long) if classes is None
                          else torch.as_tensor(np.asarray(classes), dtype=torch.long).masked_fill(~valid_t, -1))  # fmt: skip


def encode_region_views(cfg: RegionFeaturesConfig, views_root: Path, cnn: RegionCNN) -> dict[str, Any]:
    """Stage ``region_features``: every view of ``cfg.views`` (stage regions' crops under
    ``views_root/<view>``) encoded with ``cnn`` into its cache file, on ``cfg.threads`` torch threads;
    returns the stage's metrics (per view: images, regions, seconds, regions/s, file)."""
    report: dict[str, Any] = {"cnn": cnn.spec_key, "dim": cnn.dim, "patches_per_region": cnn.patches_per_region}
    total_start = time.perf_counter()
    with torch_threads(cfg.threads):
        for view in cfg.views:
            start = time.perf_counter()
            store = RegionStore(views_root / view)
            regions = store.get(store.keys())
            rf = encode_regions(regions.keys, regions.crops, regions.boxes, regions.scores, regions.valid, cnn,
                                regions.classes)  # fmt: skip
            path = save_region_features(region_features_path(cfg.cache_dir, cnn.spec_key, view), rf,
                                        {"view": view, "cnn": cnn.spec_key})  # fmt: skip
            seconds = time.perf_counter() - start
            crops = int(regions.valid.sum())
            report[view] = {"images": len(regions), "regions": crops, "seconds": round(seconds, 2),
                            "regions_per_s": round(2 * crops / max(seconds, 1e-9), 1), "file": str(path)}  # fmt: skip
            print(f"region_features {view}: {len(regions)} images, {crops} regions in {seconds:.1f}s")
    report["seconds"] = round(time.perf_counter() - total_start, 2)
    return report


def mirror_boxes(boxes: Tensor) -> Tensor:
    """Normalised xyxy boxes of the horizontally flipped image."""
    return torch.stack([1 - boxes[..., 2], boxes[..., 1], 1 - boxes[..., 0], boxes[..., 3]], dim=-1)


# --------------------------------------------------------------------------- training data


class MgmcfDataset(BatchedDataset):
    """One split's MGMCF inputs and targets, all in memory.

    With ``train=True`` each item is mirrored with probability 0.5 (drawn from ``generator``):
    the flipped image's CLIP embedding, the mirrored crops' features and mirrored boxes together,
    so the global and object-level views stay consistent.
    """

    def __init__(
        self, rows: pd.DataFrame, image: np.ndarray, image_flip: np.ndarray, text: TextFeatures,
        regions: RegionFeatures, specs: Sequence[TaskSpec], train: bool = False,
        generator: torch.Generator | None = None,
    ):  # fmt: skip
        if train and generator is None:
            raise ValueError("train=True needs a seeded torch.Generator (reproducible flip augmentation)")
        self.image = torch.from_numpy(np.ascontiguousarray(image))
        self.image_flip = torch.from_numpy(np.ascontiguousarray(image_flip))
        self.text, self.regions = text, regions
        self.targets = batch_targets(meme_labels(rows, specs), list(specs))
        self.meme_ids = rows["meme_id"].astype(str).tolist()
        self.train, self.generator = train, generator

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        """A whole batch by tensor indexing: far less Python per step than collating per-item dicts."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        if self.train:
            flip = torch.rand(len(idx), generator=self.generator) < 0.5
        else:
            flip = torch.zeros(len(idx), dtype=torch.bool)
        r = self.regions
        f1, f2, f3 = flip[:, None], flip[:, None, None], flip[:, None, None, None]
        return {
            "image_emb": torch.where(f1, self.image_flip[idx], self.image[idx]),
            "text_emb": self.text.global_[idx],
            "text_tokens": self.text.tokens[idx],
            "text_mask": self.text.mask[idx],
            "region_feats": torch.where(f3, r.feats_flip[idx], r.feats[idx]),
            "region_boxes": torch.where(f2, mirror_boxes(r.boxes[idx]), r.boxes[idx]),
            "region_scores": r.scores[idx],
            "region_mask": r.valid[idx],
            "region_classes": r.classes[idx],
            "targets": {task: t[idx] for task, t in self.targets.items()},
            "meme_id": [self.meme_ids[i] for i in idx.tolist()],
        }




class MgmcfInputs:
    """Builds MGMCF datasets for the splits of one meme table (the training side's input family)."""

    def __init__(
        self, memes: pd.DataFrame, store: FeatureStore, specs: Sequence[TaskSpec], cfg: MgmcfInputsConfig,
        clip_encoder: Any, region_cfg: RegionFeaturesConfig,
    ):  # fmt: skip
        self.memes, self.store, self.specs, self.cfg = memes, store, list(specs), cfg
        self.text_encoder: TextTokenEncoder = load_text_encoder(cfg.text_encoder, clip_encoder)
        cnn = build_region_cnn(region_cfg.cnn, clip_encoder)
        self.cnn_spec_key = cnn.spec_key
        self.regions_path = region_features_path(region_cfg.cache_dir, cnn.spec_key, cfg.regions_view)
        self.regions = load_region_features(self.regions_path)
        start = time.perf_counter()
        texts = memes["text"].fillna("").astype(str).tolist()
        unique = sorted(set(texts))
        features = cached_text_features(self.text_encoder, unique, cfg.text_cache_dir)
        pos = _positions(unique, texts)
        self.text = TextFeatures(features.global_[pos], features.tokens[pos], features.mask[pos])
        self.text_seconds = time.perf_counter() - start

    def model_dims(self) -> dict[str, Any]:
        """The MGMCFConfig fields fixed by the data."""
        return {"image_dim": int(self.store.get(content_keys(self.memes.head(1)))["image"].shape[1]),
                "text_dim": self.text_encoder.dim, "token_dim": self.text_encoder.dim,
                "region_dim": self.regions.dim, "text_len": self.cfg.text_encoder.max_length,
                "max_regions": self.regions.max_regions, "region_class_vocab": self.regions.class_vocab,
                "patch_grid": int(round(self.regions.patches**0.5))}  # fmt: skip

    def dataset(self, split: str, train: bool = False, generator: torch.Generator | None = None) -> MgmcfDataset:
        mask = (self.memes["split"] == split).to_numpy()
        rows = self.memes[mask]
        arrays = self.store.get(content_keys(rows))
        idx = torch.from_numpy(np.flatnonzero(mask))
        text = TextFeatures(self.text.global_[idx], self.text.tokens[idx], self.text.mask[idx])
        regions = self.regions.take(rows["image_sha256"].astype(str).tolist())
        return MgmcfDataset(rows, arrays["image"], arrays["image_flip"], text, regions, self.specs, train, generator)


def cached_text_features(encoder: TextTokenEncoder, texts: list[str], cache_dir: str | None) -> TextFeatures:
    """``encoder.encode(texts)``, memoised on disk under ``cache_dir`` (tokens stored as float16)."""
    if cache_dir is None:
        return encoder.encode(texts)
    import hashlib

    from safetensors.torch import load_file, save_file

    digest = hashlib.sha256("\0".join(texts).encode()).hexdigest()[:20]
    path = Path(cache_dir) / encoder.spec_key / f"{digest}.safetensors"
    if path.is_file():
        t = load_file(str(path))
        return TextFeatures(t["global"], t["tokens"].float(), t["mask"].bool())
    features = encoder.encode(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    save_file({"global": features.global_.contiguous(), "tokens": features.tokens.half().contiguous(),
               "mask": features.mask.to(torch.uint8).contiguous()}, str(tmp))  # fmt: skip
    os.replace(tmp, path)
    return TextFeatures(features.global_, features.tokens.half().float(), features.mask)


def _positions(unique: list[str], texts: list[str]) -> Tensor:
    index = {t: i for i, t in enumerate(unique)}
    return torch.tensor([index[t] for t in texts], dtype=torch.long)
