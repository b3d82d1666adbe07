"""Bilinear: late fusion plus a low-rank caption × object interaction (Hate-CLIPper-style, low rank).

On cached CLIP embeddings, like the baselines, with the interaction of
:mod:`memeops.models.interaction` added to every task's logits::

    h   = Dropout(ReLU(W_h · [v_I; v_T]))      the concat baseline's trunk
    ŷ_t = W_cls,t · h + W_t · z                z = Dropout(U · x_T) ⊙ (V · σ(O(v_I)))
    aux = object_weight · BCE(O(v_I), detector tags)

Ablation switches (config): ``interaction="none"`` is the concat baseline exactly; ``text_view="clip"``
feeds U the CLIP text embedding instead of the caption n-grams; ``object_supervision=False`` lets the
object head learn from the task losses alone.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import ConfigDict, model_validator
from torch import Tensor, nn

from memeops.models.base import InputNorm, ModelOutput, MultiTaskHeads, TaskSpec, normalise_inputs
from memeops.models.interaction import InteractionFields, LowRankInteraction, add_logits


class BilinearConfig(InteractionFields):
    """Sizes and switches; the interaction is on by default (``interaction="lowrank"``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_dim: int = 512
    text_dim: int = 512
    hidden: int = 128
    dropout: float = 0.3
    trunk: bool = True  # False: the interaction alone (each task's head reads z only)
    interaction: Literal["none", "lowrank"] = "lowrank"
    input_norm: InputNorm = "unit_variance"

    @model_validator(mode="after")
    def _inputs_present(self) -> BilinearConfig:
        self.check_interaction_inputs()
        if not self.trunk and self.interaction == "none":
            raise ValueError("bilinear with trunk=False needs interaction 'lowrank' (nothing would read the inputs)")
        return self


class Bilinear(nn.Module):
    """Concat trunk + low-rank interaction, one output head per task."""

    def __init__(self, config: BilinearConfig, specs: list[TaskSpec]):
        super().__init__()
        self.config = c = config
        self.specs = list(specs)
        self.trunk = nn.Sequential(nn.Linear(c.image_dim + c.text_dim, c.hidden), nn.ReLU(), nn.Dropout(c.dropout)) if c.trunk else None
        self.heads = MultiTaskHeads(c.hidden, self.specs) if c.trunk else None
        self.interaction = LowRankInteraction(c, c.image_dim, c.text_dim, self.specs) if c.interaction == "lowrank" else None

    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:
        batch = normalise_inputs(batch, self.config.input_norm)
        v_i, v_t = batch["image_emb"], batch["text_emb"]
        if self.interaction is None:
            return ModelOutput(logits=self.heads(self.trunk(torch.cat([v_i, v_t], dim=-1))))
        terms, _, object_logits = self.interaction(batch, v_i, v_t)
        if self.trunk is not None:
            terms = add_logits(self.heads(self.trunk(torch.cat([v_i, v_t], dim=-1))), terms)  # {task: [B, L]}
        return ModelOutput(logits=terms, aux_loss=self.interaction.object_loss(batch, object_logits))
