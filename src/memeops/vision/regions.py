"""Region views: which boxes of an image a model sees, their crops, and the sharded store.

A **view** (:class:`RegionViewConfig`) turns one image's :class:`~memeops.vision.detect.Detections`
into at most ``K = max_regions`` regions: detections with score >= ``min_score`` (best first), or
fixed grid cells (``source: grid``), optionally enlarged (``context``) and perturbed (``jitter``,
the "degraded detector" ablation), padded to ``K`` with a ``valid`` mask. Each region becomes a
``crop_size`` x ``crop_size`` RGB crop.

A :class:`RegionSet` holds the regions of N images (keyed by ``image_sha256``):
``boxes [N, K, 4]`` float32 normalised xyxy, ``scores [N, K]`` float32, ``classes [N, K]`` int64
(-1: padding or no class), ``valid [N, K]`` bool, ``crops [N, K, S, S, 3]`` uint8 (zeros where not
valid).

A materialised view lives in one folder (``data/regions/views/<name>/``): ``view.json`` (the
config), ``index.json`` (key -> [shard, row]) and ``shard_NNNNN.safetensors`` files (tensors
``boxes``, ``scores``, ``classes``, ``valid``, ``crops``; keys in the header metadata), the layout of
:mod:`memeops.data.features`: few large files, never one file per crop. :class:`RegionViewWriter`
writes one, :class:`RegionStore` reads it.

Jitter is seeded per image from ``(view.seed, key)``, so a view is reproducible whatever the image
order or batch size.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from safetensors.numpy import load_file, save_file

from memeops.vision.detect import Detections, Detector, box_iou, grid_boxes

INDEX_FILE, VIEW_FILE = "index.json", "view.json"
ARRAYS = ("boxes", "scores", "classes", "valid", "crops")
MIN_BOX = 1e-3  # smallest normalised side a region keeps after jitter


class RegionViewConfig(BaseModel):
    """One region view: source, how many regions, filtering, degradation, crop size."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Literal["detector", "grid"] = "detector"
    max_regions: int = Field(4, ge=1, le=64, description="K: regions per image (padded)")
    min_score: float = Field(0.25, ge=0.0, le=1.0, description="detector source: lowest score kept")
    jitter: float = Field(0.0, ge=0.0, le=1.0, description="each corner moves by up to jitter x box w/h")
    crop_size: int = Field(32, ge=4, le=512)
    grid: int = Field(2, ge=1, le=16, description="grid source: grid x grid cells (row-major, first K)")
    seed: int = 0
    context: float = Field(0.0, ge=0.0, le=2.0, description="each side moves out by context/2 x box w/h")


@dataclass
class RegionSet:
    """Regions of N images; see the module docstring for shapes."""

    keys: list[str]
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    valid: np.ndarray
    crops: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.keys)
        for name in ARRAYS:
            if len(getattr(self, name)) != n:
                raise ValueError(f"RegionSet: {n} keys but {name} has {len(getattr(self, name))} rows")

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def max_regions(self) -> int:
        return int(self.valid.shape[1])

    @property
    def crop_size(self) -> int:
        return int(self.crops.shape[2])

    def take(self, keys: Sequence[str]) -> RegionSet:
        """The rows of ``keys``, in that order (repeats allowed); KeyError names what is missing."""
        pos = {k: i for i, k in enumerate(self.keys)}
        missing = [k for k in keys if k not in pos]
        if missing:
            raise KeyError(
                f"{len(missing)} of {len(keys)} keys are not in this RegionSet (first: {missing[0]})"
            )
        idx = np.array([pos[k] for k in keys], dtype=np.int64)
        return RegionSet([str(k) for k in keys], *(getattr(self, a)[idx] for a in ARRAYS))

    @classmethod
    def empty(cls, max_regions: int, crop_size: int) -> RegionSet:
        k, s = max_regions, crop_size
        boxes, crops = np.zeros((0, k, 4), np.float32), np.zeros((0, k, s, s, 3), np.uint8)
        return cls(
            [], boxes, np.zeros((0, k), np.float32), np.zeros((0, k), np.int64), np.zeros((0, k), bool), crops
        )

    @classmethod
    def concat(cls, sets: Sequence[RegionSet]) -> RegionSet:
        if not sets:
            raise ValueError("RegionSet.concat needs at least one set")
        keys = [k for s in sets for k in s.keys]
        return cls(keys, *(np.concatenate([getattr(s, a) for s in sets]) for a in ARRAYS))


# --- one image ---------------------------------------------------------------------------------------


