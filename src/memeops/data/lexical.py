"""The lexical inputs of the interaction models: caption character n-grams and detector object tags.

Why a lexical caption view beside the frozen CLIP text embedding: on SynthMeme the sentence embedding
is dominated by the caption's frame (a linear probe reads the frame at 0.92 accuracy and the named
target at 0.75), so a fusion that must ask "does the pictured object demean *this* target?" has to
recover the entity from a blurred vector and memorises instead (train AUROC 1.0, test 0.6–0.7). A bag
of character n-grams keeps every name as a handful of exact features, in English and Chinese alike,
and needs no pretrained weights: the classic real-data text baseline (TF-IDF over n-grams).

- :class:`CaptionNgrams`: ``char_wb`` n-grams (scikit-learn's ``CountVectorizer``; n-grams inside
  word boundaries, lowercased) with a vocabulary fitted on the TRAIN captions only; each caption is a
  0/1 row scaled by ``1/sqrt(#n-grams)`` so long captions do not get larger inputs. Captions longer
  than ``max_chars`` are cut to their first ``max_chars`` characters before counting (the stated
  truncation rule: the cost per caption stays bounded whatever the OCR returns).
- :func:`object_tags`: per meme, which detector classes were detected with score ``>= min_score`` —
  the image-side training signal (any detector gives it on real memes; here stage ``regions``'s).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sklearn.feature_extraction.text import CountVectorizer
from torch import Tensor

from memeops.data.features import FeatureDataset, FeatureStore
from memeops.models.base import TaskSpec

NGRAMS_FILE = "caption_ngrams.json"


class LexicalConfig(BaseModel):
    """``train.variants.<v>.inputs.lexical``: the caption n-gram vocabulary."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ngram_min: int = Field(1, ge=1)
    ngram_max: int = Field(3, ge=1, le=6)
    min_df: int = Field(3, ge=1, description="an n-gram enters the vocabulary when this many TRAIN captions have it")
    max_features: int = Field(4096, ge=8, description="most frequent n-grams kept")
    max_chars: int = Field(512, ge=16, description="captions are cut to their first max_chars characters")

    @model_validator(mode="after")
    def _ordered(self) -> LexicalConfig:
        if self.ngram_min > self.ngram_max:
            raise ValueError(f"ngram_min {self.ngram_min} > ngram_max {self.ngram_max}")
        return self


class CaptionNgrams:
    """A fitted caption n-gram vocabulary: ``transform(texts) -> float32 [N, size]``."""

    def __init__(self, cfg: LexicalConfig, vocabulary: Sequence[str]):
        if not vocabulary:
            raise ValueError("an empty n-gram vocabulary: no TRAIN caption has an n-gram in min_df captions")
        self.cfg = cfg
        self.vocabulary = list(vocabulary)
        self._vectorizer = self._make_vectorizer(cfg, {g: i for i, g in enumerate(self.vocabulary)})

    @staticmethod
    def _make_vectorizer(cfg: LexicalConfig, vocabulary: dict[str, int] | None = None) -> CountVectorizer:
        return CountVectorizer(analyzer="char_wb", ngram_range=(cfg.ngram_min, cfg.ngram_max), lowercase=True,
                               binary=True, min_df=cfg.min_df, max_features=cfg.max_features,
                               vocabulary=vocabulary, dtype=np.float32)  # fmt: skip

    @classmethod
    def fit(cls, texts: Sequence[str], cfg: LexicalConfig) -> CaptionNgrams:
        """Learn the vocabulary from ``texts`` (pass TRAIN captions only: no val/test leakage)."""
        vectorizer = cls._make_vectorizer(cfg)
        try:
            vectorizer.fit(_clipped(texts, cfg.max_chars))
        except ValueError as err:  # sklearn: "After pruning, no terms remain" / "empty vocabulary"
            raise ValueError(f"caption n-grams: {err} (lower inputs.lexical.min_df?)") from None
        vocab = vectorizer.vocabulary_
        return cls(cfg, sorted(vocab, key=vocab.__getitem__))

    @property
    def size(self) -> int:
        return len(self.vocabulary)

    def transform(self, texts: Sequence[str]) -> Tensor:
        """``float32 [N, size]``: 0/1 per n-gram, each row scaled by 1/sqrt(its n-gram count)."""
        counts = self._vectorizer.transform(_clipped(texts, self.cfg.max_chars)).toarray()
        norms = np.sqrt(np.maximum(counts.sum(axis=1, keepdims=True), 1.0))
        return torch.from_numpy((counts / norms).astype(np.float32))

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / NGRAMS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"config": self.cfg.model_dump(mode="json"), "vocabulary": self.vocabulary}
        path.write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> CaptionNgrams:
        path = Path(folder) / NGRAMS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no caption n-gram vocabulary at {path}")
        payload = json.loads(path.read_text(encoding="utf-8"))
        return cls(LexicalConfig.model_validate(payload["config"]), payload["vocabulary"])


