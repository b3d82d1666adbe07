"""The frozen-CLIP feature cache, and the Dataset that classifiers train on.

Every classifier here (GatedCLIP, the baselines) sees only frozen CLIP embeddings, so each meme is
encoded once per encoder and reused by every run, sweep and seed:

* a meme's **content key** is ``sha256(image_sha256 + "\\0" + text)``: the same picture with the
  same caption is the same input whatever its source or id, and an edited caption is a new key;
* an encoder's embeddings live in ``cache_dir/<spec_key>/`` (``ClipEncoder.spec_key`` hashes the
  config and the weights file, and the caption encoder of ``encoders.text`` when one is set), so
  changing weights or the text encoder can never serve stale features;
* the folder holds shards ``shard_00000.safetensors`` (tensors ``image`` / ``image_flip`` / ``text``,
  each ``float32[N, D]``, and their keys in the header metadata) and ``index.json``
  (key -> [shard, row]; ``dim`` the image width, and ``text_dim`` only when the text width differs,
  as with a sentence encoder for captions). Few large files keep DVC fast. Only keys missing from the index are
  computed, into *new* shards; old shards are never rewritten (safe for DVC-tracked caches and for
  readers holding them open). One writer per folder at a time.
* ``image_flip`` is the embedding of the horizontally flipped image, so flip augmentation (the
  only augmentation GatedCLIP uses) costs nothing at training time.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict
from safetensors.numpy import load_file as load_numpy
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from memeops.models.base import TaskSpec, batch_targets
from memeops.models.clip import ClipEncoder, torch_threads, width_entries
from memeops.safetensors_io import save_tensors

INDEX_FILE, SPEC_FILE = "index.json", "spec.json"
TENSORS = ("image", "image_flip", "text")
_SHARD_RE = re.compile(r"^shard_(\d{5,})\.safetensors$")


class FeatureConfig(BaseModel):
    """Batching and cache location for :func:`extract_features`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = 64
    shard_size: int = 2048
    cache_dir: str = "data/features"
    # Image-decoding DataLoader workers: with 1 torch thread the other core decodes; measured on 1000
    # stand-in 256-px memes here, 2 workers gave ~119 img/s vs ~99 with 0 (noisy, shared machine).
    num_workers: int = 2
    threads: int = 1  # torch intra-op threads (0: torch default); see PretrainConfig.threads


@dataclass
class FeatureStats:
    """What one :func:`extract_features` call did."""

    spec_key: str
    total: int  # distinct content keys asked for
    cached: int
    computed: int
    seconds: float
    images_per_s: float | None  # computed images (each with its flip and text) per second
    new_shards: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- keys and files --------------------------------------------------------------------------------


def content_key(image_sha256: str, text: str) -> str:
    """``sha256(image_sha256 + "\\0" + text)`` as hex: identical image and caption, identical features."""
    return hashlib.sha256(f"{image_sha256}\0{text}".encode()).hexdigest()


def content_keys(memes: pd.DataFrame) -> list[str]:
    """Content key per row (missing text counts as "")."""
    texts = memes["text"].fillna("").astype(str)
    return [content_key(str(s), t) for s, t in zip(memes["image_sha256"], texts)]


def image_paths(memes: pd.DataFrame) -> list[Path]:
    """Each meme's image file: ``source_root / image_path`` (relative paths resolve against cwd)."""
    return [Path(r) / p for r, p in zip(memes["source_root"], memes["image_path"])]


class ImageFiles(Dataset):
    """``(transform(PIL image i), i)``; decoding in a Dataset lets a DataLoader use workers."""

    def __init__(self, paths: Sequence[Path], transform: Any):
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        with Image.open(self.paths[i]) as im:
            return self.transform(im.convert("RGB")), i


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_index(folder: Path) -> dict[str, tuple[str, int]]:
    """key -> (shard file name, row); empty when the folder has no index yet."""
    path = folder / INDEX_FILE
    if not path.is_file():
        return {}
    entries = json.loads(path.read_text(encoding="utf-8"))["entries"]
    return {k: (s, int(r)) for k, (s, r) in entries.items()}