def region_rng(view: RegionViewConfig, key: str) -> np.random.Generator:
    """The generator for one image's jitter: seeded by ``(view.seed, sha256(key))``."""
    digest = int(hashlib.sha256(str(key).encode()).hexdigest()[:15], 16)
    return np.random.default_rng([view.seed, digest])


def select_regions(
    dets: Detections | None, view: RegionViewConfig, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One image's regions under ``view``: ``(boxes [K, 4] float32, scores [K] float32,
    classes [K] int64, valid [K] bool)``, padded to ``K`` (padding: zero boxes, score 0, class -1).

    Detector source: detections with score >= ``min_score``, best first (``dets`` must be sorted,
    as every :class:`Detector` returns them). Grid source: the first K grid cells (``dets`` ignored).
    Then boxes grow by ``context`` and, when ``jitter`` > 0, each corner moves by
    ``U(-jitter, jitter)`` x box width / height, drawn from ``rng``; boxes are clipped to [0, 1].
    """
    k = view.max_regions
    if view.source == "grid":
        boxes = grid_boxes(view.grid)[:k]
        scores, classes = np.ones(len(boxes), np.float32), np.full(len(boxes), -1, np.int64)
    else:
        if dets is None:
            raise ValueError("a detector view needs detections (dets is None)")
        keep = np.flatnonzero(dets.scores >= view.min_score)[:k]
        boxes, scores, classes = dets.boxes[keep], dets.scores[keep], dets.classes[keep]
    boxes = boxes.astype(np.float64, copy=True)
    wh = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)  # [n, 4]: w, h, w, h
    if view.context > 0:
        boxes += np.array([-1, -1, 1, 1]) * wh * (view.context / 2)
    if view.jitter > 0 and len(boxes):
        if rng is None:
            raise ValueError("jitter > 0 needs an rng (see region_rng)")
        boxes += rng.uniform(-view.jitter, view.jitter, size=boxes.shape) * wh
    boxes = _fix_boxes(boxes)
    n = len(boxes)
    out_boxes = np.zeros((k, 4), np.float32)
    out_scores = np.zeros(k, np.float32)
    out_classes = np.full(k, -1, np.int64)
    valid = np.zeros(k, bool)
    out_boxes[:n], out_scores[:n], out_classes[:n], valid[:n] = boxes, scores, classes, True
    return out_boxes, out_scores, out_classes, valid


def _fix_boxes(boxes: np.ndarray) -> np.ndarray:
    """Order corners, clip to [0, 1], and keep at least ``MIN_BOX`` per side."""
    if not len(boxes):
        return boxes.reshape(0, 4)
    x0, x1 = np.minimum(boxes[:, 0], boxes[:, 2]), np.maximum(boxes[:, 0], boxes[:, 2])
    y0, y1 = np.minimum(boxes[:, 1], boxes[:, 3]), np.maximum(boxes[:, 1], boxes[:, 3])
    out = np.clip(np.stack([x0, y0, x1, y1], axis=1), 0.0, 1.0)
    for lo, hi in ((0, 2), (1, 3)):
        short = out[:, hi] - out[:, lo] < MIN_BOX
        out[short, lo] = np.minimum(out[short, lo], 1.0 - MIN_BOX)
        out[short, hi] = out[short, lo] + MIN_BOX
    return out


def crop_regions(image: Image.Image, boxes: np.ndarray, valid: np.ndarray, crop_size: int) -> np.ndarray:
    """``uint8 [K, S, S, 3]``: each valid box (normalised xyxy) cropped and resized (bilinear,
    antialiased) to ``S = crop_size``; invalid slots are zeros."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    w, h = image.size
    crops = np.zeros((len(boxes), crop_size, crop_size, 3), np.uint8)
    for i in np.flatnonzero(valid):
        x0, y0, x1, y1 = (float(v) for v in np.asarray(boxes[i], np.float64) * (w, h, w, h))
        x1, y1 = max(x1, x0 + 1e-3), max(y1, y0 + 1e-3)
        crops[i] = np.asarray(
            image.resize((crop_size, crop_size), Image.Resampling.BILINEAR, box=(x0, y0, x1, y1))
        )
    return crops


# --- many images ---------------------------------------------------------------------------------------


