"""Stage ``regions``' library: run the detector once over every meme image, materialise every view.

:func:`extract_regions` decodes each unique image (by ``image_sha256``) once, runs the detector on
batches of them, keeps all detections (score >= the detector's ``conf``, up to ``max_det``) in
``<output_dir>/detections.parquet`` and writes each configured view under
``<output_dir>/views/<name>/`` (a :class:`~memeops.vision.regions.RegionStore` folder). It returns
the metrics of ``reports/metrics/regions.json``: throughput, and per view the mean number of valid
regions, the key-object recall (a valid region with IoU >= 0.5) and coverage (a valid region
containing >= 90% of the key box) on the evaluation split's memes with ground-truth objects
(``extra.objects`` with a ``key`` flag, as SynthMeme provides).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from memeops.vision.detect import Detections, Detector, key_recall_at_k
from memeops.vision.regions import (
    VIEW_FILE,
    RegionSet,
    RegionViewConfig,
    RegionViewWriter,
    build_region_set,
    region_key_coverage,
    region_key_recall,
)  # fmt: skip

DETECTIONS_FILE = "detections.parquet"
VIEWS_DIR = "views"


def default_views() -> dict[str, RegionViewConfig]:
    """The views of the default pipeline (see docs/regions.md for why these levels)."""
    return {
        "detector": RegionViewConfig(),
        "grid": RegionViewConfig(source="grid", grid=2, max_regions=4),
        "degraded_1": RegionViewConfig(min_score=0.5, jitter=0.15, max_regions=3),
        "degraded_2": RegionViewConfig(min_score=0.7, jitter=0.3, max_regions=2),
    }


class RegionsConfig(BaseModel):
    """``params.yaml`` -> ``regions``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    detector_dir: str = "models/detector"
    output_dir: str = "data/regions"
    batch_size: int = Field(64, ge=1, description="images decoded and detected per step")
    shard_size: int = Field(1024, ge=1)
    eval_split: str = Field("test", description="split whose ground-truth key objects score the views")
    recall_k: list[int] = Field(default_factory=lambda: [1, 2, 4, 8])
    views: dict[str, RegionViewConfig] = Field(default_factory=default_views)


# --- inputs ------------------------------------------------------------------------------------------


def unique_images(memes: pd.DataFrame) -> pd.DataFrame:
    """One row per ``image_sha256`` (first occurrence): ``image_sha256``, ``path``."""
    first = memes.drop_duplicates("image_sha256")
    paths = [str(Path(r) / p) for r, p in zip(first["source_root"], first["image_path"])]
    return pd.DataFrame({"image_sha256": first["image_sha256"].astype(str).to_numpy(), "path": paths})


def key_objects(memes: pd.DataFrame) -> pd.DataFrame:
    """Memes whose ``extra`` names a key object: ``image_sha256``, ``split``, ``key_class`` and the
    key box normalised by the meme's ``width`` / ``height`` (``x0, y0, x1, y1``)."""
    rows = []
    for sha, split, extra, w, h in zip(memes["image_sha256"], memes["split"], memes["extra"], memes["width"],
                                       memes["height"]):  # fmt: skip
        if not isinstance(extra, str) or '"objects"' not in extra:
            continue
        objects = json.loads(extra).get("objects") or []
        key = next((o for o in objects if o.get("key")), None)
        if key is None or not (w > 0 and h > 0):  # also skips NaN sizes
            continue
        x0, y0, x1, y1 = (float(v) for v in key["box"])
        rows.append((str(sha), str(split), int(key.get("class_id", -1)), x0 / w, y0 / h, x1 / w, y1 / h))
    return pd.DataFrame(rows, columns=["image_sha256", "split", "key_class", "x0", "y0", "x1", "y1"])


def _load(path: str) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def _batches(paths: Sequence[str], size: int) -> Iterator[list[Image.Image]]:
    """Decoded batches, the next one decoding in a thread while the caller works on this one."""
    chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(lambda c: [_load(p) for p in c], chunks[0]) if chunks else None
        for i in range(len(chunks)):
            images = pending.result()
            if i + 1 < len(chunks):
                pending = pool.submit(lambda c: [_load(p) for p in c], chunks[i + 1])
            yield images


# --- detections table --------------------------------------------------------------------------------


def detections_table(keys: Sequence[str], dets: Sequence[Detections]) -> pd.DataFrame:
    """Long table: one row per detection (``image_sha256, rank, x0, y0, x1, y1, score, class_id``)."""
    dets = list(dets) or [Detections.empty()]
    counts = [len(d) for d in dets]
    boxes = np.concatenate([d.boxes for d in dets])
    return pd.DataFrame({
        "image_sha256": np.repeat(np.asarray(list(keys) or [""], dtype=object), counts),
        "rank": np.concatenate([np.arange(c, dtype=np.int16) for c in counts]),
        "x0": boxes[:, 0], "y0": boxes[:, 1], "x1": boxes[:, 2], "y1": boxes[:, 3],
        "score": np.concatenate([d.scores for d in dets]),
        "class_id": np.concatenate([d.classes for d in dets]),
    })  # fmt: skip


