"""The ultralytics side: offline set-up, a scaled model yaml, YOLO-format data, training, inference.

Everything here keeps ultralytics inside the project's rules (docs/regions.md, "Offline"):

* :func:`configure_ultralytics` turns off its MLflow / DVC / hub integrations and puts a TTF
  where its plotting looks for ``Arial.ttf`` (``$YOLO_CONFIG_DIR/Ultralytics``), so nothing is
  fetched; call it before training or predicting (the functions here do);
* training writes only under the ``project`` folder it is given (never ``./runs``);
* models are built from a yaml with explicit depth / width multipliers (random init, no hub);
* :func:`prepare_yolo_dataset` lays out symlinks in a work folder, so ultralytics' label caches
  land there and not inside a DVC-tracked data folder.

ultralytics is imported inside functions: the rest of :mod:`memeops.vision` works without it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import shutil
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from memeops.vision.detect import Detections, DetectorConfig, resolve_device

#: Ultralytics integrations switched off: we log to our own MLflow run, and nothing syncs.
DISABLED_SETTINGS = {"mlflow": False, "sync": False, "dvc": False, "clearml": False, "comet": False,
                     "raytune": False, "tensorboard": False, "wandb": False}  # fmt: skip


class YoloModelSpec(BaseModel):
    """A YOLO architecture: a model yaml shipped with ultralytics, rescaled."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: str = Field(
        "yolov8.yaml", description="ultralytics model yaml (yolov8.yaml, yolo11.yaml, ...) or a path"
    )
    depth: float = Field(0.33, gt=0, le=2, description="depth multiple (repeats)")
    width: float = Field(0.125, gt=0, le=2, description="width multiple (channels; yolov8n: 0.25)")
    max_channels: int = Field(1024, ge=16)


class YoloTrainConfig(BaseModel):
    """ultralytics ``train`` arguments the stage exposes, under their ultralytics names (the rest
    stay at ultralytics' defaults), plus ``train_images`` / ``val_images``, ``threads`` and ``nbs``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(3, ge=1)
    batch: int = Field(8, ge=1)
    nbs: int | None = Field(
        None, ge=1, description="nominal batch (gradient accumulation = nbs / batch); None: batch"
    )
    train_images: int | None = Field(
        None, ge=1, description="seeded random subset of train images (None: all)"
    )
    val_images: int | None = Field(None, ge=1, description="seeded random subset of val images (None: all)")
    workers: int = Field(1, ge=0, description="data-loading processes")
    threads: int = Field(1, ge=1, description="torch CPU threads while training: a fixed count, since the "
                         "split of float sums per thread changes the weights (ultralytics would take the cores)")
    cache: bool | str = Field("ram", description="ultralytics image cache: ram, disk or false")
    optimizer: str = "AdamW"
    lr0: float = Field(0.004, gt=0)
    lrf: float = Field(0.1, gt=0)
    cos_lr: bool = False
    warmup_epochs: float = Field(0.5, ge=0)
    weight_decay: float = Field(0.0005, ge=0)
    cls: float = Field(1.5, gt=0, description="classification loss gain (ultralytics default 0.5)")
    mosaic: float = Field(0.0, ge=0, le=1, description="mosaic probability (ultralytics default 1.0)")
    close_mosaic: int = Field(0, ge=0, description="last N epochs without mosaic")
    scale: float = Field(0.3, ge=0, lt=1)
    translate: float = Field(0.1, ge=0, lt=1)
    fliplr: float = Field(0.0, ge=0, le=1, description="0: SynthMeme key objects are never mirrored")
    hsv_h: float = Field(0.0, ge=0, le=1)
    hsv_s: float = Field(0.5, ge=0, le=1)
    hsv_v: float = Field(0.3, ge=0, le=1)
    patience: int = Field(100, ge=1)
    amp: bool = False
    seed: int = 0
    deterministic: bool = Field(True, description="ultralytics asks torch for deterministic algorithms (warn only)")


@dataclass
class YoloTrainResult:
    """What :func:`train_yolo` produced (paths inside its ``project`` folder)."""

    best: Path
    last: Path
    history: list[dict[str, float]]
    seconds: float
    train_images: int
    val_images: int
    extra: dict[str, Any] = field(default_factory=dict)


# --- offline set-up ----------------------------------------------------------------------------------


def _font_source() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"


def configure_ultralytics() -> Path:
    """Switch off ultralytics' integrations and provide its fonts locally; return its config dir.

    Idempotent and cheap; ``YOLO_CONFIG_DIR`` (set by :mod:`memeops.runtime`) decides where its
    settings file and fonts live.
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR

    if any(SETTINGS.get(k) != v for k, v in DISABLED_SETTINGS.items()):
        SETTINGS.update(DISABLED_SETTINGS)
    folder = Path(USER_CONFIG_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        target = folder / name
        if not target.exists():
            shutil.copyfile(_font_source(), target)
    return folder


# --- model yaml and data -----------------------------------------------------------------------------


def write_model_yaml(spec: YoloModelSpec, num_classes: int, path: str | Path) -> Path:
    """``spec.base`` with ``nc = num_classes`` and the given depth / width (no ``scales`` table)."""
    configure_ultralytics()
    from ultralytics.nn.tasks import yaml_model_load

    d = dict(yaml_model_load(spec.base))
    for key in ("scales", "scale", "yaml_file"):
        d.pop(key, None)
    d.update(nc=int(num_classes), depth_multiple=spec.depth, width_multiple=spec.width,
             max_channels=spec.max_channels)  # fmt: skip
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(d, sort_keys=False), encoding="utf-8")
    return path


