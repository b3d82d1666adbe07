"""Retrieval: a classifier plus kNN over the TRAINING set's fused embeddings (after RGCL / RA-HMD).

RGCL (Mei et al., ACL 2024) trains the fused hidden state with a retrieval-guided contrastive loss so
that memes of one label cluster; RA-HMD then predicts from the classifier and the labels of the
nearest training memes. Here, on cached CLIP embeddings with the concat trunk and the optional
low-rank interaction of :mod:`memeops.models.interaction`::

    h   = Dropout(ReLU(W_h · [v_I; v_T]))          the concat/bilinear trunk
    f   = [h; z]                                   z: the interaction's z (f = h when interaction="none")
    e   = normalize(W_e · f)                       the retrieval embedding [B, embed_dim]
    ŷ_t = W_cls,t · h + W_t · z                    the classifier (as Bilinear)
    aux = object loss (as Bilinear) + contrastive_weight · mean_t L_t

``L_t``, per single-label task t with labels in the batch (unlabelled rows skipped), s_ij = e_i·e_j / τ_c
(τ_c = ``contrastive_temperature``), P(i) the other rows with i's label, N(i) those with another::

    L_t  = mean_{i: P(i) ≠ ∅} mean_{p ∈ P(i)} −log( exp(s_ip) / (exp(s_ip) + Σ_{n ∈ N(i)} w_in · exp(s_in)) )
    w_in = |N(i)| · softmax_{n ∈ N(i)}(s_in)      (no gradient through w)

i.e. supervised contrastive with one positive per term (every in-batch same-label row plays RGCL's
pseudo-gold positive) and hardness-weighted negatives (weights average 1; the most similar
other-label rows, RGCL's hard negatives, count most). Only the batch's labels are used.

Prediction (eval mode, ``retrieval=True``, non-empty index): the index holds the TRAIN memes'
embeddings and labels (:meth:`Retrieval.build_index`, filled after training by
:func:`memeops.training.retrieval_index.build_retrieval_index`). Per single-label task, over the
k most similar index rows labelled for t (cosine similarity c, τ = ``temperature``,
α = ``retrieval_weight``)::

    q_t = Σ_{j ∈ kNN} softmax_j(c_j / τ) · onehot(y_j)
    p_t = (1 − α) · softmax(ŷ_t) + α · q_t,   returned as logits log(max(p_t, 1e-8))

so a downstream softmax gives p_t back. Multi-label tasks: the classifier alone. In training mode
and with an empty index (during fit: model selection on VAL uses the classifier alone) the logits are
ŷ_t. ``retrieval=False`` is the "without retrieval" ablation (the contrastive loss stays);
``contrastive=False`` drops the contrastive term. The index is part of the state dict (buffers
resized on load), so a served model folder carries it.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field, model_validator
from torch import Tensor, nn

from memeops.models.base import IGNORE_INDEX, InputNorm, ModelOutput, MultiTaskHeads, TaskSpec, normalise_inputs
from memeops.models.interaction import InteractionFields, LowRankInteraction, add_logits, sum_losses

INDEX_BUFFERS = ("index_embeddings", "index_labels")


class RetrievalConfig(InteractionFields):
    """Sizes and switches; the interaction is on by default (``interaction="lowrank"``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_dim: int = 512
    text_dim: int = 512
    hidden: int = 128
    dropout: float = 0.5
    interaction: Literal["none", "lowrank"] = "lowrank"
    input_norm: InputNorm = "unit_variance"
    embed_dim: int = Field(64, ge=1)
    k: int = Field(8, ge=1, description="neighbours per query")
    temperature: float = Field(0.1, gt=0.0, description="kNN softmax over cosine similarities")
    contrastive_weight: float = Field(0.5, ge=0.0)
    contrastive_temperature: float = Field(0.1, gt=0.0)
    retrieval_weight: float = Field(0.5, ge=0.0, le=1.0, description="α: weight of the kNN distribution")
    retrieval: bool = True  # False: the classifier alone at prediction time
    contrastive: bool = True  # False: no contrastive term in aux

    @model_validator(mode="after")
    def _inputs_present(self) -> RetrievalConfig:
        self.check_interaction_inputs()
        return self


def contrastive_loss(e: Tensor, labels: Tensor, temperature: float) -> Tensor | None:
    """The hardness-weighted supervised contrastive loss ``L_t`` above (e: unit rows [B, E], labels
    long [B] with IGNORE_INDEX where missing); None when no labelled row has a positive."""
    keep = labels != IGNORE_INDEX
    e, y = e[keep].float(), labels[keep]
    if len(y) < 2:
        return None
    s = e @ e.T / temperature  # [n, n]
    same = y[:, None] == y[None, :]
    eye = torch.eye(len(y), dtype=torch.bool, device=e.device)
    pos, neg = same & ~eye, ~same
    anchors = pos.any(1)
    if not anchors.any():
        return None
    n_neg = neg.sum(1, keepdim=True)  # [n, 1]
    has_neg = n_neg > 0
    # a row without negatives gets finite placeholders (all -inf would give NaN gradients), then -inf below
    neg_s = torch.where(has_neg, s.masked_fill(~neg, float("-inf")), torch.zeros_like(s))
    log_w = (torch.log_softmax(neg_s, dim=1) + n_neg.clamp_min(1).log()).detach()  # log w_in
    lse_neg = torch.logsumexp(log_w + neg_s, dim=1, keepdim=True)  # log Σ_n w_in exp(s_in)
    lse_neg = torch.where(has_neg, lse_neg, torch.full_like(lse_neg, float("-inf")))
    log_prob = s - torch.logaddexp(s, lse_neg)  # [n, n]: −term for each (i, p)
    per_anchor = -(log_prob.masked_fill(~pos, 0.0).sum(1)) / pos.sum(1).clamp_min(1)
    return per_anchor[anchors].mean()


class Retrieval(nn.Module):
    """Concat trunk (+ low-rank interaction), one head per task, and a kNN index over TRAIN embeddings."""

    def __init__(self, config: RetrievalConfig, specs: list[TaskSpec]):
        super().__init__()
        self.config = c = config
        self.specs = list(specs)
        self.single = [s for s in self.specs if s.kind == "single"]  # index_labels' columns, in spec order
        self.trunk = nn.Sequential(nn.Linear(c.image_dim + c.text_dim, c.hidden), nn.ReLU(), nn.Dropout(c.dropout))
        self.heads = MultiTaskHeads(c.hidden, self.specs)
        self.interaction = LowRankInteraction(c, c.image_dim, c.text_dim, self.specs) if c.interaction == "lowrank" else None
        fused = c.hidden + (c.rank if self.interaction is not None else 0)
        self.embedding = nn.Linear(fused, c.embed_dim)  # W_e
        self.register_buffer("index_embeddings", torch.zeros(0, c.embed_dim))
        self.register_buffer("index_labels", torch.zeros(0, len(self.single), dtype=torch.long))

    # ------------------------------------------------------------------ encoder and classifier

    def _encode(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], Tensor, Tensor | None]:
        """``(classifier logits {task: [B, L]}, e [B, embed_dim], object logits or None)``."""
        batch = normalise_inputs(batch, self.config.input_norm)
        v_i, v_t = batch["image_emb"], batch["text_emb"]
        h = self.trunk(torch.cat([v_i, v_t], dim=-1))
        logits = self.heads(h)
        object_logits = None
        f = h
        if self.interaction is not None:
            terms, z, object_logits = self.interaction(batch, v_i, v_t)
            logits = add_logits(logits, terms)
            f = torch.cat([h, z], dim=-1)
        return logits, F.normalize(self.embedding(f), dim=-1), object_logits

    def embed(self, batch: dict[str, Any]) -> Tensor:
        """The retrieval embedding e ``[B, embed_dim]`` (unit rows) of a batch."""
        return self._encode(batch)[1]

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        logits, e, object_logits = self._encode(batch)
        aux = None
        if self.interaction is not None:
            aux = self.interaction.object_loss(batch, object_logits)
        aux = sum_losses(aux, self._contrastive(e, batch.get("targets") or {}))
        if not self.training and self.config.retrieval and len(self.index_embeddings):
            logits = self._mix(logits, e)
        return ModelOutput(logits=logits, aux_loss=aux)

    def _contrastive(self, e: Tensor, targets: dict[str, Tensor]) -> Tensor | None:
        """``contrastive_weight · mean_t L_t`` over the single-label tasks the batch labels; a zero
        that still reaches W_e when no task counts or the term is switched off (every parameter in
        the graph: DDP without find_unused_parameters). None for a batch without targets (serving)."""
        if not targets:
            return None
        c = self.config
        losses = []
        if c.contrastive and c.contrastive_weight > 0:
            for spec in self.single:
                loss = contrastive_loss(e, targets[spec.name], c.contrastive_temperature) if spec.name in targets else None
                if loss is not None:
                    losses.append(loss)
        if not losses:
            return e.sum() * 0.0
        return c.contrastive_weight * torch.stack(losses).mean()

    # ------------------------------------------------------------------ the index

    @torch.no_grad()
    def build_index(self, embeddings: Tensor, targets: dict[str, Tensor]) -> None:
        """Fill the index: ``embeddings`` [N, embed_dim] (re-normalised), ``targets`` {task: long [N]}
        as the datasets encode them (a single-label task absent from ``targets`` is unlabelled)."""
        n = len(embeddings)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.config.embed_dim:
            raise ValueError(f"index embeddings must be [N, {self.config.embed_dim}], got {tuple(embeddings.shape)}")
        device = self.index_embeddings.device
        columns = []
        for spec in self.single:
            col = targets.get(spec.name)
            col = torch.full((n,), IGNORE_INDEX, dtype=torch.long) if col is None else col.reshape(n).long()
            columns.append(col.to(device))
        labels = torch.stack(columns, dim=1) if columns else torch.zeros(n, 0, dtype=torch.long, device=device)
        self.index_embeddings = F.normalize(embeddings.detach().float(), dim=-1).to(device)
        self.index_labels = labels

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # N is data-dependent: take the incoming index's shape, so build_model + load_state_dict(strict=True)
        # restores a served model with its index.
        for name in INDEX_BUFFERS:
            incoming = state_dict.get(prefix + name)
            if isinstance(incoming, Tensor):
                current = self._buffers[name]
                self._buffers[name] = current.new_zeros(incoming.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def knn_distribution(self, e: Tensor, column: int, num_labels: int) -> Tensor | None:
        """``q_t`` [B, L] from the k nearest index rows labelled for the task; None when none is."""
        labels = self.index_labels[:, column]
        valid = labels != IGNORE_INDEX
        n_valid = int(valid.sum())
        if n_valid == 0:
            return None
        sims = (e.float() @ self.index_embeddings.T).masked_fill(~valid[None, :], float("-inf"))  # [B, N]
        top, idx = sims.topk(min(self.config.k, n_valid), dim=1)  # [B, k]
        weights = torch.softmax(top / self.config.temperature, dim=1)
        q = weights.new_zeros(len(e), num_labels)
        return q.scatter_add_(1, labels[idx], weights)

    def _mix(self, logits: dict[str, Tensor], e: Tensor) -> dict[str, Tensor]:
        """Each single-label task's logits become ``log p_t`` (module docstring)."""
        alpha = self.config.retrieval_weight
        out = dict(logits)
        for column, spec in enumerate(self.single):
            q = self.knn_distribution(e, column, spec.num_labels)
            if q is None:
                continue
            p = (1.0 - alpha) * logits[spec.name].float().softmax(-1) + alpha * q
            out[spec.name] = p.clamp_min(1e-8).log()
        return out
