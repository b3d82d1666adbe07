"""GatedCLIP: per-modality projection heads, a learned scalar gate, a small classifier (papers.md).

Runs on frozen CLIP embeddings (ViT-B/32: 512-d image ``v_I`` and text ``v_T``)::

    h_I = P_I(v_I), h_T = P_T(v_T)            P(v) = Dropout(ReLU(W2 · Dropout(ReLU(W1 · v))))
    g   = σ(W_g · ReLU(W_c · [h_I; h_T]))     one scalar per example
    h   = g · h_I + (1 − g) · h_T
    ŷ_t = W_cls,t · Dropout(ReLU(W_h · h))    W_h shared by all tasks, one W_cls per task
    aux = align_weight · mean(1 − cos(h_I, h_T))

With one binary task and 512-d inputs this is 353,347 trainable parameters ("about 350K").

Ablation switches (config): ``fusion`` = "gate" | "fixed" (g ≡ 0.5, no gate parameters) |
"concat" (classifier sees [h_I; h_T], no gate); ``projection=False`` feeds the CLIP embeddings
straight into fusion (no projection heads, so the fused width is ``image_dim``); ``align=False``
drops the alignment term (``aux_loss`` is None).

Improvement switch (not the paper's model): ``interaction="lowrank"`` adds the low-rank caption ×
object interaction of :mod:`memeops.models.interaction` to every task's logits (``ŷ_t += W_t · z``) and
its object-tag loss to ``aux``. The scalar gate can only mix ``h_I`` and ``h_T`` additively, so it has no
term for "these two agree"; the interaction is that term (needs the lexical inputs).

Inputs: ``input_norm="unit_variance"`` (default) rescales the (unit-norm) cached embeddings to unit
variance per dimension first; no parameters, see :func:`memeops.models.base.normalise_inputs`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, model_validator
from torch import Tensor, nn

from memeops.models.base import InputNorm, ModelOutput, MultiTaskHeads, TaskSpec, normalise_inputs
from memeops.models.interaction import InteractionFields, LowRankInteraction, add_logits, sum_losses


class GatedCLIPConfig(InteractionFields):
    """Sizes and switches; defaults are the paper's model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_dim: int = 512
    text_dim: int = 512
    hidden: int = 256  # W1 rows
    proj_dim: int = 128  # W2 rows = width of h_I, h_T
    gate_hidden: int = 64  # W_c rows
    cls_hidden: int = 64  # W_h rows
    proj_dropout: float = 0.2
    cls_dropout: float = 0.3
    align_weight: float = 0.01
    fusion: Literal["gate", "fixed", "concat"] = "gate"
    projection: bool = True
    align: bool = True
    input_norm: InputNorm = "unit_variance"  # see memeops.models.base.normalise_inputs

    @model_validator(mode="after")
    def _raw_fusion_needs_equal_dims(self) -> GatedCLIPConfig:
        # Without projection heads h_I = v_I and h_T = v_T: mixing them (gate/fixed) or comparing
        # them (cosine alignment) only makes sense in one shared width.
        mixes_raw = self.fusion != "concat" or self.align
        if not self.projection and self.image_dim != self.text_dim and mixes_raw:
            raise ValueError("projection=False needs image_dim == text_dim (or concat fusion, no align)")
        self.check_interaction_inputs()
        return self


class ProjectionHead(nn.Module):
    """``[B, in_dim] -> [B, out_dim]``: two Linear+ReLU+Dropout blocks (W1 then W2)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, out_dim), nn.ReLU(), nn.Dropout(dropout),
        )  # fmt: skip

    def forward(self, v: Tensor) -> Tensor:
        return self.net(v)


class ScalarGate(nn.Module):
    """``h_I [B, D], h_T [B, D] -> g [B]`` in (0, 1); g → 1 means the example leans on the image."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, h_i: Tensor, h_t: Tensor) -> Tensor:
        return torch.sigmoid(self.net(torch.cat([h_i, h_t], dim=-1))).squeeze(-1)


class GatedCLIP(nn.Module):
    """GatedCLIP over cached CLIP embeddings, with one output head per task."""

    def __init__(self, config: GatedCLIPConfig, specs: list[TaskSpec]):
        super().__init__()
        self.config = c = config
        self.specs = list(specs)
        if c.projection:
            self.image_proj: nn.Module = ProjectionHead(c.image_dim, c.hidden, c.proj_dim, c.proj_dropout)
            self.text_proj: nn.Module = ProjectionHead(c.text_dim, c.hidden, c.proj_dim, c.proj_dropout)
            dim_i = dim_t = c.proj_dim
        else:
            self.image_proj = nn.Identity()
            self.text_proj = nn.Identity()
            dim_i, dim_t = c.image_dim, c.text_dim
        self.gate = ScalarGate(dim_i, c.gate_hidden) if c.fusion == "gate" else None
        self.fused_dim = dim_i + dim_t if c.fusion == "concat" else dim_i
        # W_h: shared trunk; the paper's single W_cls becomes one linear head per task.
        self.trunk = nn.Sequential(
            nn.Linear(self.fused_dim, c.cls_hidden), nn.ReLU(), nn.Dropout(c.cls_dropout)
        )  # [B, fused_dim] -> [B, cls_hidden]
        self.heads = MultiTaskHeads(c.cls_hidden, self.specs)
        self.interaction = LowRankInteraction(c, c.image_dim, c.text_dim, self.specs) if c.interaction == "lowrank" else None

    def fuse(self, h_i: Tensor, h_t: Tensor) -> tuple[Tensor, Tensor | None]:
        """``[B, D] x2 -> (h [B, fused_dim], g [B] or None for concat)``."""
        if self.config.fusion == "concat":
            return torch.cat([h_i, h_t], dim=-1), None
        if self.gate is not None:
            g = self.gate(h_i, h_t)
        else:  # "fixed": a plain average, the no-gate ablation
            g = h_i.new_full(h_i.shape[:1], 0.5)
        gc = g.unsqueeze(-1)  # [B, 1]
        return gc * h_i + (1.0 - gc) * h_t, g

    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:
        batch = normalise_inputs(batch, self.config.input_norm)
        h_i = self.image_proj(batch["image_emb"])  # [B, D]
        h_t = self.text_proj(batch["text_emb"])  # [B, D]
        h, g = self.fuse(h_i, h_t)
        logits = self.heads(self.trunk(h))  # {task: [B, num_labels]}
        aux = None
        if self.config.align and self.config.align_weight > 0:
            # Pulls the two projected spaces together so the gate mixes comparable vectors.
            aux = self.config.align_weight * (1.0 - F.cosine_similarity(h_i, h_t, dim=-1)).mean()
        if self.interaction is not None:  # the interaction reads the (normalised) CLIP embeddings themselves
            terms, _, object_logits = self.interaction(batch, batch["image_emb"], batch["text_emb"])
            logits = add_logits(logits, terms)
            aux = sum_losses(aux, self.interaction.object_loss(batch, object_logits))
        extras = {} if g is None else {"gate": g}
        return ModelOutput(logits=logits, aux_loss=aux, extras=extras)
