"""MGMCF's serving input encoder: raw memes through the same chain training's caches came from.

Per meme MGMCF's head takes (shapes in :mod:`memeops.models.mgmcf`) the frozen CLIP's global
image feature, the text encoder's global feature and token states, and region features: the
detector's (or grid's) top-K boxes, cropped and encoded by the frozen region CNN. Training reads
those from caches (:mod:`memeops.data.mgmcf_inputs`); :class:`MgmcfInputEncoder` computes them
for raw images, with :func:`~memeops.data.mgmcf_inputs.encode_regions` shared with the caches.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image
from torch import Tensor

from memeops.data.mgmcf_inputs import encode_regions
from memeops.models.region_cnn import RegionCNN, RegionCNNConfig, build_region_cnn
from memeops.models.text_encoders import TextEncoderConfig, TextTokenEncoder, load_text_encoder
from memeops.serving.folder import ClipFeatureInputs
from memeops.vision.detector_dir import load_detector_dir, pack_detector
from memeops.vision.regions import RegionViewConfig, regions_for_images


class MgmcfInputEncoder:
    """Raw memes -> an MGMCF batch: CLIP global image, text encoder, detector, crops, region CNN.

    Folder layout (inside the model folder's ``encoder/``): ``clip/`` (as ``clip_features``),
    ``detector/`` (``memeops.vision`` detector folder; absent for grid views), ``text_encoder/``
    (hf encoders only), ``region_cnn/`` (VGG16 weights only) and ``mgmcf_inputs.json``.
    """

    kind: ClassVar[str] = "mgmcf"
    SPEC: ClassVar[str] = "mgmcf_inputs.json"

    def __init__(self, clip: Any, text_encoder: TextTokenEncoder, detector: Any, view: Any, cnn: RegionCNN):
        self.clip, self.text_encoder, self.detector, self.view, self.cnn = clip, text_encoder, detector, view, cnn

    @classmethod
    def pack(cls, sources: Mapping[str, Any], dest: Path) -> dict[str, Any]:
        """``sources``: ``clip_dir``, ``detector_dir`` (or None), ``view`` (RegionViewConfig),
        ``text_encoder`` (TextEncoderConfig), ``region_cnn`` (RegionCNNConfig)."""
        dest.mkdir(parents=True, exist_ok=True)
        clip_section = ClipFeatureInputs.pack(Path(sources["clip_dir"]), dest / "clip")
        view = sources["view"]
        text_cfg: TextEncoderConfig = sources["text_encoder"]
        cnn_cfg: RegionCNNConfig = sources["region_cnn"]
        if view.source == "detector":
            if not sources.get("detector_dir"):
                raise ValueError("a detector region view needs the detector folder to pack")
            pack_detector(Path(sources["detector_dir"]), dest / "detector")
        if text_cfg.kind == "hf":
            shutil.copytree(str(text_cfg.path), dest / "text_encoder")
            text_cfg = text_cfg.model_copy(update={"path": "text_encoder"})
        if cnn_cfg.kind == "vgg16" and cnn_cfg.weights:
            (dest / "region_cnn").mkdir()
            shutil.copyfile(cnn_cfg.weights, dest / "region_cnn" / Path(cnn_cfg.weights).name)
            cnn_cfg = cnn_cfg.model_copy(update={"weights": f"region_cnn/{Path(cnn_cfg.weights).name}"})
        spec = {"view": view.model_dump(mode="json"), "text_encoder": text_cfg.model_dump(mode="json"),
                "region_cnn": cnn_cfg.model_dump(mode="json")}  # fmt: skip
        (dest / cls.SPEC).write_text(json.dumps(spec, indent=2), encoding="utf-8")
        return {"kind": cls.kind, "clip": clip_section, **spec}

    @classmethod
    def load(cls, folder: Path, section: Mapping[str, Any], device: str) -> MgmcfInputEncoder:
        spec = json.loads((folder / cls.SPEC).read_text(encoding="utf-8"))
        clip = ClipFeatureInputs.load(folder / "clip", section.get("clip", {}), device).encoder
        view = RegionViewConfig.model_validate(spec["view"])
        text_cfg = TextEncoderConfig.model_validate(spec["text_encoder"])
        if text_cfg.kind == "hf":
            text_cfg = text_cfg.model_copy(update={"path": str(folder / str(text_cfg.path))})
        cnn_cfg = RegionCNNConfig.model_validate(spec["region_cnn"])
        if cnn_cfg.weights:
            cnn_cfg = cnn_cfg.model_copy(update={"weights": str(folder / cnn_cfg.weights)})
        detector = load_detector_dir(folder / "detector", device=device) if view.source == "detector" else None
        return cls(clip, load_text_encoder(text_cfg, clip, device), detector, view,
                   build_region_cnn(cnn_cfg, clip, device))  # fmt: skip

    def encode(self, images: Sequence[Image.Image], texts: Sequence[str]) -> dict[str, Tensor]:
        text = self.text_encoder.encode(list(texts))
        rs = regions_for_images(list(images), self.detector, self.view)
        regions = encode_regions(rs.keys, rs.crops, rs.boxes, rs.scores, rs.valid, self.cnn, rs.classes)
        return {
            "image_emb": self.clip.encode_images(list(images)),
            "text_emb": text.global_,
            "text_tokens": text.tokens,
            "text_mask": text.mask,
            "region_feats": regions.feats,
            "region_boxes": regions.boxes,
            "region_scores": regions.scores,
            "region_mask": regions.valid,
            "region_classes": regions.classes,
        }
