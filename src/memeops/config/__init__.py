"""Typed configuration: ``params.yaml`` read once (:func:`load_params`) into :class:`Params`, whose
sections are the typed models of this package.

- :mod:`memeops.config.params`: :class:`Params`, :func:`load_params`, :class:`ConfigError`;
- :mod:`memeops.config.data`: the data sections (``synth``, ``data``, ``ocr``, ``validate``) and
  :data:`SPLITS`;
- :mod:`memeops.config.train`: the ``train`` section (:class:`TrainStageConfig`, its variants, the
  trainer settings :class:`TrainConfig` and their partial overrides);
- :mod:`memeops.config.encoders`: ``encoders.text`` (:class:`SentenceEncoderConfig`, the caption
  encoder of the feature cache; ``encoders.clip`` lives beside the CLIP code).

Torch-free by design (pydantic and yaml only): any tool can check params without the model stack.
"""

from memeops.config.data import (
    SPLITS,
    ConsolidateConfig,
    LeakageConfig,
    OcrConfig,
    SourceConfig,
    SplitFractions,
    SynthConfig,
    ValidateConfig,
)
from memeops.config.encoders import SentenceEncoderConfig
from memeops.config.params import ConfigError, Params, load_params
from memeops.config.train import TrainConfig, TrainerOverrides, TrainStageConfig, VariantConfig

__all__ = [
    "SPLITS",
    "ConfigError",
    "ConsolidateConfig",
    "LeakageConfig",
    "OcrConfig",
    "Params",
    "SentenceEncoderConfig",
    "SourceConfig",
    "SplitFractions",
    "SynthConfig",
    "TrainConfig",
    "TrainStageConfig",
    "TrainerOverrides",
    "ValidateConfig",
    "VariantConfig",
    "load_params",
]
