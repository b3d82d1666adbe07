"""Object detectors behind one interface, and detection metrics.

A :class:`Detector` maps PIL images to :class:`Detections` (normalised ``xyxy`` boxes in [0, 1],
scores, class ids; sorted by score, highest first). Three backends:

* ``ultralytics``: a YOLO ``.pt`` (the default one is trained by stage ``train_detector`` on
  SynthMeme; see :mod:`memeops.vision.yolo`);
* ``torchvision``: ``fasterrcnn_resnet50_fpn`` built with ``weights=None`` (never downloads) and
  loaded from a local state-dict file, as the released MGMCF code uses a Faster R-CNN;
  ``num_classes`` includes the background (91 for torchvision's COCO weights) and ``classes`` are
  torchvision's label ids (1.., 0 is the background and never returned);
* ``grid``: no model, ``grid`` x ``grid`` fixed cells (row-major), score 1.0, class -1: the
  "no detector" ablation.

Building a detector from its config and the detector folders (``models/detector/``) are
:mod:`memeops.vision.detector_dir`'s.

Metrics (numpy only): :func:`box_iou`, :func:`key_recall_at_k`, :func:`detection_ap` /
:func:`detection_map` (COCO-style 101-point AP, the matching ultralytics' ``val`` uses).

Heavy imports (torch, torchvision, ultralytics) happen inside the backends, so this module imports
anywhere numpy and Pillow do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

COCO_IOU_THRESHOLDS = np.round(np.linspace(0.5, 0.95, 10), 2)

Backend = Literal["ultralytics", "torchvision", "grid"]


class DetectorConfig(BaseModel):
    """How to build and run a detector; what ``detector_config.json`` holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Backend = "ultralytics"
    weights: str | None = Field(
        None, description="local weights file (.pt for ultralytics, a state dict for torchvision)"
    )
    imgsz: int = Field(
        256, ge=32, description="inference size (ultralytics: letterbox side; torchvision: min_size)"
    )
    conf: float = Field(0.05, ge=0.0, le=1.0, description="lowest score kept (stored detections)")
    iou: float = Field(0.6, gt=0.0, le=1.0, description="NMS IoU threshold")
    max_det: int = Field(20, ge=1, description="most detections kept per image")
    grid: int = Field(2, ge=1, le=16, description="grid backend: grid x grid cells")
    num_classes: int | None = Field(
        None, ge=2, description="torchvision: classes incl. background (default 91)"
    )
    proposals: int = Field(
        1000, ge=1, description="torchvision: RPN proposals kept per image (torchvision: 1000)"
    )
    class_names: tuple[str, ...] = Field((), description="optional, index = class id")
    batch_size: int = Field(32, ge=1, description="images per forward pass")
    device: str = Field("cpu", description="cpu, cuda, cuda:N, or auto (cuda when available)")
    threads: int = Field(1, ge=0, description="torch CPU threads while detecting (0: leave torch's setting)")


