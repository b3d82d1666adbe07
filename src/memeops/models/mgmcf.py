"""MGMCF: Multi-Granular Multimodal Clue Fusion (object-level regions + global-local CAP blocks).

The public MGMCF release does not run and lacks its central block; this is a design from the
paper's description (papers.md), documented in ``docs/mgmcf.md`` with a diagram. Shapes below use
B memes, T text tokens, K regions, g patch grid, C region-CNN width, d model width, n context tokens.

Inputs (one batch dict, built by :mod:`memeops.data.mgmcf_inputs`)::

    image_emb      [B, Di]          global image feature (frozen CLIP image tower)
    text_emb       [B, Dt]          global text feature (CLIP text tower, or a HF text encoder)
    text_tokens    [B, T, Dk]       token states of the same text encoder
    text_mask      [B, T]   bool    True = a real token
    region_feats   [B, K, g*g, C]   frozen region-CNN features of each crop's g x g patches
    region_boxes   [B, K, 4]        normalised x0, y0, x1, y1
    region_scores  [B, K]           detector confidence (1 for grid cells)
    region_mask    [B, K]   bool    True = a kept region

Blocks:

1. **Object-level semantic mining**: the detector's top-K crops are resized and split into g x g
   patches and every patch is encoded by a frozen VGG-style CNN (:mod:`memeops.models.region_cnn`:
   the pipeline CLIP's VGG-style image tower, trained from scratch, by default; torchvision's
   VGG16 from a weights path for real data) -- cached like the released code's pre-extracted VGG
   features. :class:`RegionEncoder` (trained) gives each patch a learned 2-D positional embedding
   of its (row, column), pools over patches and adds an embedding of the box geometry (corners,
   size, area, score) -> one token per region ``[B, K, d]``.
2. **Global features**: image, text and text tokens projected to d; a learned type embedding per
   token kind (text / image / region).
3. **Global-local cross-modal interaction**: the global multimodal context (n learned queries plus
   a projection of [image; text]) and the local tokens (text tokens, the image token, region
   tokens) refine each other in N stacked :class:`CAPBlock` s: context <- attends to the locals,
   locals <- attend to the context; residuals and LayerNorm (post-norm) after each attention and
   feed-forward. The context's attention over the locals (mean over heads and queries) is
   returned as ``extras["attention"]`` ``[B, T + 1 + K]`` (layout: text tokens, image, regions).
4. **Heads**: multimodal (on the pooled context), text-only (on the text feature) and image-only
   (on the image feature with the mean of the region tokens), one linear head per task each. The
   prediction sums their softmax probabilities (as the released code; divided by the head count
   so it stays a distribution) or, with ``combine="logits"``, their logits.
5. **Dual-semantic guided contrastive loss**: in-batch InfoNCE between the text and image
   features in both directions at ``temperature``, weighted by ``contrastive_weight``.

Ablation switches (config): ``object_level=False`` (no region tokens: global features only),
``interaction="concat"`` (an MLP on concatenated features instead of CAP blocks),
``contrastive=False``, ``unimodal_heads=False``. Region-source ablations (grid cells, a degraded
detector) are data-side: see ``memeops.vision.regions``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from memeops.models.base import InputNorm, ModelOutput, MultiTaskHeads, TaskSpec, normalise_inputs

BOX_FEATURES = 8  # x0, y0, x1, y1, w, h, area, score


class MGMCFConfig(BaseModel):
    """Sizes, input layout and ablation switches."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # input widths and layout (filled from the data by the training code)
    image_dim: int = 512
    text_dim: int = 512
    token_dim: int = 512
    region_dim: int = 512  # width of the cached region-patch CNN features
    text_len: int = 24  # T: text tokens per meme (padded / truncated by the inputs)
    max_regions: int = 4  # K
    patch_grid: int = Field(1, ge=1)  # g: each region crop was split into g x g patches
    region_class_vocab: int = Field(0, ge=0)  # detector class ids seen in the data (0: none)
    # widths
    d_model: int = 64
    heads: int = 4
    cap_layers: int = Field(2, ge=1)
    context_tokens: int = Field(4, ge=1)
    ffn_mult: int = 2
    dropout: float = 0.1
    head_dropout: float = 0.2
    # losses and combination
    contrastive: bool = True
    contrastive_weight: float = 0.1
    temperature: float = 0.5  # the released code's value
    combine: Literal["probs", "logits"] = "probs"
    # object tags: add an embedding of the detector's class to each region token (Oscar-style);
    # needs region_class_vocab > 0 (a detector view), ignored otherwise
    region_class_embedding: bool = False
    # ablations
    object_level: bool = True
    interaction: Literal["cap", "concat"] = "cap"
    unimodal_heads: bool = True
    input_norm: InputNorm = "unit_variance"

    @model_validator(mode="after")
    def _check(self) -> MGMCFConfig:
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        if self.temperature <= 0:
            raise ValueError("temperature must be positive")
        return self

    @property
    def local_tokens(self) -> int:
        """Length of the local token sequence: T text tokens, 1 image token, K regions."""
        return self.text_len + 1 + (self.max_regions if self.object_level else 0)


