"""The kNN index of a retrieval model (:mod:`memeops.models.retrieval`), built after training.

:func:`memeops.training.experiment.train_variant` calls :func:`build_retrieval_index` once the fit
has selected its weights (on VAL, with the classifier alone: the index is empty during fit) and
before any evaluation split is scored. The index is the TRAIN split as the model embeds it
without augmentation (no flipped images), with the TRAIN labels; it lives in the model's buffers,
so the saved model folder carries it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from memeops.models.base import TaskSpec
from memeops.training.inference import make_loader
from memeops.training.optim import resolve_device, to_device
from memeops.training.seeding import make_generator


@torch.no_grad()
def build_retrieval_index(model: nn.Module, dataset: Any, specs: Sequence[TaskSpec], device: str | torch.device,
                          batch_size: int = 256) -> int:  # fmt: skip
    """Embed ``dataset`` (eval mode, no grad, in dataset order) with ``model.embed`` and fill the
    model's index with the embeddings and the single-label tasks' targets; returns the index size.
    Leaves the model in eval mode on ``device``. Draws nothing from the global RNG."""
    device = resolve_device(device) if isinstance(device, str) else device
    model.to(device).eval()
    loader = make_loader(dataset, batch_size, shuffle=False, generator=make_generator(0), collate_fn=None,
                         num_workers=0, device=device)  # fmt: skip
    embeddings: list[Tensor] = []
    targets: dict[str, list[Tensor]] = {s.name: [] for s in specs if s.kind == "single"}
    for batch in loader:
        batch = to_device(batch, device)
        embeddings.append(model.embed(batch).float().cpu())
        batch_targets = batch.get("targets") or {}
        for name, parts in targets.items():
            if name in batch_targets:
                parts.append(batch_targets[name].cpu())
    if not embeddings:
        raise ValueError("the retrieval index needs at least one TRAIN meme")
    n = sum(len(e) for e in embeddings)
    # a task whose targets some batch lacked counts as unlabelled throughout (build_index fills IGNORE_INDEX)
    labels = {name: torch.cat(parts) for name, parts in targets.items() if parts and sum(map(len, parts)) == n}
    model.build_index(torch.cat(embeddings), labels)
    return n
