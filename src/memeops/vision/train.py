"""Stage ``train_detector``'s library: build (train or package) the detector folder, score it once.

:class:`DetectorStageConfig` is ``params.yaml`` -> ``detector``: the runtime
:class:`~memeops.vision.detect.DetectorConfig` fields plus what building needs (``train``,
``data``, the YOLO ``model`` and ``yolo`` training arguments, ``eval``).

* ``backend: ultralytics, train: true`` (default): a random-init YOLO from a rescaled model yaml is
  trained on the YOLO-format data (SynthMeme: ``train`` to fit, ``val`` for ultralytics' model
  selection); ``best.pt`` goes into the detector folder.
* ``train: false`` with ``weights``: those weights are packaged as they are (real data, a
  pretrained detector), and so is any ``torchvision`` state dict; ``grid`` needs no weights.

Then :func:`evaluate_detector` scores the folder's detector ONCE on the data's ``eval.split``
(``test``): mAP50 and mAP50-95 over all classes and over the key classes (ids ``< key_classes``),
when the detector's classes are the data's classes; key-object recall@k class-aware (same class) and
class-agnostic, over the top-k detections with score >= ``eval.min_score``.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from memeops.vision.detect import Detector, DetectorConfig, detection_ap, detection_map, key_recall_at_k
from memeops.vision.detector_dir import (
    load_detector,
    load_detector_dir,
    read_detector_config,
    save_detector_dir,
)
from memeops.vision.yolo import YoloModelSpec, YoloTrainConfig, read_class_names, read_split_records

SPLIT_FILES = ("classes.json", "train.jsonl", "val.jsonl", "test.jsonl")


class DetectorEvalConfig(BaseModel):
    """How the stage scores the detector on held-out data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    split: str = "test"
    recall_k: list[int] = Field(default_factory=lambda: [1, 2, 4, 8])
    min_score: float = Field(
        0.25, ge=0, le=1, description="recall@k counts detections with at least this score"
    )
    recall_iou: float = Field(0.5, gt=0, le=1)
    key_classes: int = Field(16, ge=0, description="class ids below this are key-object classes")
    conf: float = Field(0.001, ge=0, le=1, description="score threshold of the mAP pass")
    max_det: int = Field(100, ge=1, description="detections per image in the mAP pass")


class DetectorStageConfig(DetectorConfig):
    """``params.yaml`` -> ``detector``: a :class:`DetectorConfig` plus how to build and score it."""

    imgsz: int = Field(160, ge=32, description="train and inference size (SynthMeme: 256-px images)")
    train: bool = Field(True, description="ultralytics: train on `data`; false packages `weights` as is")
    data: str | None = Field(
        None, description="YOLO-format folder (default: the synthmeme source in data.sources)"
    )
    output_dir: str = "models/detector"
    model: YoloModelSpec = YoloModelSpec()
    yolo: YoloTrainConfig = YoloTrainConfig()
    eval: DetectorEvalConfig = DetectorEvalConfig()

    def runtime(self, **update: Any) -> DetectorConfig:
        """The :class:`DetectorConfig` part (what ``detector_config.json`` stores), with ``update``."""
        fields = self.model_dump(include=set(DetectorConfig.model_fields))
        return DetectorConfig.model_validate({**fields, **update})


@dataclass
class DetectorBuild:
    """What :func:`build_detector` did."""

    config: dict[str, Any]
    trained: bool
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def data_digest(data_dir: str | Path | None) -> str:
    """md5 over the split files and ``classes.json`` (what the detector trains and is scored on)."""
    h = hashlib.md5()
    for name in SPLIT_FILES:
        path = Path(data_dir or "") / name
        if data_dir and path.is_file():
            h.update(name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def build_detector(
    cfg: DetectorStageConfig, data_dir: str | Path | None, work_dir: str | Path | None = None
) -> DetectorBuild:
    """Write ``cfg.output_dir`` (weights + ``detector_config.json``): train YOLO, or package as is."""
    start = time.perf_counter()
    out = Path(cfg.output_dir)
    _clear_output(out, keep=cfg.weights)
    if cfg.backend == "ultralytics" and cfg.train:
        if data_dir is None:
            raise FileNotFoundError("detector.train is true but no detector data: set detector.data or a "
                                    "synthmeme source in data.sources")  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="memeops-detector-", dir=work_dir) as tmp:
            history, info, section = _train_ultralytics(cfg, Path(data_dir), Path(tmp), out)
        return DetectorBuild(section, True, time.perf_counter() - start, history, info)
    if cfg.backend != "grid" and not cfg.weights:
        raise FileNotFoundError(
            f"detector backend {cfg.backend} with train: false needs detector.weights (a local file)"
        )
    runtime = cfg.runtime()
    if cfg.backend == "ultralytics" and not cfg.class_names:
        from memeops.vision.yolo import UltralyticsDetector

        names = UltralyticsDetector(runtime).names
        runtime = cfg.runtime(class_names=tuple(names[i] for i in sorted(names)))
    section = save_detector_dir(runtime, out)
    return DetectorBuild(section, False, time.perf_counter() - start)


def _clear_output(out: Path, keep: str | None) -> None:
    """Remove a previous build's files (not the weights about to be packaged, if they live there)."""
    if not out.is_dir():
        return
    keep_path = Path(keep).resolve() if keep else None
    for path in out.iterdir():
        if path.is_file() and path.resolve() != keep_path:
            path.unlink()


