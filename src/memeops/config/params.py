"""``params.yaml`` is read here, once, and passed down as typed objects.

No other module opens ``params.yaml``. Stages call :func:`load_params` and hand each library
function only the section it needs. An invalid file is a :class:`ConfigError` with a one-line
message naming every bad key (``train.variants.gatedclip.trainer.lrr: Extra inputs are not
permitted``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from memeops.config.data import ConsolidateConfig, OcrConfig, SynthConfig, ValidateConfig
from memeops.config.encoders import SentenceEncoderConfig
from memeops.config.train import TrainStageConfig


class ConfigError(ValueError):
    """A params file that cannot be used; the message is one line naming the problem."""


class Params(BaseModel):
    """The whole of ``params.yaml`` that this version of the project understands."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    seed: int = 42
    synth: SynthConfig = SynthConfig()
    data: ConsolidateConfig
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    ocr: OcrConfig = OcrConfig()
    train: TrainStageConfig | None = None  # None: a params file without model training (data only)

    # Sections whose typed config classes live beside the torch code that uses them (so that
    # importing memeops.config stays light); a stage turns them into their typed object with
    # :meth:`section`.
    encoders: dict[str, Any] = Field(default_factory=dict)
    pretrain_clip: dict[str, Any] = Field(default_factory=dict)
    features: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _text_encoder_valid(self) -> Params:
        """``encoders.text`` is torch-free, so a typo in it fails when the file is loaded (``memeops
        params``), not half an hour later in stage features."""
        try:
            SentenceEncoderConfig.model_validate(self.encoders.get("text") or {})
        except ValidationError as exc:
            raise ValueError(f"encoders.text: {one_line(exc)}") from None
        return self

    def section(self, name: str, model_cls: type[BaseModel]) -> Any:
        """``params.<name>`` (dotted for nesting, e.g. ``encoders.clip``) validated as ``model_cls``;
        a section already typed as ``model_cls`` here (``train``) is returned as it is."""
        typed = getattr(self, name, None) if name in type(self).model_fields else None
        if isinstance(typed, model_cls):
            return typed
        node: Any = self.model_dump(by_alias=True)
        for part in name.split("."):
            node = (node or {}).get(part, {})
        try:
            return model_cls.model_validate(node or {})
        except ValidationError as exc:
            raise ConfigError(f"params {name}: {one_line(exc)}") from exc


def one_line(exc: ValidationError) -> str:
    """Pydantic's errors as ``loc: message; loc: message`` (each loc dotted, e.g. ``train.seeds``)."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``; raise :class:`ConfigError` with a one-line message."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found (run from the project root)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where} ({getattr(exc, 'problem', None) or 'parse error'})") from exc
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {one_line(exc)}") from exc