# --------------------------------------------------------------------------- region tokens


def box_features(boxes: Tensor, scores: Tensor) -> Tensor:
    """``[B, K, 4]`` normalised xyxy + ``[B, K]`` scores -> ``[B, K, 8]`` (corners, w, h, area, score)."""
    w = (boxes[..., 2] - boxes[..., 0]).clamp_min(0)
    h = (boxes[..., 3] - boxes[..., 1]).clamp_min(0)
    return torch.cat([boxes, w[..., None], h[..., None], (w * h)[..., None], scores[..., None]], dim=-1)


class RegionEncoder(nn.Module):
    """Object-level semantic mining on top of the region CNN's patch features.

    ``feats [B, K, g*g, C]`` (the frozen VGG-style CNN's features of each crop's g x g patches,
    row-major), ``boxes [B, K, 4]``, ``scores [B, K]`` -> region tokens ``[B, K, d]``: each patch
    projected to d plus a learned 2-D positional embedding of its (row, column), averaged over
    the patches, plus an embedding of the box geometry, then LayerNorm.
    """

    def __init__(self, region_dim: int, patch_grid: int, d_model: int, class_vocab: int = 0):
        super().__init__()
        self.grid = patch_grid
        # index 0 = no class (grid cells, empty slots, ids outside the vocabulary)
        self.class_emb = nn.Embedding(class_vocab + 1, d_model) if class_vocab > 0 else None
        self.patch_proj = nn.Linear(region_dim, d_model)
        self.row_pos = nn.Parameter(torch.zeros(patch_grid, d_model))
        self.col_pos = nn.Parameter(torch.zeros(patch_grid, d_model))
        self.box_proj = nn.Sequential(nn.Linear(BOX_FEATURES, d_model), nn.ReLU(), nn.Linear(d_model, d_model))
        self.norm = nn.LayerNorm(d_model)
        nn.init.normal_(self.row_pos, std=0.02)
        nn.init.normal_(self.col_pos, std=0.02)

    def forward(self, feats: Tensor, boxes: Tensor, scores: Tensor, classes: Tensor | None = None) -> Tensor:
        b, k, p, _ = feats.shape
        if p != self.grid**2:
            raise ValueError(f"region features carry {p} patches per region; the model expects {self.grid**2}")
        x = self.patch_proj(feats.float()).view(b, k, self.grid, self.grid, -1)
        x = x + self.row_pos[None, None, :, None, :] + self.col_pos[None, None, None, :, :]
        pooled = x.mean(dim=(2, 3))  # [B, K, d]
        pooled = pooled + self.box_proj(box_features(boxes.float(), scores.float()))
        if self.class_emb is not None and classes is not None:
            vocab = self.class_emb.num_embeddings - 1
            ids = torch.where((classes >= 0) & (classes < vocab), classes + 1, torch.zeros_like(classes))
            pooled = pooled + self.class_emb(ids)
        return self.norm(pooled)


# --------------------------------------------------------------------------- CAP block


class FeedForward(nn.Sequential):
    def __init__(self, d: int, mult: int, dropout: float):
        super().__init__(nn.Linear(d, d * mult), nn.GELU(), nn.Dropout(dropout), nn.Linear(d * mult, d))