def _clipped(texts: Sequence[str], max_chars: int) -> list[str]:
    return [("" if t is None else str(t))[:max_chars] for t in texts]


def object_tags(detections: pd.DataFrame, image_keys: Sequence[str], num_classes: int, min_score: float) -> Tensor:
    """``float32 [N, num_classes]``: 1 where the detector found that class in the image with
    ``score >= min_score`` (rows follow ``image_keys``; images without detections are all 0)."""
    kept = detections[(detections["score"] >= min_score) & (detections["class_id"] >= 0)]
    bad = kept["class_id"] >= num_classes
    if bad.any():
        raise ValueError(f"detections name class {int(kept['class_id'].max())} but the detector has {num_classes} classes")
    rows = pd.DataFrame({"image_sha256": list(image_keys), "row": np.arange(len(image_keys))})
    hits = rows.merge(kept[["image_sha256", "class_id"]], on="image_sha256")  # a repeated image: every row
    tags = np.zeros((len(image_keys), num_classes), np.float32)
    tags[hits["row"].to_numpy(), hits["class_id"].to_numpy(np.int64)] = 1.0
    return torch.from_numpy(tags)


# --------------------------------------------------------------------------- training inputs


class LexicalInputsConfig(BaseModel):
    """``train.variants.<v>.inputs`` of the interaction models (``bilinear``, GatedCLIP with
    ``interaction: lowrank``): the n-gram vocabulary and the regions view whose ``min_score`` keeps a
    detection as an object tag."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lexical: LexicalConfig = Field(default_factory=LexicalConfig)
    object_view: str = "detector"


class LexicalDataset(FeatureDataset):
    """:class:`~memeops.data.features.FeatureDataset` plus ``caption_ngrams`` [B, V] and the training
    signal ``object_tags`` [B, C] (flip-invariant: a mirrored image shows the same objects)."""

    def __init__(
        self, memes: pd.DataFrame, store: FeatureStore, specs: Sequence[TaskSpec], split: str,
        ngrams: Tensor, tags: Tensor, train: bool = False, generator: torch.Generator | None = None,
    ):  # fmt: skip
        super().__init__(memes, store, specs, split, train=train, generator=generator)
        rows = torch.from_numpy((memes["split"] == split).to_numpy(dtype=bool, copy=True))
        self.ngrams, self.tags = ngrams[rows], tags[rows]

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        out = super().batch(indices)
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        out["caption_ngrams"] = self.ngrams[idx]
        out["object_tags"] = self.tags[idx]
        return out


class LexicalInputs:
    """The lexical family's datasets for one meme table: the vocabulary is fitted on its TRAIN captions."""

    def __init__(self, memes: pd.DataFrame, store: FeatureStore, specs: Sequence[TaskSpec], feature_dim: int,
                 cfg: LexicalInputsConfig, detections: pd.DataFrame, num_classes: int, min_score: float):  # fmt: skip
        self.memes, self.store, self.specs, self.dim, self.cfg = memes, store, list(specs), feature_dim, cfg
        texts = memes["text"].fillna("").astype(str)
        self.ngrams = CaptionNgrams.fit(texts[memes["split"] == "train"].tolist(), cfg.lexical)
        self.caption_ngrams = self.ngrams.transform(texts.tolist())  # [N, V]
        self.object_tags = object_tags(detections, memes["image_sha256"].astype(str).tolist(), num_classes, min_score)
        self.num_classes = num_classes

    def model_dims(self) -> dict[str, Any]:
        return {"image_dim": self.dim, "text_dim": self.store.text_dim, "lexical_dim": self.ngrams.size,
                "object_classes": self.num_classes}  # fmt: skip

    def dataset(self, split: str, train: bool = False, generator: Any = None) -> LexicalDataset:
        return LexicalDataset(self.memes, self.store, self.specs, split, self.caption_ngrams, self.object_tags,
                              train=train, generator=generator)  # fmt: skip