def build_region_set(
    images: Sequence[Image.Image],
    dets: Sequence[Detections | None],
    view: RegionViewConfig,
    keys: Sequence[str],
) -> RegionSet:
    """Regions of each image under ``view`` from already computed detections (None for grid views)."""
    if not (len(images) == len(dets) == len(keys)):
        raise ValueError(f"{len(images)} images, {len(dets)} detection lists, {len(keys)} keys")
    if not len(images):
        return RegionSet.empty(view.max_regions, view.crop_size)
    parts = []
    for image, det, key in zip(images, dets, keys):
        boxes, scores, classes, valid = select_regions(det, view, region_rng(view, key))
        parts.append((boxes, scores, classes, valid, crop_regions(image, boxes, valid, view.crop_size)))
    return RegionSet([str(k) for k in keys], *(np.stack(a) for a in zip(*parts)))


def regions_for_images(
    images: Sequence[Image.Image], detector: Detector | None, view: RegionViewConfig,
    keys: Sequence[str] | None = None,
) -> RegionSet:  # fmt: skip
    """Inference on raw images: run ``detector`` (not needed for grid views) and build the view.
    ``keys`` (default ``"0", "1", ...``) name the rows and seed any jitter."""
    keys = [str(i) for i in range(len(images))] if keys is None else list(keys)
    if view.source == "grid":
        dets: list[Detections | None] = [None] * len(images)
    else:
        if detector is None:
            raise ValueError("a detector view needs a detector (load one with load_detector_dir)")
        dets = list(detector.detect(images))
    return build_region_set(images, dets, view, keys)


def region_key_recall(regions: RegionSet, key_boxes: np.ndarray, iou: float = 0.5) -> float:
    """Fraction of images whose key box (normalised xyxy, one per row of ``regions``) is covered,
    IoU >= ``iou``, by one of that image's valid regions."""
    key_boxes = np.asarray(key_boxes, np.float32).reshape(-1, 4)
    if len(key_boxes) != len(regions):
        raise ValueError(f"{len(key_boxes)} key boxes for {len(regions)} images")
    if not len(regions):
        return float("nan")
    hits = [bool(((box_iou(key_boxes[i : i + 1], regions.boxes[i])[0] >= iou) & regions.valid[i]).any())
            for i in range(len(regions))]  # fmt: skip
    return float(np.mean(hits))


