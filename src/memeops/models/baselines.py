"""Baselines on the same cached CLIP embeddings as GatedCLIP, with the same head structure.

Every baseline is ``features(batch) -> [B, F]`` followed by one shared trunk
(Linear F→hidden, ReLU, Dropout) and :class:`MultiTaskHeads`, so differences between them come
from how the two modalities are combined, not from the classifier:

- ``text_only`` / ``image_only``: one modality; shows how far a single view gets.
- ``average``: mean of the L2-normalised image and text embeddings (GatedCLIP's "CLIP" baseline).
- ``concat``: late fusion, ``[v_I; v_T]``.
- ``align`` / ``cross``: Hate-CLIPper. Each modality is projected (Linear + Dropout) to ``proj_dim``
  and L2-normalised; ``align`` takes the element-wise product ``p_I ⊙ p_T`` [B, proj_dim], ``cross``
  the flattened feature-interaction matrix ``p_I p_Tᵀ`` [B, proj_dim²]. The paper uses
  proj_dim 1024 on ViT-L/14; the defaults here are small (256 align, 64 cross) so they fit a CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, model_validator
from torch import Tensor, nn

from memeops.models.base import InputNorm, ModelOutput, MultiTaskHeads, TaskSpec, normalise_inputs


class BaselineConfig(BaseModel):
    """Input widths and the shared classifier trunk."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_dim: int = 512
    text_dim: int = 512
    hidden: int = 128
    dropout: float = 0.3
    input_norm: InputNorm = "unit_variance"  # as GatedCLIP: see memeops.models.base.normalise_inputs


class TextOnlyConfig(BaselineConfig):
    pass


class ImageOnlyConfig(BaselineConfig):
    pass


class ConcatConfig(BaselineConfig):
    pass


class AverageConfig(BaselineConfig):
    @model_validator(mode="after")
    def _same_space(self) -> AverageConfig:
        if self.image_dim != self.text_dim:
            raise ValueError("average needs image_dim == text_dim (it averages the two embeddings)")
        return self


class AlignConfig(BaselineConfig):
    proj_dim: int = 256
    proj_dropout: float = 0.1


class CrossConfig(AlignConfig):
    proj_dim: int = 64  # the classifier input is proj_dim² wide


class _FeatureClassifier(nn.Module):
    """Shared tail: ``features [B, F] -> trunk [B, hidden] -> {task: [B, num_labels]}``."""

    def __init__(self, config: BaselineConfig, specs: list[TaskSpec], feature_dim: int):
        super().__init__()
        self.config = config
        self.specs = list(specs)
        self.feature_dim = feature_dim
        self.trunk = nn.Sequential(
            nn.Linear(feature_dim, config.hidden), nn.ReLU(), nn.Dropout(config.dropout)
        )  # [B, F] -> [B, hidden]
        self.heads = MultiTaskHeads(config.hidden, self.specs)

    def features(self, batch: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:
        batch = normalise_inputs(batch, self.config.input_norm)
        return ModelOutput(logits=self.heads(self.trunk(self.features(batch))))


class TextOnly(_FeatureClassifier):
    def __init__(self, config: TextOnlyConfig, specs: list[TaskSpec]):
        super().__init__(config, specs, config.text_dim)

    def features(self, batch: dict[str, Tensor]) -> Tensor:
        return batch["text_emb"]  # [B, text_dim]


class ImageOnly(_FeatureClassifier):
    def __init__(self, config: ImageOnlyConfig, specs: list[TaskSpec]):
        super().__init__(config, specs, config.image_dim)

    def features(self, batch: dict[str, Tensor]) -> Tensor:
        return batch["image_emb"]  # [B, image_dim]


class Average(_FeatureClassifier):
    def __init__(self, config: AverageConfig, specs: list[TaskSpec]):
        super().__init__(config, specs, config.image_dim)

    def features(self, batch: dict[str, Tensor]) -> Tensor:
        # Normalise first so neither modality dominates by norm alone: [B, D]
        return 0.5 * (F.normalize(batch["image_emb"], dim=-1) + F.normalize(batch["text_emb"], dim=-1))


class Concat(_FeatureClassifier):
    def __init__(self, config: ConcatConfig, specs: list[TaskSpec]):
        super().__init__(config, specs, config.image_dim + config.text_dim)

    def features(self, batch: dict[str, Tensor]) -> Tensor:
        return torch.cat([batch["image_emb"], batch["text_emb"]], dim=-1)  # [B, image_dim + text_dim]


class _Projected(_FeatureClassifier):
    """Hate-CLIPper projections: ``v [B, in] -> normalize(Dropout(Linear(v))) [B, proj_dim]``."""

    def __init__(self, config: AlignConfig, specs: list[TaskSpec], feature_dim: int):
        super().__init__(config, specs, feature_dim)
        p = config.proj_dim
        self.image_proj = nn.Sequential(nn.Linear(config.image_dim, p), nn.Dropout(config.proj_dropout))
        self.text_proj = nn.Sequential(nn.Linear(config.text_dim, p), nn.Dropout(config.proj_dropout))

    def projections(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        p_i = F.normalize(self.image_proj(batch["image_emb"]), dim=-1)
        p_t = F.normalize(self.text_proj(batch["text_emb"]), dim=-1)
        return p_i, p_t


class Align(_Projected):
    def __init__(self, config: AlignConfig, specs: list[TaskSpec]):
        super().__init__(config, specs, config.proj_dim)

    def features(self, batch: dict[str, Tensor]) -> Tensor:
        p_i, p_t = self.projections(batch)
        return p_i * p_t  # [B, P]: the diagonal of the interaction matrix


class Cross(_Projected):
    def __init__(self, config: CrossConfig, specs: list[TaskSpec]):
        super().__init__(config, specs, config.proj_dim**2)

    def features(self, batch: dict[str, Tensor]) -> Tensor:
        p_i, p_t = self.projections(batch)
        fim = p_i.unsqueeze(-1) * p_t.unsqueeze(-2)  # [B, P, P]: every image×text feature product
        return fim.flatten(1)  # [B, P*P]