def _write_index(folder: Path, index: dict[str, tuple[str, int]], spec_key: str, dim: int,
                 text_dim: int | None = None) -> None:  # fmt: skip
    """``index.json``; ``text_dim`` is written only when it differs from ``dim`` (the image width), so
    a cache whose two widths agree keeps the file it always had."""
    payload = {"spec_key": spec_key, **width_entries(dim, text_dim),
               "entries": {k: [s, r] for k, (s, r) in index.items()}}  # fmt: skip
    _atomic_write_text(folder / INDEX_FILE, json.dumps(payload))


def cache_dims(folder: Path) -> dict[str, int]:
    """Width of each tensor of a cache folder (``image``, ``image_flip``, ``text``) from its index."""
    payload = json.loads((folder / INDEX_FILE).read_text(encoding="utf-8"))
    dim = int(payload["dim"])
    return {"image": dim, "image_flip": dim, "text": int(payload.get("text_dim", dim))}


def _next_shard_number(folder: Path) -> int:
    numbers = [int(m.group(1)) for p in folder.glob("shard_*.safetensors") if (m := _SHARD_RE.match(p.name))]
    return max(numbers, default=-1) + 1


def _write_shard(folder: Path, keys: list[str], arrays: dict[str, Tensor], spec_key: str) -> str:
    """A new shard file (never an existing name); returns its name."""
    name = f"shard_{_next_shard_number(folder):05d}.safetensors"
    tmp = folder / (name + ".tmp")
    tensors = {k: arrays[k].contiguous().float() for k in TENSORS}
    save_tensors(tensors, tmp, metadata={"spec_key": spec_key, "keys": json.dumps(keys)})
    os.replace(tmp, folder / name)
    return name


# --- extraction --------------------------------------------------------------------------------------


def _todo(
    memes: pd.DataFrame, index: dict[str, tuple[str, int]]
) -> tuple[int, list[str], list[Path], list[str]]:
    """Distinct key count, and (keys, image paths, texts) of the uncached ones in table order."""
    keys = content_keys(memes)
    paths, texts = image_paths(memes), memes["text"].fillna("").astype(str).tolist()
    seen: set[str] = set()
    todo_k, todo_p, todo_t = [], [], []
    for k, p, t in zip(keys, paths, texts):
        if k in seen:
            continue
        seen.add(k)
        if k not in index:
            todo_k.append(k)
            todo_p.append(p)
            todo_t.append(t)
    return len(seen), todo_k, todo_p, todo_t


def _encode_batch(encoder: ClipEncoder, images: Tensor, texts: list[str]) -> dict[str, Tensor]:
    """``[B, 3, S, S]`` preprocessed images + texts -> image / image_flip ``[B, D]``, text ``[B, D_text]``.

    The flip is taken on the preprocessed tensor: open_clip's eval transform (resize + centre crop)
    commutes with a horizontal flip, and one forward pass covers both views.
    """
    both = encoder.encode_images(torch.cat([images, images.flip(-1)]))  # [2B, D]
    n = images.shape[0]
    return {"image": both[:n], "image_flip": both[n:], "text": encoder.encode_texts(texts)}


def _write_spec(folder: Path, encoder: ClipEncoder) -> None:
    if not (folder / SPEC_FILE).is_file():
        spec = {"spec_key": encoder.spec_key, **encoder.widths, "encoder": encoder.config.model_dump()}
        _atomic_write_text(folder / SPEC_FILE, json.dumps(spec, indent=2))