def region_key_coverage(regions: RegionSet, key_boxes: np.ndarray, min_cover: float = 0.9) -> float:
    """Fraction of images whose key box lies (at least ``min_cover`` of its area) inside one valid
    region: the crop shows the object, however small (what a grid cell can offer)."""
    key_boxes = np.asarray(key_boxes, np.float64).reshape(-1, 4)
    if len(key_boxes) != len(regions):
        raise ValueError(f"{len(key_boxes)} key boxes for {len(regions)} images")
    if not len(regions):
        return float("nan")
    boxes = regions.boxes.astype(np.float64)  # [N, K, 4]
    lt = np.maximum(boxes[..., :2], key_boxes[:, None, :2])
    rb = np.minimum(boxes[..., 2:], key_boxes[:, None, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)  # [N, K]
    area = np.clip(key_boxes[:, 2:] - key_boxes[:, :2], 1e-12, None).prod(-1)[:, None]
    return float((((inter / area) >= min_cover) & regions.valid).any(axis=1).mean())


# --- the sharded store ---------------------------------------------------------------------------------


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class RegionViewWriter:
    """Streams a :class:`RegionSet` per batch into a fresh view folder (old shards are removed).

    ``with RegionViewWriter(folder, view) as w: w.add(regions)``; the index is written on close.
    A key added twice keeps its first row (same image, same regions).
    """

    def __init__(self, folder: str | Path, view: RegionViewConfig, shard_size: int = 1024):
        self.folder = Path(folder)
        self.view = view
        self.shard_size = shard_size
        self.folder.mkdir(parents=True, exist_ok=True)
        for old in [
            *self.folder.glob("shard_*.safetensors*"),
            self.folder / INDEX_FILE,
            self.folder / VIEW_FILE,
        ]:
            old.unlink(missing_ok=True)
        self.index: dict[str, tuple[str, int]] = {}
        self._buffer: list[RegionSet] = []
        self._buffered = 0
        self._shards = 0

    def add(self, regions: RegionSet) -> None:
        if regions.max_regions != self.view.max_regions or (
            len(regions) and regions.crop_size != self.view.crop_size
        ):
            got, want = (regions.max_regions, regions.crop_size), (self.view.max_regions, self.view.crop_size)
            raise ValueError(f"RegionSet (K, S) = {got} does not match the view's {want}")
        seen = set(self.index) | {k for s in self._buffer for k in s.keys}
        fresh, keys = [], []
        for i, k in enumerate(regions.keys):
            if k not in seen:
                seen.add(k)
                fresh.append(i)
                keys.append(k)
        if not fresh:
            return
        if len(fresh) < len(regions):
            regions = RegionSet(keys, *(getattr(regions, a)[fresh] for a in ARRAYS))
        self._buffer.append(regions)
        self._buffered += len(regions)
        while self._buffered >= self.shard_size:
            self._flush(self.shard_size)

    def _flush(self, n: int) -> None:
        data = RegionSet.concat(self._buffer)
        head, rest = RegionSet(data.keys[:n], *(getattr(data, a)[:n] for a in ARRAYS)), data.keys[n:]
        name = f"shard_{self._shards:05d}.safetensors"
        tensors = {a: np.ascontiguousarray(getattr(head, a)) for a in ARRAYS}
        tmp = self.folder / (name + ".tmp")
        save_file(tensors, str(tmp), metadata={"keys": json.dumps(head.keys)})
        os.replace(tmp, self.folder / name)
        self.index.update({k: (name, row) for row, k in enumerate(head.keys)})
        self._shards += 1
        self._buffer = [RegionSet(rest, *(getattr(data, a)[n:] for a in ARRAYS))] if rest else []
        self._buffered = len(rest)

    def close(self) -> dict[str, Any]:
        """Flush the last shard, write ``view.json`` and ``index.json``; return a small summary."""
        if self._buffered:
            self._flush(self._buffered)
        spec = {"view": self.view.model_dump(mode="json"), "images": len(self.index), "shards": self._shards}
        _atomic_write(self.folder / VIEW_FILE, json.dumps(spec, indent=2, sort_keys=True) + "\n")
        _atomic_write(
            self.folder / INDEX_FILE, json.dumps({"entries": {k: [s, r] for k, (s, r) in self.index.items()}})
        )
        return spec

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.close()


def write_region_view(
    folder: str | Path, regions: RegionSet, view: RegionViewConfig, shard_size: int = 1024
) -> dict:
    """Write a whole :class:`RegionSet` as a view folder (see :class:`RegionViewWriter`)."""
    writer = RegionViewWriter(folder, view, shard_size)
    writer.add(regions)
    return writer.close()


class RegionStore:
    """Read access to one materialised view folder."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not (self.folder / INDEX_FILE).is_file():
            raise FileNotFoundError(f"no region view at {self.folder}: run stage regions (dvc repro regions)")
        spec = json.loads((self.folder / VIEW_FILE).read_text(encoding="utf-8"))
        self.view = RegionViewConfig.model_validate(spec["view"])
        entries = json.loads((self.folder / INDEX_FILE).read_text(encoding="utf-8"))["entries"]
        self.index: dict[str, tuple[str, int]] = {k: (s, int(r)) for k, (s, r) in entries.items()}
        self._shards: dict[str, dict[str, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, key: object) -> bool:
        return key in self.index

    def keys(self) -> list[str]:
        return list(self.index)

    def _shard(self, name: str) -> dict[str, np.ndarray]:
        if name not in self._shards:
            self._shards[name] = load_file(str(self.folder / name))
        return self._shards[name]

    def get(self, keys: Sequence[str]) -> RegionSet:
        """The regions of ``keys`` (image_sha256), in that order."""
        missing = [k for k in keys if k not in self.index]
        if missing:
            raise KeyError(f"{len(missing)} of {len(keys)} images are not in region view {self.folder} "
                           f"(first: {missing[0]}): run stage regions on these memes")  # fmt: skip
        k, s = self.view.max_regions, self.view.crop_size
        out = RegionSet.empty(k, s)
        n = len(keys)
        arrays = {a: np.zeros((n, *getattr(out, a).shape[1:]), getattr(out, a).dtype) for a in ARRAYS}
        by_shard: dict[str, tuple[list[int], list[int]]] = {}
        for pos, key in enumerate(keys):
            shard, row = self.index[key]
            dst, src = by_shard.setdefault(shard, ([], []))
            dst.append(pos)
            src.append(row)
        for shard, (dst, src) in by_shard.items():
            data = self._shard(shard)
            for a in ARRAYS:
                arrays[a][dst] = data[a][src]
        return RegionSet([str(x) for x in keys], *(arrays[a] for a in ARRAYS))


def open_views(root: str | Path) -> dict[str, RegionStore]:
    """Every materialised view under ``root`` (``data/regions/views``), by name."""
    root = Path(root)
    return (
        {p.name: RegionStore(p) for p in sorted(root.iterdir()) if (p / INDEX_FILE).is_file()}
        if root.is_dir()
        else {}
    )
