"""Name → (config class, model class), and building a model from a name, a config and task specs.

Configs arrive as plain dicts from YAML/MLflow params or as already-validated pydantic objects;
both end up as the model's own frozen config class, so unknown keys fail loudly.
"""

from __future__ import annotations

from pydantic import BaseModel
from torch import nn

from memeops.models import baselines as bl
from memeops.models.base import TaskSpec
from memeops.models.bilinear import Bilinear, BilinearConfig
from memeops.models.gatedclip import GatedCLIP, GatedCLIPConfig
from memeops.models.mgmcf import MGMCF, MGMCFConfig
from memeops.models.retrieval import Retrieval, RetrievalConfig

MODEL_REGISTRY: dict[str, tuple[type[BaseModel], type[nn.Module]]] = {
    "gatedclip": (GatedCLIPConfig, GatedCLIP),
    "text_only": (bl.TextOnlyConfig, bl.TextOnly),
    "image_only": (bl.ImageOnlyConfig, bl.ImageOnly),
    "average": (bl.AverageConfig, bl.Average),
    "concat": (bl.ConcatConfig, bl.Concat),
    "align": (bl.AlignConfig, bl.Align),
    "cross": (bl.CrossConfig, bl.Cross),
    "mgmcf": (MGMCFConfig, MGMCF),
    "bilinear": (BilinearConfig, Bilinear),
    "retrieval": (RetrievalConfig, Retrieval),
}


def _entry(name: str) -> tuple[type[BaseModel], type[nn.Module]]:
    try:
        return MODEL_REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_REGISTRY)}") from None


def model_config_class(name: str) -> type[BaseModel]:
    """The pydantic config class for a registered model name."""
    return _entry(name)[0]


def build_model(name: str, config: dict | BaseModel, specs: list[TaskSpec]) -> nn.Module:
    """Instantiate a registered model; ``config`` may be a dict (validated) or its config object."""
    config_cls, model_cls = _entry(name)
    if isinstance(config, dict):
        config = config_cls.model_validate(config)
    elif type(config) is not config_cls:
        # Exact type: CrossConfig subclasses AlignConfig but carries a different default.
        raise TypeError(f"model {name!r} takes a {config_cls.__name__}, got {type(config).__name__}")
    if not specs:
        raise ValueError(f"model {name!r} needs at least one task spec")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate task names in specs: {names}")
    return model_cls(config, list(specs))