class CAPBlock(nn.Module):
    """Cross-modal Attention Promotion: global context <-> local tokens, both directions.

    ``context [B, n, d]``, ``local [B, L, d]``, ``local_mask [B, L]`` (True = valid) ->
    refined ``(context, local)`` and the context's attention over the locals ``[B, n, L]``
    (mean over heads; each row sums to one over the valid locals).
    """

    def __init__(self, d: int, heads: int, ffn_mult: int, dropout: float, update_local: bool = True):
        super().__init__()
        self.ctx_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.ctx_norm1, self.ctx_norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ctx_ffn = FeedForward(d, ffn_mult, dropout)
        # The last block's refined locals would be read by nothing: it has no local half at all.
        self.update_local = update_local
        if update_local:
            self.loc_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
            self.loc_norm1, self.loc_norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.loc_ffn = FeedForward(d, ffn_mult, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, context: Tensor, local: Tensor, local_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # 1. the global context gathers clues from text tokens, the image and the regions
        gathered, weights = self.ctx_attn(context, local, local, key_padding_mask=~local_mask,
                                          need_weights=True, average_attn_weights=True)  # fmt: skip
        context = self.ctx_norm1(context + self.drop(gathered))
        context = self.ctx_norm2(context + self.drop(self.ctx_ffn(context)))
        if not self.update_local:
            return context, local, weights
        # 2. every local token is promoted by the (now multimodal) context
        promoted, _ = self.loc_attn(local, context, context, need_weights=False)
        local = self.loc_norm1(local + self.drop(promoted))
        local = self.loc_norm2(local + self.drop(self.loc_ffn(local)))
        return context, local, weights


# --------------------------------------------------------------------------- the model


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over axis 1 of ``x [B, L, d]`` where ``mask [B, L]``; zeros for rows with no valid entry."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def _head_mlp(d_in: int, d: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d), nn.ReLU(), nn.Dropout(dropout))


def info_nce(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """Symmetric in-batch InfoNCE between paired rows of ``a`` and ``b`` ``[B, d]`` (cosine / T)."""
    logits = F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def combine_heads(per_head: list[dict[str, Tensor]], specs: list[TaskSpec], mode: str) -> dict[str, Tensor]:
    """Sum the heads per task. ``probs``: mean of softmax (single) / sigmoid (multi) returned as
    log-probabilities / log-odds, so cross-entropy on them is the mixture's NLL and
    :func:`~memeops.models.base.probabilities` gives the mean probability back. ``logits``: sum."""
    if len(per_head) == 1 or mode == "logits":
        return {s.name: torch.stack([h[s.name] for h in per_head]).sum(0) for s in specs}
    out = {}
    for spec in specs:
        stacked = torch.stack([h[spec.name].float() for h in per_head])  # [H, B, L]
        if spec.kind == "single":
            p = stacked.softmax(-1).mean(0)
            out[spec.name] = p.clamp_min(1e-7).log()
        else:
            p = stacked.sigmoid().mean(0).clamp(1e-6, 1 - 1e-6)
            out[spec.name] = torch.log(p) - torch.log1p(-p)
    return out


class MGMCF(nn.Module):
    """See the module docstring; ``forward(batch) -> ModelOutput``."""

    def __init__(self, cfg: MGMCFConfig, specs: list[TaskSpec]):
        super().__init__()
        self.cfg = cfg
        self.specs = list(specs)
        d = cfg.d_model
        self.image_proj = nn.Sequential(nn.Linear(cfg.image_dim, d), nn.LayerNorm(d))
        self.text_proj = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.LayerNorm(d))
        self.token_proj = nn.Sequential(nn.Linear(cfg.token_dim, d), nn.LayerNorm(d))
        vocab = cfg.region_class_vocab if cfg.region_class_embedding else 0
        self.regions = RegionEncoder(cfg.region_dim, cfg.patch_grid, d, vocab) if cfg.object_level else None
        self.type_emb = nn.Parameter(torch.zeros(3, d))  # text token, image, region
        nn.init.normal_(self.type_emb, std=0.02)
        if cfg.interaction == "cap":
            self.context_queries = nn.Parameter(torch.randn(cfg.context_tokens, d) * 0.02)
            self.context_init = nn.Sequential(nn.Linear(2 * d, d), nn.ReLU(), nn.Linear(d, d))
            self.blocks = nn.ModuleList(
                CAPBlock(d, cfg.heads, cfg.ffn_mult, cfg.dropout, update_local=i < cfg.cap_layers - 1)
                for i in range(cfg.cap_layers)
            )
            self.fused_norm = nn.LayerNorm(d)
            fused_in = d
        else:  # concatenation: [image; text; mean text tokens; mean regions]
            fused_in = d * (4 if cfg.object_level else 3)
        self.fused_mlp = _head_mlp(fused_in, d, cfg.head_dropout)
        self.fused_heads = MultiTaskHeads(d, self.specs)
        if cfg.unimodal_heads:
            self.text_mlp = _head_mlp(d, d, cfg.head_dropout)
            self.text_heads = MultiTaskHeads(d, self.specs)
            self.image_mlp = _head_mlp(d * (2 if cfg.object_level else 1), d, cfg.head_dropout)
            self.image_heads = MultiTaskHeads(d, self.specs)

    # -- pieces -----------------------------------------------------------------------------------

    def _local_tokens(self, batch: dict[str, Tensor], image: Tensor, regions: Tensor | None) -> tuple[Tensor, Tensor]:
        """``[B, L, d]`` local tokens (text tokens, image, regions) and their validity mask."""
        tokens = self.token_proj(batch["text_tokens"].float()) + self.type_emb[0]
        mask = batch["text_mask"].bool()
        parts = [tokens, (image + self.type_emb[1]).unsqueeze(1)]
        masks = [mask, torch.ones_like(mask[:, :1])]
        if regions is not None:
            parts.append(regions + self.type_emb[2])
            masks.append(batch["region_mask"].bool())
        return torch.cat(parts, dim=1), torch.cat(masks, dim=1)

    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:
        cfg = self.cfg
        batch = normalise_inputs(batch, cfg.input_norm)
        image = self.image_proj(batch["image_emb"].float())  # [B, d]
        text = self.text_proj(batch["text_emb"].float())  # [B, d]
        regions = None
        region_mean = None
        if self.regions is not None:
            regions = self.regions(batch["region_feats"], batch["region_boxes"], batch["region_scores"],
                                   batch.get("region_classes"))  # [B, K, d]
            region_mean = _masked_mean(regions, batch["region_mask"].bool())
        extras: dict[str, Tensor] = {}

        if cfg.interaction == "cap":
            local, local_mask = self._local_tokens(batch, image, regions)
            context = self.context_queries.unsqueeze(0) + self.context_init(torch.cat([image, text], -1)).unsqueeze(1)
            weights = None
            for block in self.blocks:
                context, local, weights = block(context, local, local_mask)
            fused = self.fused_norm(context.mean(1))
            extras["attention"] = weights.mean(1)  # type: ignore[union-attr]  # [B, L], last block
        else:
            token_mean = _masked_mean(self.token_proj(batch["text_tokens"].float()), batch["text_mask"].bool())
            parts = [image, text, token_mean] + ([region_mean] if region_mean is not None else [])
            fused = torch.cat(parts, dim=-1)
        per_head = [self.fused_heads(self.fused_mlp(fused))]
        if cfg.unimodal_heads:
            per_head.append(self.text_heads(self.text_mlp(text)))
            image_view = torch.cat([image, region_mean], -1) if region_mean is not None else image
            per_head.append(self.image_heads(self.image_mlp(image_view)))
        logits = combine_heads(per_head, self.specs, cfg.combine)

        aux = None
        if cfg.contrastive and cfg.contrastive_weight > 0 and self.training and image.shape[0] > 1:
            image_side = image if region_mean is None else image + region_mean
            aux = cfg.contrastive_weight * info_nce(text, image_side, cfg.temperature)
        return ModelOutput(logits=logits, aux_loss=aux, extras=extras)


def attention_layout(cfg: MGMCFConfig) -> dict[str, tuple[int, int]]:
    """Where each token kind sits in ``extras["attention"]``: name -> (start, stop)."""
    layout = {"text": (0, cfg.text_len), "image": (cfg.text_len, cfg.text_len + 1)}
    if cfg.object_level:
        layout["regions"] = (cfg.text_len + 1, cfg.text_len + 1 + cfg.max_regions)
    return layout