def read_class_names(data_dir: str | Path) -> list[str]:
    """``classes.json`` of a YOLO-format folder (index = class id)."""
    path = Path(data_dir) / "classes.json"
    if not path.is_file():
        raise FileNotFoundError(f"no classes.json in {data_dir}: the detector data needs YOLO-format labels")
    return [str(c) for c in json.loads(path.read_text(encoding="utf-8"))]


def read_split_records(data_dir: str | Path, split: str) -> list[dict[str, Any]]:
    """The records of ``<split>.jsonl`` (SynthMeme layout: ``id``, ``image``, ``objects``)."""
    path = Path(data_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no {split}.jsonl in {data_dir}")
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _subset(items: list[Any], n: int | None, seed: int) -> list[Any]:
    if n is None or n >= len(items):
        return items
    return sorted(random.Random(seed).sample(items, n), key=lambda r: r["id"])


def prepare_yolo_dataset(
    data_dir: str | Path, work_dir: str | Path, *, splits: Sequence[str] = ("train", "val"),
    limits: dict[str, int | None] | None = None, seed: int = 0,
) -> Path:  # fmt: skip
    """Symlink each split's images and label files under ``work_dir/<split>/{images,labels}``; write
    ``work_dir/data.yaml``. ``data_dir`` holds ``classes.json``, ``<split>.jsonl`` (``id``, ``image``),
    ``images/`` and ``labels/<id>.txt`` (YOLO: ``class cx cy w h`` normalised). ``limits`` caps a
    split to a seeded random subset."""
    data_dir, work_dir = Path(data_dir).resolve(), Path(work_dir).resolve()
    names = read_class_names(data_dir)
    entries: dict[str, Any] = {"path": str(work_dir), "names": dict(enumerate(names))}
    for split in splits:
        if not (data_dir / f"{split}.jsonl").is_file():
            continue
        records = _subset(read_split_records(data_dir, split), (limits or {}).get(split), seed)
        images, labels = work_dir / split / "images", work_dir / split / "labels"
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for rec in records:
            src_img = data_dir / rec["image"]
            src_lbl = data_dir / "labels" / f"{Path(rec['image']).stem}.txt"
            (images / src_img.name).symlink_to(src_img)
            if src_lbl.is_file():
                (labels / src_lbl.name).symlink_to(src_lbl)
        entries[split] = f"{split}/images"
    for split in ("train", "val"):
        if split not in entries:
            raise FileNotFoundError(
                f"{data_dir} has no {split}.jsonl: the detector needs train and val splits"
            )
    out = work_dir / "data.yaml"
    out.write_text(yaml.safe_dump(entries, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return out


# --- training ----------------------------------------------------------------------------------------


def _history(csv_path: Path) -> list[dict[str, float]]:
    """ultralytics' ``results.csv`` -> rows with plain names (``val_map50``, ``train_box_loss``, ...)."""
    if not csv_path.is_file():
        return []
    rename = {"metrics/precision(B)": "val_precision", "metrics/recall(B)": "val_recall",
              "metrics/mAP50(B)": "val_map50", "metrics/mAP50-95(B)": "val_map50_95"}  # fmt: skip
    rows = []
    with csv_path.open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            out: dict[str, float] = {}
            for key, value in row.items():
                key = key.strip()
                name = rename.get(key, key.replace("/", "_").replace("-", "_").lower())
                try:
                    out[name] = float(value)
                except (TypeError, ValueError):
                    continue
            rows.append(out)
    return rows


#: Keys of ultralytics' checkpoint that describe the run, not the model: the save date
#: (``strip_optimizer`` stamps it), the per-epoch results (with their wall-clock ``time`` column) and
#: the git state of the working directory (root, branch, commit and its message: two clones at
#: different commits wrote different bytes for the same weights; the MLflow run keeps the commit).
RUN_ONLY_KEYS = ("date", "train_results", "git")
#: ``train_args`` that hold absolute paths of the temporary training folder.
PATH_ARGS = ("model", "data", "project", "save_dir")


def _file_names(args: dict[str, Any]) -> dict[str, Any]:
    """``args`` with the :data:`PATH_ARGS` reduced to their file names."""
    return {k: Path(v).name if k in PATH_ARGS and isinstance(v, str) and v else v for k, v in args.items()}


def canonical_checkpoint(path: Path) -> None:
    """Re-save ultralytics' stripped checkpoint ``path`` so that its bytes depend only on the model:
    without :data:`RUN_ONLY_KEYS`; the :data:`PATH_ARGS` (of ``train_args`` and of the model's own
    ``args``) and the model's ``yaml_file`` reduced to their file names (they named a temporary
    folder); the zip archive written again with a constant ``serialization_id`` (torch draws a random
    one per save) and fixed entry dates. ultralytics loads it as before (it uses the model, its
    ``train_args`` and, for later training only, ``data``)."""
    import torch  # heavy: only after training

    # weights_only=False: the checkpoint pickles ultralytics' model object, which the weights-only
    # loader refuses. Only called on the file this process's trainer has just written into its own
    # temporary folder (ultralytics reads it back the same way), never on a user-supplied file.
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    for key in RUN_ONLY_KEYS:
        ckpt.pop(key, None)
    ckpt["train_args"] = _file_names(dict(ckpt.get("train_args") or {}))
    model = ckpt.get("model")
    if isinstance(getattr(model, "args", None), dict):
        model.args = _file_names(model.args)
    spec = getattr(model, "yaml", None)
    if isinstance(spec, dict) and isinstance(spec.get("yaml_file"), str):
        spec["yaml_file"] = Path(spec["yaml_file"]).name
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    path.write_bytes(constant_serialization_id(buffer.getvalue()))


def constant_serialization_id(archive: bytes) -> bytes:
    """A ``torch.save`` zip archive with its ``.data/serialization_id`` record set to zeros and every
    entry dated 1980-01-01 (stored, uncompressed, as torch writes them; ``torch.load`` reads it)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/.data/serialization_id"):
                data = b"0" * len(data)
            dst.writestr(zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return out.getvalue()


def _trainer_class(workers: int) -> type:
    """ultralytics' DetectionTrainer with ``workers`` data-loading processes also on CPU (ultralytics
    forces 0 there, leaving a core idle while one torch thread computes) and without the final
    re-validation of ``best.pt`` (its val metrics are already in ``results.csv``; the stage scores
    the model on test itself)."""
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.utils.torch_utils import strip_optimizer

    class _Trainer(DetectionTrainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.args.workers = workers

        def final_eval(self) -> None:
            if self.last.exists():
                strip_optimizer(self.last)
                canonical_checkpoint(self.last)
            if self.best.exists():
                strip_optimizer(self.best)
                canonical_checkpoint(self.best)

    return _Trainer


def train_yolo(
    model_yaml: str | Path, data_yaml: str | Path, cfg: YoloTrainConfig, *, imgsz: int, project: str | Path,
    device: str = "cpu", name: str = "train",
) -> YoloTrainResult:  # fmt: skip
    """Train a random-init YOLO from ``model_yaml`` on ``data_yaml``; ultralytics' val split selects
    ``best.pt``. Everything ultralytics writes goes to ``project/name``."""
    configure_ultralytics()
    import ultralytics.utils.torch_utils as tu
    from ultralytics import YOLO

    project = Path(project).resolve()
    threads_before = tu.NUM_THREADS
    tu.NUM_THREADS = cfg.threads  # select_device() sets torch's CPU threads from this
    start = time.perf_counter()
    try:
        model = YOLO(str(model_yaml), task="detect")
        args = cfg.model_dump(exclude={"train_images", "val_images", "threads", "nbs"})
        model.train(
            data=str(data_yaml), imgsz=imgsz, device=resolve_device(device), nbs=cfg.nbs or cfg.batch,
            project=str(project), name=name, exist_ok=True, pretrained=False, plots=False, val=True,
            verbose=False, trainer=_trainer_class(cfg.workers), **args,
        )  # fmt: skip
    finally:
        tu.NUM_THREADS = threads_before
    seconds = time.perf_counter() - start
    run_dir = project / name
    best, last = run_dir / "weights" / "best.pt", run_dir / "weights" / "last.pt"
    if not best.is_file():
        best = last
    if not best.is_file():
        raise RuntimeError(f"ultralytics training wrote no weights under {run_dir}")
    trainer = getattr(model, "trainer", None)
    n_train = len(getattr(getattr(trainer, "train_loader", None), "dataset", []) or [])
    n_val = len(
        getattr(getattr(getattr(trainer, "validator", None), "dataloader", None), "dataset", []) or []
    )
    n_params = sum(p.numel() for p in trainer.model.parameters()) if getattr(trainer, "model", None) else None
    return YoloTrainResult(best, last, _history(run_dir / "results.csv"), seconds, n_train, n_val,
                           {"parameters": n_params})  # fmt: skip


# --- inference ---------------------------------------------------------------------------------------


class UltralyticsDetector:
    """A YOLO ``.pt`` as a :class:`~memeops.vision.detect.Detector`."""

    def __init__(self, config: DetectorConfig):
        if not config.weights:
            raise ValueError("ultralytics detector: set weights to a local YOLO .pt file")
        configure_ultralytics()
        from ultralytics import YOLO

        self.config = config
        self.device = resolve_device(config.device)
        self.model = YOLO(config.weights, task="detect")
        self.names: dict[int, str] = dict(getattr(self.model, "names", {}) or {})

    def detect(self, images: Sequence[Image.Image]) -> list[Detections]:
        from memeops.threads import torch_threads

        # ultralytics' select_device() also sets torch's global thread count: the context restores it
        with torch_threads(self.config.threads):
            return self._detect(images)

    def _detect(self, images: Sequence[Image.Image]) -> list[Detections]:
        cfg = self.config
        out: list[Detections] = []
        for start in range(0, len(images), cfg.batch_size):
            chunk = [
                im if im.mode == "RGB" else im.convert("RGB") for im in images[start : start + cfg.batch_size]
            ]
            results = self.model.predict(source=chunk, imgsz=cfg.imgsz, conf=cfg.conf, iou=cfg.iou,
                                         max_det=cfg.max_det, device=self.device, batch=len(chunk),
                                         verbose=False, save=False)  # fmt: skip
            for res in results:
                boxes = res.boxes
                if boxes is None or not len(boxes):
                    out.append(Detections.empty())
                    continue
                xyxy, conf = boxes.xyxyn.cpu().numpy(), boxes.conf.cpu().numpy()
                out.append(
                    Detections.from_normalised(
                        xyxy, conf, boxes.cls.cpu().numpy().astype(np.int64), cfg.max_det
                    )
                )
        return out
