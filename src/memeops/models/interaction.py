"""Low-rank bilinear interaction between a caption view and the detector's object classes.

A cross-modal rule such as SynthMeme's ``hateful`` ("the pictured object is the one used to demean
the caption's target") is an *agreement* between the two modalities, which an additive fusion (a
gate, a sum, an MLP over a concatenation) can only memorise pair by pair. Hate-CLIPper's answer is
the feature-interaction matrix ``p_I p_Tᵀ``; this module is its low-rank form with each side made
narrow and meaningful first::

    o   = O(v_I)                          object-tag logits [B, C]  (C = the detector's classes)
    z   = Dropout(U · x_T) ⊙ (V · σ(o))   [B, r]                    (x_T: caption n-grams, or v_T)
    ŷ_t += W_t · z                        one small linear head per task, added to the model's logits
    aux = object_weight · BCE(o, tags)    tags: the detector's classes found in the image

Why each piece (measured on SynthMeme ``hateful``, docs/interaction.md):
- the object side is pinned to the detector's class space by ``aux``, so ``V`` learns a C × r table
  (which classes behave alike) instead of arbitrary image directions;
- the caption side reads character n-grams (:mod:`memeops.data.lexical`), where a named target is a
  few exact features; the CLIP sentence vector mostly encodes the caption's frame;
- rank r (default 4) is what generalises to unseen (caption target, object) pairs: a rank-r table
  fitted on the seen pairs fills in the held-out ones (matrix completion), a full table cannot.

Signals: the detector's classes (any detector on real memes) and the caption's characters. No
generator latent is used; SynthMeme's target identities and slur families stay evaluation-only.
"""

from __future__ import annotations

import math
from typing import Literal

import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import Tensor, nn

from memeops.models.base import MultiTaskHeads, TaskSpec


class InteractionFields(BaseModel):
    """Config fields of the interaction (mixed into a model's config class).

    ``lexical_dim`` and ``object_classes`` are data-fixed: the lexical input family sets them.
    """

    interaction: Literal["none", "lowrank"] = "none"
    lexical_dim: int = Field(0, ge=0, description="caption n-gram vocabulary size (set by the inputs)")
    object_classes: int = Field(0, ge=0, description="detector classes (set by the inputs)")
    rank: int = Field(4, ge=1, le=256)
    text_view: Literal["ngrams", "clip"] = "ngrams"  # "clip": U reads the CLIP text embedding instead
    object_hidden: int = Field(128, ge=1)
    object_dropout: float = Field(0.2, ge=0.0, lt=1.0)
    interaction_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    object_supervision: bool = True  # False: the object head is trained by the task losses only
    object_weight: float = Field(1.0, ge=0.0)

    def check_interaction_inputs(self) -> None:
        """Raise when a low-rank interaction is asked for without the lexical inputs behind it."""
        if self.interaction == "none":
            return
        if self.object_classes < 1:
            raise ValueError("interaction 'lowrank' needs object_classes: give the variant "
                             "`inputs: {lexical: {...}}` (the detector's classes and caption n-grams)")  # fmt: skip
        if self.text_view == "ngrams" and self.lexical_dim < 1:
            raise ValueError("interaction 'lowrank' with text_view 'ngrams' needs lexical_dim: give the variant "
                             "`inputs: {lexical: {...}}`")  # fmt: skip


class LowRankInteraction(nn.Module):
    """``(x_T, v_I) -> ({task: [B, L]} logit terms, z [B, r], object logits [B, C])``."""

    def __init__(self, cfg: InteractionFields, image_dim: int, text_dim: int, specs: list[TaskSpec]):
        super().__init__()
        self.cfg = cfg
        text_in = cfg.lexical_dim if cfg.text_view == "ngrams" else text_dim
        self.text_factor = nn.Linear(text_in, cfg.rank)  # U
        self.object_head = nn.Sequential(
            nn.Linear(image_dim, cfg.object_hidden), nn.ReLU(), nn.Dropout(cfg.object_dropout),
            nn.Linear(cfg.object_hidden, cfg.object_classes),
        )  # fmt: skip  # O
        self.object_factor = nn.Linear(cfg.object_classes, cfg.rank)  # V
        self.heads = MultiTaskHeads(cfg.rank, list(specs))  # W_t

    def text_input(self, batch: dict[str, Tensor], text_emb: Tensor) -> Tensor:
        if self.cfg.text_view == "clip":
            return text_emb
        if "caption_ngrams" not in batch:
            raise KeyError("the batch has no caption_ngrams: this model needs the lexical input family")
        # The n-gram rows are unit vectors over thousands of dims; sqrt(V) gives each dim roughly unit
        # scale, as normalise_inputs does for the embeddings: at unit-vector scale u = U·x starts ~50x
        # smaller than v, and the product z = u ⊙ v (whose gradients are each other) barely moves.
        x = batch["caption_ngrams"]
        return x * math.sqrt(x.shape[-1])

    def forward(self, batch: dict[str, Tensor], image_emb: Tensor, text_emb: Tensor) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        object_logits = self.object_head(image_emb)  # [B, C]
        u = F.dropout(self.text_factor(self.text_input(batch, text_emb)), self.cfg.interaction_dropout, self.training)
        z = u * self.object_factor(object_logits.sigmoid())  # [B, r]
        return self.heads(z), z, object_logits

    def object_loss(self, batch: dict[str, Tensor], object_logits: Tensor) -> Tensor | None:
        """``object_weight · BCE(o, tags)`` when supervised and the batch carries the detector's tags."""
        if not self.cfg.object_supervision or self.cfg.object_weight == 0 or "object_tags" not in batch:
            return None
        return self.cfg.object_weight * F.binary_cross_entropy_with_logits(object_logits.float(), batch["object_tags"].float())


def add_logits(base: dict[str, Tensor], extra: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per-task sum of two logit dicts with the same tasks."""
    return {task: logits + extra[task] for task, logits in base.items()}


def sum_losses(*losses: Tensor | None) -> Tensor | None:
    """The sum of the losses that are not None (None when all are)."""
    present = [loss for loss in losses if loss is not None]
    if not present:
        return None
    total = present[0]
    for loss in present[1:]:
        total = total + loss
    return total
