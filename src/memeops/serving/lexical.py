"""The interaction models' serving input encoder: the frozen CLIP plus the caption n-gram vocabulary.

Training reads the CLIP features from the cache and the caption n-grams from the vocabulary fitted
on the TRAIN captions (:class:`memeops.data.lexical.LexicalInputs`); the vocabulary is packed into
the model folder, so a served model turns a raw caption into exactly the n-gram row it trained on.
The detector's object tags are a training signal only: serving needs no detector.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image
from torch import Tensor

from memeops.data.lexical import CaptionNgrams
from memeops.serving.folder import ClipFeatureInputs


class LexicalInputEncoder:
    """Raw memes -> ``{"image_emb", "text_emb", "caption_ngrams"}``.

    Folder layout (inside the model folder's ``encoder/``): ``clip/`` (as ``clip_features``) and
    ``caption_ngrams.json``.
    """

    kind: ClassVar[str] = "lexical"

    def __init__(self, clip: ClipFeatureInputs, ngrams: CaptionNgrams):
        self.clip, self.ngrams = clip, ngrams

    @classmethod
    def pack(cls, sources: Mapping[str, Any], dest: Path) -> dict[str, Any]:
        """``sources``: ``clip_dir`` (a pretrain_clip folder) and ``ngrams`` (the fitted vocabulary)."""
        dest.mkdir(parents=True, exist_ok=True)
        clip_section = ClipFeatureInputs.pack(Path(sources["clip_dir"]), dest / "clip")
        ngrams: CaptionNgrams = sources["ngrams"]
        ngrams.save(dest)
        return {"kind": cls.kind, "clip": clip_section, "ngrams": ngrams.size}

    @classmethod
    def load(cls, folder: Path, section: Mapping[str, Any], device: str) -> LexicalInputEncoder:
        return cls(ClipFeatureInputs.load(folder / "clip", section.get("clip", {}), device), CaptionNgrams.load(folder))

    def encode(self, images: Sequence[Image.Image], texts: Sequence[str]) -> dict[str, Tensor]:
        return {**self.clip.encode(images, texts), "caption_ngrams": self.ngrams.transform(list(texts))}