@dataclass
class Detections:
    """One image's detections: ``boxes`` float32 [M, 4] normalised xyxy, ``scores`` float32 [M],
    ``classes`` int64 [M] (-1: no class, grid); sorted by score, highest first."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.classes = np.asarray(self.classes, dtype=np.int64).reshape(-1)
        if not (len(self.boxes) == len(self.scores) == len(self.classes)):
            raise ValueError(f"Detections: {len(self.boxes)} boxes, {len(self.scores)} scores, "
                             f"{len(self.classes)} classes")  # fmt: skip

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    @classmethod
    def from_pixels(
        cls, boxes: Any, scores: Any, classes: Any, width: float, height: float, max_det: int | None = None
    ) -> Detections:
        """Pixel xyxy boxes of a ``width`` x ``height`` image -> normalised, clipped, sorted (top
        ``max_det``)."""
        b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) / np.array(
            [width, height, width, height], np.float32
        )
        return cls.from_normalised(b, scores, classes, max_det)

    @classmethod
    def from_normalised(cls, boxes: Any, scores: Any, classes: Any, max_det: int | None = None) -> Detections:
        """Normalised boxes (clipped to [0, 1]) sorted by score, highest first (stable)."""
        b = np.clip(np.asarray(boxes, dtype=np.float32).reshape(-1, 4), 0.0, 1.0)
        s = np.asarray(scores, dtype=np.float32).reshape(-1)
        c = np.asarray(classes, dtype=np.int64).reshape(-1)
        order = np.argsort(-s, kind="stable")[:max_det]
        return cls(b[order], s[order], c[order])


@runtime_checkable
class Detector(Protocol):
    """Anything with a :class:`DetectorConfig` and ``detect(images) -> list[Detections]``."""

    config: DetectorConfig

    def detect(self, images: Sequence[Image.Image]) -> list[Detections]: ...


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; anything else unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# --- grid -------------------------------------------------------------------------------------------


def grid_boxes(grid: int) -> np.ndarray:
    """``grid * grid`` cells as normalised xyxy boxes, row-major (top-left first): float32 [g*g, 4]."""
    edges = np.linspace(0.0, 1.0, grid + 1, dtype=np.float32)
    cells = [[edges[c], edges[r], edges[c + 1], edges[r + 1]] for r in range(grid) for c in range(grid)]
    return np.array(cells, dtype=np.float32)


class GridDetector:
    """Fixed cells for every image: score 1.0, class -1."""

    def __init__(self, config: DetectorConfig):
        self.config = config
        self._boxes = grid_boxes(config.grid)

    def detect(self, images: Sequence[Image.Image]) -> list[Detections]:
        n = len(self._boxes)
        return [
            Detections(self._boxes.copy(), np.ones(n, np.float32), np.full(n, -1, np.int64)) for _ in images
        ]


# --- torchvision Faster R-CNN -----------------------------------------------------------------------


def build_fasterrcnn(config: DetectorConfig) -> Any:
    """An uninitialised (random) ``fasterrcnn_resnet50_fpn`` shaped by ``config``; downloads nothing."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    return fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=config.num_classes or 91,
        min_size=config.imgsz, max_size=max(config.imgsz, round(config.imgsz * 1333 / 800)),
        box_score_thresh=config.conf, box_nms_thresh=config.iou, box_detections_per_img=config.max_det,
        rpn_pre_nms_top_n_test=max(config.proposals, 1000), rpn_post_nms_top_n_test=config.proposals,
    )  # fmt: skip


def load_state_dict_file(path: str | Path) -> dict[str, Any]:
    """A state dict from ``.safetensors`` or a torch file (``weights_only``); unwraps ``{"model": sd}``
    and ``{"state_dict": sd}``."""
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


class TorchvisionDetector:
    """Faster R-CNN ResNet-50 FPN from a local state-dict file."""

    def __init__(self, config: DetectorConfig):
        import torch

        if not config.weights:
            raise ValueError(
                "torchvision detector: set weights to a local fasterrcnn_resnet50_fpn state-dict file"
            )
        self.config = config
        self.device = torch.device(resolve_device(config.device))
        model = build_fasterrcnn(config)
        model.load_state_dict(load_state_dict_file(config.weights))
        self.model = model.eval().to(self.device)

    def detect(self, images: Sequence[Image.Image]) -> list[Detections]:
        import torch
        from torchvision.transforms.functional import pil_to_tensor

        from memeops.threads import torch_threads

        out: list[Detections] = []
        bs = self.config.batch_size
        with torch.inference_mode(), torch_threads(self.config.threads):
            for start in range(0, len(images), bs):
                chunk = [im.convert("RGB") for im in images[start : start + bs]]
                tensors = [pil_to_tensor(im).to(self.device, torch.float32).div_(255.0) for im in chunk]
                for im, pred in zip(chunk, self.model(tensors)):
                    boxes, scores = pred["boxes"].cpu().numpy(), pred["scores"].cpu().numpy()
                    labels = pred["labels"].cpu().numpy()
                    w, h = im.size
                    out.append(Detections.from_pixels(boxes, scores, labels, w, h, self.config.max_det))
        return out