def _train_ultralytics(
    cfg: DetectorStageConfig, data_dir: Path, tmp: Path, out: Path
) -> tuple[list[dict[str, float]], dict[str, Any], dict[str, Any]]:
    from memeops.vision.yolo import prepare_yolo_dataset, train_yolo, write_model_yaml

    names = read_class_names(data_dir)
    limits = {"train": cfg.yolo.train_images, "val": cfg.yolo.val_images}
    data_yaml = prepare_yolo_dataset(data_dir, tmp / "data", limits=limits, seed=cfg.yolo.seed)
    model_yaml = write_model_yaml(cfg.model, len(names), tmp / "detector_model.yaml")
    result = train_yolo(
        model_yaml, data_yaml, cfg.yolo, imgsz=cfg.imgsz, project=tmp / "runs", device=cfg.device
    )
    runtime = cfg.runtime(weights=None, class_names=tuple(names), num_classes=None)
    section = save_detector_dir(runtime, out, weights=result.best)
    (out / "model.yaml").write_text(model_yaml.read_text(encoding="utf-8"), encoding="utf-8")
    best = max(
        result.history, key=lambda r: 0.1 * r.get("val_map50", 0) + 0.9 * r.get("val_map50_95", 0), default={}
    )
    info = {"train_seconds": round(result.seconds, 2), "train_images": result.train_images,
            "val_images": result.val_images, "epochs": len(result.history),
            "best_epoch": int(best.get("epoch", 0)), "val_map50": best.get("val_map50"),
            "val_map50_95": best.get("val_map50_95"),
            "parameters": result.extra.get("parameters")}  # fmt: skip
    return result.history, info, section


# --- evaluation ----------------------------------------------------------------------------------------


def load_split_truth(
    data_dir: str | Path, split: str
) -> tuple[list[Path], list[tuple[np.ndarray, np.ndarray]]]:
    """Image paths and ground truth (normalised xyxy boxes, class ids; key object first) of a split."""
    data_dir = Path(data_dir)
    paths, truth = [], []
    for rec in read_split_records(data_dir, split):
        path = data_dir / rec["image"]
        with Image.open(path) as im:
            w, h = im.size
        objects = sorted(rec.get("objects") or [], key=lambda o: not o.get("key"))  # key object first
        boxes = np.array([o["box"] for o in objects], np.float32).reshape(-1, 4) / np.array(
            [w, h, w, h], np.float32
        )
        classes = np.array([int(o["class_id"]) for o in objects], np.int64)
        paths.append(path)
        truth.append((boxes, classes))
    return paths, truth


def evaluate_detector(
    detector: Detector, data_dir: str | Path, cfg: DetectorEvalConfig, class_names: list[str] | None
) -> dict[str, Any]:
    """Score ``detector`` once on ``cfg.split``; class metrics only when ``class_names`` (the data's
    classes) match the detector's."""
    start = time.perf_counter()
    paths, truth = load_split_truth(data_dir, cfg.split)
    keep = [i for i, (boxes, _) in enumerate(truth) if len(boxes)]
    images = []
    for p in paths:
        with Image.open(p) as im:
            images.append(im.convert("RGB"))
    t = time.perf_counter()
    dets = detector.detect(images)
    predict_s = time.perf_counter() - t
    key_boxes = np.stack([truth[i][0][0] for i in keep]) if keep else np.zeros((0, 4), np.float32)
    key_classes = np.array([truth[i][1][0] for i in keep], np.int64)
    kept = [dets[i] for i in keep]
    out: dict[str, Any] = {"split": cfg.split, "images": len(paths), "images_with_key": len(keep),
                           "predict_seconds": round(predict_s, 3),
                           "images_per_s": round(len(paths) / max(predict_s, 1e-9), 2)}  # fmt: skip
    agnostic = key_recall_at_k(kept, key_boxes, None, cfg.recall_k, cfg.min_score, cfg.recall_iou)
    out["key_recall_any_class"] = {f"at_{k}": v for k, v in agnostic.items()}
    detector_names = list(detector.config.class_names)
    if class_names and detector_names == list(class_names):
        aware = key_recall_at_k(kept, key_boxes, key_classes, cfg.recall_k, cfg.min_score, cfg.recall_iou)
        out["key_recall"] = {f"at_{k}": v for k, v in aware.items()}
        ap, n_gt = detection_ap(dets, truth, len(class_names))
        all_ = detection_map(ap, n_gt)
        key = detection_map(ap, n_gt, range(min(cfg.key_classes, len(class_names))))
        out.update(map50=all_["map50"], map50_95=all_["map50_95"], key_map50=key["map50"],
                   key_map50_95=key["map50_95"], classes_scored=all_["classes"])  # fmt: skip
        out["ap50_per_class"] = {
            name: round(float(ap[c, 0]), 4) for c, name in enumerate(class_names) if n_gt[c]
        }
    out["seconds"] = round(time.perf_counter() - start, 3)
    return out


def evaluation_detector(folder: str | Path, cfg: DetectorEvalConfig) -> Detector:
    """The folder's detector with the evaluation pass's low threshold and larger ``max_det``."""
    config = read_detector_config(folder).model_copy(update={"conf": cfg.conf, "max_det": cfg.max_det})
    return load_detector(config, base_dir=folder)


__all__ = ["DetectorBuild", "DetectorEvalConfig", "DetectorStageConfig", "build_detector", "data_digest",
           "evaluate_detector", "evaluation_detector", "load_detector_dir", "load_split_truth"]  # fmt: skip
