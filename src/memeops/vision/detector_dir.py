"""Detector folders and building a detector from its config (any backend).

A **detector folder** (``models/detector/``) holds the weights file and ``detector_config.json``
(a :class:`~memeops.vision.detect.DetectorConfig` whose ``weights`` is the file name relative to
the folder): :func:`save_detector_dir` writes one, :func:`pack_detector` copies one into a serving
bundle, :func:`load_detector_dir` loads it. :func:`load_detector` picks the backend class:
grid / torchvision from :mod:`memeops.vision.detect`, ultralytics from :mod:`memeops.vision.yolo`
(kept apart so neither backend module imports the other).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from memeops.vision.detect import Detector, DetectorConfig, GridDetector, TorchvisionDetector
from memeops.vision.yolo import UltralyticsDetector

DETECTOR_CONFIG_FILE = "detector_config.json"


def _resolve_weights(config: DetectorConfig, base_dir: str | Path | None) -> DetectorConfig:
    if config.weights is None or base_dir is None or Path(config.weights).is_absolute():
        return config
    return config.model_copy(update={"weights": str(Path(base_dir) / config.weights)})


def load_detector(config: DetectorConfig, base_dir: str | Path | None = None) -> Detector:
    """Build the detector ``config`` describes (relative ``weights`` resolve against ``base_dir``)."""
    config = _resolve_weights(config, base_dir)
    if config.backend != "grid" and config.weights and not Path(config.weights).is_file():
        raise FileNotFoundError(f"detector weights not found: {config.weights}")
    if config.backend == "grid":
        return GridDetector(config)
    if config.backend == "torchvision":
        return TorchvisionDetector(config)
    return UltralyticsDetector(config)


def read_detector_config(folder: str | Path) -> DetectorConfig:
    """``folder/detector_config.json`` as a :class:`DetectorConfig` (weights still relative)."""
    path = Path(folder) / DETECTOR_CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {DETECTOR_CONFIG_FILE} in {folder}: run stage train_detector first")
    return DetectorConfig.model_validate(json.loads(path.read_text(encoding="utf-8")))


def load_detector_dir(folder: str | Path, device: str | None = None) -> Detector:
    """The detector a detector folder describes; ``device`` overrides the stored one."""
    config = read_detector_config(folder)
    if device is not None:
        config = config.model_copy(update={"device": device})
    return load_detector(config, base_dir=folder)


def save_detector_dir(
    config: DetectorConfig, dest_dir: str | Path, weights: str | Path | None = None
) -> dict[str, Any]:
    """Write a detector folder: copy ``weights`` (default ``config.weights``) into ``dest_dir`` and write
    ``detector_config.json`` naming it relative to the folder. Returns the JSON-able config."""
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    source = weights if weights is not None else config.weights
    name = None
    if config.backend != "grid" and source is not None:
        source = Path(source)
        if not source.is_file():
            raise FileNotFoundError(f"detector weights not found: {source}")
        name = source.name
        target = dest / name
        if not (target.exists() and os.path.samefile(source, target)):
            shutil.copyfile(source, target)
    elif config.backend != "grid":
        raise ValueError(f"{config.backend} detector needs weights to save a detector folder")
    section = config.model_copy(update={"weights": name}).model_dump(mode="json")
    tmp = dest / (DETECTOR_CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(section, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, dest / DETECTOR_CONFIG_FILE)
    return section


def pack_detector(source_dir: str | Path, dest_dir: str | Path) -> dict[str, Any]:
    """Copy a detector folder (weights + ``detector_config.json``) into ``dest_dir``, e.g. a serving
    model's ``detector/`` sub-folder. Returns the JSON-able config section (weights relative)."""
    config = _resolve_weights(read_detector_config(source_dir), source_dir)
    return save_detector_dir(config, dest_dir)