# --- metrics -----------------------------------------------------------------------------------------


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` [N, 4] with every box in ``b`` [M, 4] (xyxy): float [N, M]."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def key_recall_at_k(
    dets: Sequence[Detections], gt_boxes: np.ndarray, gt_classes: np.ndarray | None, ks: Sequence[int],
    min_score: float = 0.0, iou: float = 0.5,
) -> dict[int, float]:  # fmt: skip
    """Fraction of images whose key-object box ``gt_boxes[i]`` (normalised xyxy) is matched (IoU >=
    ``iou``) by one of the top-``k`` detections with score >= ``min_score``; with ``gt_classes`` the
    matching detection must also have that class (class-aware), else any class counts."""
    gt_boxes = np.asarray(gt_boxes, dtype=np.float32).reshape(-1, 4)
    if len(dets) != len(gt_boxes):
        raise ValueError(f"{len(dets)} detection lists for {len(gt_boxes)} key boxes")
    if not len(dets):
        return {int(k): float("nan") for k in ks}
    first_hit = np.full(len(dets), np.inf)  # rank (0-based, among kept detections) of the first match
    for i, d in enumerate(dets):
        keep = d.scores >= min_score
        boxes, classes = d.boxes[keep], d.classes[keep]
        ok = box_iou(gt_boxes[i : i + 1], boxes)[0] >= iou
        if gt_classes is not None:
            ok &= classes == int(gt_classes[i])
        hits = np.flatnonzero(ok)
        if len(hits):
            first_hit[i] = hits[0]
    return {int(k): float(np.mean(first_hit < k)) for k in ks}


def _match(
    gt_boxes: np.ndarray, gt_classes: np.ndarray, det: Detections, thresholds: np.ndarray
) -> np.ndarray:
    """True positives [M, T]: one-to-one same-class matches, highest IoU first (ultralytics' rule)."""
    tp = np.zeros((len(det), len(thresholds)), dtype=bool)
    if not len(det) or not len(gt_boxes):
        return tp
    iou = box_iou(gt_boxes, det.boxes) * (gt_classes[:, None] == det.classes[None, :])
    for t, thr in enumerate(thresholds):
        gi, di = np.nonzero(iou >= thr)
        if not len(gi):
            continue
        order = np.argsort(-iou[gi, di], kind="stable")
        gi, di = gi[order], di[order]
        _, first = np.unique(di, return_index=True)
        gi, di = gi[first], di[first]
        _, first = np.unique(gi, return_index=True)
        tp[di[first], t] = True
    return tp


def _ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """COCO 101-point interpolated AP of one precision-recall curve."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    x = np.linspace(0, 1, 101)
    return float(np.trapezoid(np.interp(x, mrec, mpre), x))


def detection_ap(
    dets: Sequence[Detections], gts: Sequence[tuple[np.ndarray, np.ndarray]], num_classes: int,
    thresholds: np.ndarray = COCO_IOU_THRESHOLDS,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Per-class AP ``[num_classes, T]`` at each IoU threshold, and ground-truth counts ``[num_classes]``.

    ``gts[i]`` = (normalised xyxy boxes [G, 4], class ids [G]) of image ``i``. Classes without
    ground truth get AP 0 and count 0 (leave them out of means: :func:`detection_map` does).
    """
    tps, confs, pcls, tcls = [], [], [], []
    for det, (gb, gc) in zip(dets, gts, strict=True):
        gb = np.asarray(gb, np.float32).reshape(-1, 4)
        gc = np.asarray(gc, np.int64).reshape(-1)
        tps.append(_match(gb, gc, det, thresholds))
        confs.append(det.scores)
        pcls.append(det.classes)
        tcls.append(gc)
    tp = np.concatenate(tps) if tps else np.zeros((0, len(thresholds)), bool)
    conf = np.concatenate(confs) if confs else np.zeros(0, np.float32)
    pred_cls = np.concatenate(pcls) if pcls else np.zeros(0, np.int64)
    n_gt = np.bincount(np.concatenate(tcls) if tcls else np.zeros(0, np.int64), minlength=num_classes)[
        :num_classes
    ]
    order = np.argsort(-conf, kind="stable")
    tp, pred_cls = tp[order], pred_cls[order]
    ap = np.zeros((num_classes, len(thresholds)))
    for c in np.flatnonzero(n_gt):
        mask = pred_cls == c
        if not mask.any():
            continue
        tpc = np.cumsum(tp[mask], axis=0)
        fpc = np.cumsum(~tp[mask], axis=0)
        recall = tpc / (n_gt[c] + 1e-16)
        precision = tpc / (tpc + fpc)
        ap[c] = [_ap(recall[:, t], precision[:, t]) for t in range(len(thresholds))]
    return ap, n_gt


def detection_map(ap: np.ndarray, n_gt: np.ndarray, classes: Sequence[int] | None = None) -> dict[str, float]:
    """``{"map50", "map50_95", "classes"}`` over ``classes`` (default all) that have ground truth."""
    idx = np.arange(len(n_gt)) if classes is None else np.asarray(list(classes), dtype=np.int64)
    idx = idx[n_gt[idx] > 0]
    if not len(idx):
        return {"map50": float("nan"), "map50_95": float("nan"), "classes": 0}
    return {"map50": float(ap[idx, 0].mean()), "map50_95": float(ap[idx].mean()), "classes": len(idx)}


def detections_summary(dets: Sequence[Detections]) -> Mapping[str, float]:
    """Mean detections per image and mean top score (a quick sanity line for logs)."""
    if not dets:
        return {"mean_detections": 0.0, "mean_top_score": float("nan")}
    tops = [float(d.scores[0]) for d in dets if len(d)]
    return {"mean_detections": float(np.mean([len(d) for d in dets])),
            "mean_top_score": float(np.mean(tops)) if tops else float("nan")}  # fmt: skip