def extract_features(memes: pd.DataFrame, encoder: ClipEncoder, cfg: FeatureConfig) -> FeatureStats:
    """Encode every meme whose content key is not cached yet for ``encoder``; append new shards."""
    start = time.perf_counter()
    folder = Path(cfg.cache_dir) / encoder.spec_key
    folder.mkdir(parents=True, exist_ok=True)
    _write_spec(folder, encoder)
    index = read_index(folder)
    total, keys, paths, texts = _todo(memes, index)
    stats = FeatureStats(encoder.spec_key, total, total - len(keys), len(keys), 0.0, None)
    if not keys:
        stats.seconds = time.perf_counter() - start
        return stats
    loader = DataLoader(ImageFiles(paths, encoder.preprocess), batch_size=cfg.batch_size, shuffle=False,
                        num_workers=cfg.num_workers)  # fmt: skip
    buf: dict[str, list[Tensor]] = {k: [] for k in TENSORS}
    buf_keys: list[str] = []
    t_compute = time.perf_counter()
    bar = tqdm(total=len(keys), unit="img", desc=f"features {encoder.spec_key}")
    with torch_threads(cfg.threads), bar:
        for images, idx in loader:
            out = _encode_batch(encoder, images, [texts[i] for i in idx.tolist()])
            for name in TENSORS:
                buf[name].append(out[name])
            buf_keys.extend(keys[i] for i in idx.tolist())
            while len(buf_keys) >= cfg.shard_size:
                buf_keys = _flush(folder, buf, buf_keys, cfg.shard_size, index, encoder, stats)
            bar.update(len(idx))
        if buf_keys:
            _flush(folder, buf, buf_keys, cfg.shard_size, index, encoder, stats)
    stats.seconds = time.perf_counter() - start
    stats.images_per_s = len(keys) / max(1e-9, time.perf_counter() - t_compute)
    return stats


def _flush(
    folder: Path, buf: dict[str, list[Tensor]], buf_keys: list[str], shard_size: int,
    index: dict[str, tuple[str, int]], encoder: ClipEncoder, stats: FeatureStats,
) -> list[str]:  # fmt: skip
    """Write up to ``shard_size`` buffered rows as one shard, update the index; return the leftover keys."""
    cat = {k: torch.cat(v) for k, v in buf.items()}
    n = min(shard_size, len(buf_keys))
    name = _write_shard(folder, buf_keys[:n], {k: v[:n] for k, v in cat.items()}, encoder.spec_key)
    index.update({k: (name, row) for row, k in enumerate(buf_keys[:n])})
    _write_index(folder, index, encoder.spec_key, encoder.dim, encoder.text_dim)
    stats.new_shards.append(name)
    for k in buf:
        buf[k] = [cat[k][n:]] if n < len(buf_keys) else []
    return buf_keys[n:]


# --- reading -----------------------------------------------------------------------------------------


