"""The typed data sections of ``params.yaml``: ``synth``, ``data`` (sources, splits, leakage),
``ocr`` and ``validate``, and the split names every stage agrees on.

Pydantic only (no torch): the data stages and the loaders import these without the model stack.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SPLITS: tuple[str, ...] = ("train", "val", "val_unseen", "test", "test_unseen")
"""Known split names, in 'earlier to later' order (the leakage policy acts on the later split)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitFractions(_Strict):
    """Fractions for a seeded, stratified split of sources without an official split."""

    train: float = 0.7
    val: float = 0.15
    test: float = 0.15

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitFractions:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1, got {total:.4f}")
        return self


class SynthConfig(_Strict):
    """SynthMeme generation (stage ``synth``)."""

    seed: int = 13
    n_memes: int = Field(3000, ge=30, description="total memes; generated as triples (hateful + 2 confounders)")
    image_size: int = Field(256, ge=96, le=1024)
    languages: dict[str, float] = Field(default_factory=lambda: {"en": 0.7, "zh": 0.3})
    label_noise: float = Field(0.03, ge=0.0, lt=0.5)
    unrelated_rate: float = Field(0.1, ge=0.0, lt=1.0, description="fraction of weakly correlated memes")
    unseen_fraction: float = Field(0.1, ge=0.0, lt=0.5, description="fraction of triples in test_unseen")
    split: SplitFractions = SplitFractions()
    jpeg_quality: int = Field(90, ge=50, le=100)
    workers: int = Field(2, ge=1)
    output_dir: str = "data/synthmeme"

    @field_validator("languages")
    @classmethod
    def _known_languages(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = set(value) - {"en", "zh"}
        if unknown:
            raise ValueError(f"SynthMeme renders only en and zh captions, got {sorted(unknown)}")
        if not value or sum(value.values()) <= 0:
            raise ValueError("languages needs at least one language with a positive weight")
        return value


class SourceConfig(BaseModel):
    """One input data set: ``{name, format, path, ...options}``; options are format-specific."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]*$")
    format: str
    path: str
    language: str | None = None
    ocr: Literal["off", "missing", "all"] = Field(
        "off", description="stage ocr: off, fill only memes without text (missing), or replace every text (all)"
    )

    @field_validator("ocr", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        # YAML 1.1 (PyYAML) reads an unquoted `off` as False
        if value is False:
            return "off"
        if value is True:
            raise ValueError("ocr: say 'missing' or 'all' (true is ambiguous)")
        return value

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


LeakagePolicy = Literal["auto", "drop_later", "flag"]
LEAKAGE_POLICIES: tuple[str, ...] = get_args(LeakagePolicy)
"""What stage consolidate does with a meme whose image duplicates one in an earlier split."""


class LeakageConfig(_Strict):
    """Cross-split duplicates (exact sha256 or near pHash) of a meme in an earlier split.

    ``auto`` (default): a duplicate in an OFFICIAL split is kept there and flagged (``leak_of``,
    ``leak_kind``), because every paper reports the official test set (RA-HMD on Harm-C, ...) and
    dropping memes from it makes the numbers incomparable; a duplicate in a split memeops assigned
    (seeded, stratified) is dropped to the quarantine, since that split is ours to make clean.
    ``drop_later``: every later-split duplicate is dropped; ``flag``: every one is kept and flagged.
    """

    policy: LeakagePolicy = "auto"
    phash_max_distance: int = Field(4, ge=0, le=32, description="Hamming distance on the 64-bit pHash")


class ConsolidateConfig(_Strict):
    """Stage ``consolidate``: loaders, image checks, splits, leakage."""

    sources: list[SourceConfig]
    split: SplitFractions = SplitFractions()
    split_seed: int = 2024
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_image_bytes: int = Field(50_000_000, ge=1)
    max_text_chars: int = Field(4000, ge=1)
    leakage: LeakageConfig = LeakageConfig()
    workers: int = Field(2, ge=1)
    output_dir: str = "data/consolidated"
    ocr_texts: str = Field("data/ocr/texts.parquet", description="stage ocr's output; read only for sources with ocr on")

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, value: list[SourceConfig]) -> list[SourceConfig]:
        names = [s.name for s in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique, repeated: {dupes}")
        if not value:
            raise ValueError("data.sources is empty: list at least one source")
        return value


class OcrConfig(_Strict):
    """Stage ``ocr``: texts for sources whose ``ocr`` is on, and the CER report on SynthMeme.

    The engine settings (``min_confidence``, ``det_limit_side_len``, ``space_bias``, ``join``) are
    explained in ``memeops.data.ocr`` and docs/ocr.md.
    """

    engine: Literal["rapidocr"] = "rapidocr"
    cer_sample: int = Field(200, ge=0, description="SynthMeme memes OCR'd (seeded sample) for the CER report")
    cer_split: str = "test"
    seed: int = 0
    workers: int = Field(2, ge=1, description="OCR processes")
    threads: int = Field(1, ge=1, description="onnxruntime intra-op threads per process")
    min_confidence: float = Field(0.5, ge=0.0, le=1.0, description="text lines scored below this are dropped")
    det_limit_side_len: int = Field(512, ge=32, description="detector input: shorter side scaled up to at least this")
    space_bias: float = Field(30.0, ge=1.0, description="multiplier on the CTC space probability (1 = off)")
    use_cls: bool = Field(False, description="the engine's 180-degree line classifier (captions are upright)")
    join: Literal["blocks", "lines"] = "blocks"
    cer_output: str = "data/ocr/cer_sample.parquet"


class ValidateConfig(_Strict):
    """Stage ``validate``: Great Expectations suite thresholds."""

    min_class_count: int = Field(5, ge=0, description="per split, task and label present in that split")
    class_count_splits: list[str] = Field(default_factory=lambda: ["train"])
    max_empty_text_fraction: float = Field(0.5, ge=0.0, le=1.0)