def load_detections(path: str | Path, keys: Sequence[str] | None = None) -> dict[str, Detections]:
    """``detections.parquet`` back to ``{image_sha256: Detections}``; ``keys`` not in the table
    (images with no detection) map to empty detections."""
    table = pd.read_parquet(path).sort_values(["image_sha256", "rank"], kind="stable")
    out: dict[str, Detections] = {}
    for key, group in table.groupby("image_sha256", sort=False):
        boxes = group[["x0", "y0", "x1", "y1"]].to_numpy(np.float32)
        scores, classes = group["score"].to_numpy(np.float32), group["class_id"].to_numpy(np.int64)
        out[str(key)] = Detections(boxes, scores, classes)
    for key in keys or []:
        out.setdefault(str(key), Detections.empty())
    return out


# --- the stage -----------------------------------------------------------------------------------------


def extract_regions(memes: pd.DataFrame, detector: Detector | None, cfg: RegionsConfig) -> dict[str, Any]:
    """Detect once per unique image, write ``detections.parquet`` and every view; return metrics."""
    start = time.perf_counter()
    out_dir = Path(cfg.output_dir)
    (out_dir / VIEWS_DIR).mkdir(parents=True, exist_ok=True)
    for stale in (out_dir / VIEWS_DIR).iterdir():  # views no longer configured
        if stale.is_dir() and stale.name not in cfg.views and (stale / VIEW_FILE).is_file():
            shutil.rmtree(stale)
    needs_detector = any(v.source == "detector" for v in cfg.views.values())
    if detector is None and needs_detector:
        raise ValueError("views with source detector need a detector")
    images = unique_images(memes)
    keys, paths = images["image_sha256"].tolist(), images["path"].tolist()
    writers = {name: RegionViewWriter(out_dir / VIEWS_DIR / name, view, cfg.shard_size)
               for name, view in cfg.views.items()}  # fmt: skip
    truth = key_objects(memes[memes["split"] == cfg.eval_split]).drop_duplicates("image_sha256")
    eval_keys = set(truth["image_sha256"])
    all_dets: list[Detections] = []
    eval_sets: dict[str, list[RegionSet]] = {name: [] for name in cfg.views}
    valid_sum = {name: 0 for name in cfg.views}
    detect_s = 0.0
    done = 0
    for batch in _batches(paths, cfg.batch_size):
        batch_keys = keys[done : done + len(batch)]
        done += len(batch)
        t = time.perf_counter()
        dets = list(detector.detect(batch)) if detector is not None else [Detections.empty() for _ in batch]
        detect_s += time.perf_counter() - t
        all_dets.extend(dets)
        for name, view in cfg.views.items():
            regions = build_region_set(batch, dets, view, batch_keys)
            writers[name].add(regions)
            valid_sum[name] += int(regions.valid.sum())
            wanted = [k for k in batch_keys if k in eval_keys]
            if wanted:
                eval_sets[name].append(regions.take(wanted))
    view_specs = {name: w.close() for name, w in writers.items()}
    detections_table(keys, all_dets).to_parquet(out_dir / DETECTIONS_FILE, index=False)
    seconds = time.perf_counter() - start
    n = len(keys)
    metrics: dict[str, Any] = {
        "images": n, "seconds": round(seconds, 3), "images_per_s": round(n / seconds, 2) if seconds else None,
        "detect_seconds": round(detect_s, 3), "detections": int(sum(len(d) for d in all_dets)),
        "eval_split": cfg.eval_split, "eval_images": len(truth), "views": {},
    }  # fmt: skip
    if len(truth) and needs_detector:
        pos = {k: i for i, k in enumerate(keys)}
        dets_eval = [all_dets[pos[k]] for k in truth["image_sha256"]]
        gt = truth[["x0", "y0", "x1", "y1"]].to_numpy(np.float32)
        recall = key_recall_at_k(dets_eval, gt, None, cfg.recall_k)  # every stored detection (score >= conf)
        metrics["stored_detections_key_recall"] = {f"at_{k}": v for k, v in recall.items()}
    for name, view in cfg.views.items():
        entry: dict[str, Any] = {"mean_valid_regions": round(valid_sum[name] / n, 4) if n else None,
                                 "shards": view_specs[name]["shards"]}  # fmt: skip
        if eval_sets[name]:
            regions = RegionSet.concat(eval_sets[name]).take(truth["image_sha256"].tolist())
            key_boxes = truth[["x0", "y0", "x1", "y1"]].to_numpy()
            entry["key_recall"] = round(region_key_recall(regions, key_boxes), 4)
            entry["key_coverage"] = round(region_key_coverage(regions, key_boxes), 4)
        metrics["views"][name] = entry
    return metrics


def summarise(metrics: Mapping[str, Any]) -> str:
    """One line for the stage's stdout."""
    views = ", ".join(f"{k}: {v.get('mean_valid_regions')} regions, key recall {v.get('key_recall')}"
                      for k, v in metrics.get("views", {}).items())  # fmt: skip
    speed = f"{metrics['seconds']:.1f} s ({metrics['images_per_s']} img/s)"
    return f"regions: {metrics['images']} images in {speed}; {views}"