class FeatureStore:
    """Read access to one encoder's cache folder: arrays for a list of content keys."""

    def __init__(self, cache_dir: str | Path, spec_key: str):
        self.folder = Path(cache_dir) / spec_key
        self.spec_key = spec_key
        if not (self.folder / INDEX_FILE).is_file():
            raise FileNotFoundError(f"no feature cache at {self.folder}: run extract_features for this encoder")
        self.index = read_index(self.folder)
        self._shards: dict[str, dict[str, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.index)

    @cached_property
    def dims(self) -> dict[str, int]:
        """Width of each tensor (``image``, ``image_flip``, ``text``): the model config's input widths."""
        return cache_dims(self.folder)

    @property
    def text_dim(self) -> int:
        """The caption embedding's width: the image width, unless ``encoders.text`` set a sentence encoder."""
        return self.dims["text"]

    def __contains__(self, key: object) -> bool:
        return key in self.index

    def _shard(self, name: str) -> dict[str, np.ndarray]:
        if name not in self._shards:
            self._shards[name] = load_numpy(str(self.folder / name))
        return self._shards[name]

    def get(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """``{"image", "image_flip", "text"}`` -> ``float32[len(keys), D]`` in the order of ``keys`` (D per
        tensor: :attr:`dims`)."""
        missing = sum(1 for k in keys if k not in self.index)
        if missing:
            raise KeyError(f"{missing} of {len(keys)} content keys are not in the feature cache {self.folder}: "
                           "run extract_features on these memes first")  # fmt: skip
        if not keys:
            return {name: np.zeros((0, self.dims[name]), np.float32) for name in TENSORS}
        locs = [self.index[k] for k in keys]
        out = {}
        for name in TENSORS:
            out[name] = np.stack([self._shard(s)[name][r] for s, r in locs]).astype(np.float32, copy=False)
        return out


# --- the training Dataset ----------------------------------------------------------------------------


def _clean_label(value: Any, kind: str) -> Any:
    """Table cell -> None | str (single) | list[str] (multi), as batch_targets expects."""
    if kind == "multi" and isinstance(value, (list, tuple, np.ndarray)):
        return [str(v) for v in value]
    if value is None or pd.isna(value):
        return None
    return [str(value)] if kind == "multi" else str(value)


def meme_labels(memes: pd.DataFrame, specs: Sequence[TaskSpec]) -> list[dict[str, Any]]:
    """Per-row ``{task: label | list | None}`` from the ``label_<task>`` columns."""
    for spec in specs:
        if f"label_{spec.name}" not in memes:
            raise KeyError(f"meme table has no column label_{spec.name} for task {spec.name!r}")
    cols = {s.name: memes[f"label_{s.name}"].tolist() for s in specs}
    return [{s.name: _clean_label(cols[s.name][i], s.kind) for s in specs} for i in range(len(memes))]


def _first_row(value: Any) -> Any:
    """Row 0 of a batch value: tensors / lists by index, dicts of them recursively."""
    if isinstance(value, dict):
        return {k: _first_row(v) for k, v in value.items()}
    return value[0]


class BatchedDataset(Dataset):
    """A Dataset whose subclass builds whole batches by tensor indexing (:meth:`batch`).

    The trainer's loaders see ``batched`` and ask for ``dataset[list_of_indices]``: far less Python
    per step than collating one dict per meme. ``dataset[i]`` still gives one item.
    """

    batched = True
    meme_ids: list[str]

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.meme_ids)

    def __getitem__(self, i: int | Sequence[int]) -> dict[str, Any]:
        if not isinstance(i, int):
            return self.batch(i)
        return _first_row(self.batch([i]))


class FeatureDataset(BatchedDataset):
    """Cached embeddings + multi-task targets of one split.

    Items: ``{"image_emb": [D], "text_emb": [D_text], "targets": {task: [] long | [L] float}, "meme_id"}``;
    the trainer fetches whole batches (``dataset[list_of_indices]``, see ``batched``), targets
    exactly as :func:`memeops.models.base.batch_targets` builds them (IGNORE_INDEX / all -1 rows
    for missing labels). With ``train=True`` each item uses the
    flipped image's embedding with probability 0.5, drawn from ``generator`` so runs are
    reproducible; use ``num_workers=0`` (everything is in memory; workers would copy the generator).
    """

    def __init__(
        self, memes: pd.DataFrame, store: FeatureStore, specs: Sequence[TaskSpec], split: str | None,
        train: bool = False, generator: torch.Generator | None = None,
    ):  # fmt: skip
        if train and generator is None:
            raise ValueError("train=True needs a seeded torch.Generator (reproducible flip augmentation)")
        rows = memes if split is None else memes[memes["split"] == split]
        arrays = store.get(content_keys(rows))
        self.image = torch.from_numpy(arrays["image"])  # [N, D]
        self.image_flip = torch.from_numpy(arrays["image_flip"])  # [N, D]
        self.text = torch.from_numpy(arrays["text"])  # [N, D_text]
        self.targets = batch_targets(meme_labels(rows, specs), list(specs))  # {task: [N] | [N, L]}
        self.meme_ids = rows["meme_id"].astype(str).tolist()
        self.train = train
        self.generator = generator

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        """A whole batch by tensor indexing: far less Python per step than collating one dict per meme."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        image = self.image[idx]
        if self.train:
            flip = torch.rand(len(idx), generator=self.generator) < 0.5
            image = torch.where(flip[:, None], self.image_flip[idx], image)
        return {
            "image_emb": image,
            "text_emb": self.text[idx],
            "targets": {task: t[idx] for task, t in self.targets.items()},
            "meme_id": [self.meme_ids[i] for i in idx.tolist()],
        }


