"""Multi-task plumbing shared by every model: task specs, heads, masked losses, probabilities.

Targets travel as tensors with missing labels encoded in-band, so one batch can mix sources that
annotate different tasks:
- single-label task: ``LongTensor[B]`` with :data:`IGNORE_INDEX` where the label is missing;
- multi-label task: ``FloatTensor[B, L]`` of 0/1, rows that are entirely :data:`MISSING_MULTI`
  (-1) are missing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IGNORE_INDEX = -100
MISSING_MULTI = -1.0


@dataclass(frozen=True)
class TaskSpec:
    """A task as a model sees it: name, kind and its ordered label list."""

    name: str
    kind: Literal["single", "multi"]
    labels: tuple[str, ...]

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def is_binary(self) -> bool:
        return self.kind == "single" and self.num_labels == 2


def task_specs(taxonomy: object, names: list[str]) -> list[TaskSpec]:
    """TaskSpecs for the named tasks, in the given order, from a memeops Taxonomy."""
    specs = []
    for name in names:
        task = taxonomy.task(name)  # type: ignore[attr-defined]
        specs.append(TaskSpec(task.name, task.kind, tuple(task.labels)))
    return specs


@dataclass
class ModelOutput:
    """What every model returns: per-task logits, an optional auxiliary loss, analysis tensors."""

    logits: dict[str, Tensor]
    aux_loss: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)  # e.g. {"gate": Tensor[B]}


class MultiTaskHeads(nn.Module):
    """One linear head per task: ``[B, in_dim] -> {task: [B, num_labels]}``."""

    def __init__(self, in_dim: int, specs: list[TaskSpec]):
        super().__init__()
        self.specs = list(specs)
        self.heads = nn.ModuleDict({s.name: nn.Linear(in_dim, s.num_labels) for s in self.specs})

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        return {name: head(features) for name, head in self.heads.items()}


def target_mask(target: Tensor, spec: TaskSpec) -> Tensor:
    """Bool[B]: which rows carry a label for this task."""
    if spec.kind == "single":
        return target != IGNORE_INDEX
    return (target != MISSING_MULTI).any(dim=-1)


def masked_task_loss(logits: Tensor, target: Tensor, spec: TaskSpec) -> tuple[Tensor, int]:
    """Mean loss over labelled rows (0 when none), and how many rows counted.

    Cross-entropy for single-label tasks, per-label binary cross-entropy for multi-label ones.
    """
    mask = target_mask(target, spec)
    n = int(mask.sum())
    if n == 0:
        return logits.sum() * 0.0, 0
    if spec.kind == "single":
        return F.cross_entropy(logits[mask].float(), target[mask]), n
    return F.binary_cross_entropy_with_logits(logits[mask].float(), target[mask].float()), n


def probabilities(logits: Tensor, spec: TaskSpec) -> Tensor:
    """Softmax over labels (single) or per-label sigmoid (multi)."""
    return logits.float().softmax(-1) if spec.kind == "single" else logits.float().sigmoid()


def count_trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def batch_targets(labels: list[dict[str, object]], specs: list[TaskSpec]) -> dict[str, Tensor]:
    """Encode a list of per-meme label dicts (task -> label | list | None) as target tensors."""
    out: dict[str, Tensor] = {}
    for spec in specs:
        if spec.kind == "single":
            idx = [spec.labels.index(d[spec.name]) if d.get(spec.name) is not None else IGNORE_INDEX for d in labels]
            out[spec.name] = torch.tensor(idx, dtype=torch.long)
        else:
            rows = []
            for d in labels:
                value = d.get(spec.name)
                if value is None:
                    rows.append([MISSING_MULTI] * spec.num_labels)
                else:
                    rows.append([1.0 if lab in value else 0.0 for lab in spec.labels])
            out[spec.name] = torch.tensor(rows, dtype=torch.float32).reshape(len(labels), spec.num_labels)
    return out


InputNorm = Literal["unit_variance", "none"]


def normalise_inputs(batch: dict[str, Any], mode: str, keys: tuple[str, ...] = ("image_emb", "text_emb")) -> dict[str, Any]:
    """A shallow copy of ``batch`` with the embedding tensors under ``keys`` rescaled.

    ``"unit_variance"``: L2-normalise each embedding and multiply by sqrt(D), so every dimension has
    roughly unit variance whatever the encoder's output norm. Why: the feature cache stores unit
    vectors (per-dimension scale ~1/sqrt(D) ≈ 0.06 at D = 256); through GatedCLIP's three ReLU layers
    at default init that signal all but vanished and the model learned hateful at test AUROC ~0.60
    where the same model on rescaled inputs learned it well (measured on SynthMeme, see docs).
    ``"none"``: the embeddings as given.
    """
    if mode == "none":
        return batch
    out = dict(batch)
    for key in keys:
        v = batch[key]
        out[key] = F.normalize(v, dim=-1) * math.sqrt(v.shape[-1])
    return out
