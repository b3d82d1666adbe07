"""Data-parallel training on the engine PyTorch ships: ``torch.distributed`` + DDP, nothing home-made.

Launch any training entry point with ``torchrun`` (or ``accelerate launch``, which sets the same
environment variables); :func:`memeops.training.fit` notices ``WORLD_SIZE > 1`` and calls
:func:`init_from_env`, which initialises the default process group (NCCL on CUDA, gloo on CPU)
unless one is already initialised. See ``docs/ddp.md``.

Conventions the trainer relies on (and that make a DDP run match a one-process run):

* **the global batch is** ``TrainConfig.batch_size``: each optimizer step consumes one batch of
  the same seeded shuffle every rank draws, split into ``world_size`` contiguous pieces
  (:func:`shard_batch`; sizes differ by at most one). The per-rank batch is therefore about
  ``batch_size / world_size``, and steps per epoch, the LR schedule and the loss are those of a
  one-process run with ``batch_size``;
* only rank 0 (:attr:`DistContext.is_main`) touches the checkpoint folder, calls the callbacks
  (MLflow), logs epochs and shows progress bars; resume state and the final best weights are
  broadcast from it, so other nodes need no shared file system.

Only torch is imported: this runs on a bare GPU box.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)

FIND_UNUSED_ENV = "MEMEOPS_DDP_FIND_UNUSED"
"""Set to 1 for models whose forward leaves some trainable parameters out of the loss (DDP's
``find_unused_parameters=True``; slower, so off by default)."""


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a (possibly one-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False  # this context initialised the process group (so cleanup() ends it)

    @property
    def enabled(self) -> bool:
        """More than one process: DDP wrapping, sharding and collectives are on."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files, logs and calls callbacks."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: ``cuda:<local_rank>`` when training on CUDA under DDP, else ``device``."""
        if self.enabled and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device


SINGLE = DistContext()
"""The one-process context: everything distributed is a no-op."""


def env_world_size() -> int:
    """``WORLD_SIZE`` as set by torchrun / accelerate launch (1 when not launched by one)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init_from_env(device: torch.device | str = "cpu", timeout_s: float | None = None) -> DistContext:
    """The context for this process, initialising the default process group when needed.

    * a process group already initialised (by the caller, accelerate, a test): it is used as is;
    * ``WORLD_SIZE > 1`` (torchrun / accelerate launch): ``init_process_group("env://")`` with
      NCCL when ``device`` is CUDA, gloo otherwise; on CUDA ``cuda:<LOCAL_RANK>`` is made current;
    * otherwise: :data:`SINGLE`.
    """
    device = torch.device(device)
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        fallback = rank % max(1, torch.cuda.device_count()) if device.type == "cuda" else 0  # e.g. mp.spawn
        local = int(os.environ.get("LOCAL_RANK", fallback))
        return DistContext(rank, world, local, dist.get_backend(), owns_group=False)
    world = env_world_size()
    if world <= 1:
        return SINGLE
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(local)  # NCCL and the *_object collectives use the current device
    kwargs: dict[str, Any] = {"backend": backend, "init_method": "env://"}
    if timeout_s is not None:
        from datetime import timedelta

        kwargs["timeout"] = timedelta(seconds=timeout_s)
    dist.init_process_group(**kwargs)
    ctx = DistContext(dist.get_rank(), dist.get_world_size(), local, backend, owns_group=True)
    logger.info(
        "process group up: rank %d/%d, local rank %d, backend %s", ctx.rank, ctx.world_size, local, backend
    )
    return ctx


def cleanup(ctx: DistContext | None = None) -> None:
    """Destroy the default process group (only one this module created, unless ``ctx`` is None)."""
    if dist.is_available() and dist.is_initialized() and (ctx is None or ctx.owns_group):
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


# --------------------------------------------------------------------------- sharding


def shard_sizes(n: int, world_size: int) -> list[int]:
    """Sizes of the ``world_size`` contiguous pieces of ``n`` items (``numpy.array_split`` rule)."""
    base, extra = divmod(n, world_size)
    return [base + (1 if r < extra else 0) for r in range(world_size)]


def shard_batch(batch: Sequence[int], rank: int, world_size: int) -> list[int]:
    """Rank ``rank``'s contiguous piece of one global batch (possibly empty when ``len < world_size``)."""
    sizes = shard_sizes(len(batch), world_size)
    start = sum(sizes[:rank])
    return list(batch[start : start + sizes[rank]])


def shard_batches(batches: Sequence[Sequence[int]], rank: int, world_size: int) -> list[list[int]]:
    """Rank ``rank``'s piece of every global batch, in order. Pieces are disjoint across ranks and
    together cover every batch exactly; every rank gets the same number of steps."""
    return [shard_batch(b, rank, world_size) for b in batches]


def block_range(n: int, rank: int, world_size: int) -> range:
    """Rank ``rank``'s contiguous block of ``range(n)`` (for sharding whole evaluation batches)."""
    sizes = shard_sizes(n, world_size)
    start = sum(sizes[:rank])
    return range(start, start + sizes[rank])


class ShardedBatchSampler(Sampler[list[int]]):
    """Wraps a *global* batch sampler: yields this rank's piece of each global batch.

    Every rank wraps an identically seeded sampler, so all draw the same global batches; each
    yields one piece per global batch, so all ranks take the same number of optimizer steps. A
    rank whose piece is empty (a last batch smaller than the world) gets the batch's first index
    as a stand-in; the trainer weighs that piece 0 (see :meth:`piece_size`), so it only keeps the
    gradient all-reduce in step.
    """

    def __init__(self, batch_sampler: Any, rank: int, world_size: int):
        self.batch_sampler, self.rank, self.world_size = batch_sampler, rank, world_size

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batch_sampler:
            piece = shard_batch(batch, self.rank, self.world_size)
            yield piece if piece else list(batch[:1])

    def piece_size(self, global_size: int) -> int:
        """How many of a ``global_size`` batch's items are this rank's (0: it got a stand-in)."""
        return shard_sizes(global_size, self.world_size)[self.rank]


class BlockBatchSampler(Sampler[list[int]]):
    """This rank's contiguous block of *whole* batches of a sequential batch sampler: evaluation
    sees the one-process batches, and concatenating the ranks' outputs in rank order gives
    dataset order."""

    def __init__(self, batch_sampler: Any, rank: int, world_size: int):
        self.batch_sampler, self.rank, self.world_size = batch_sampler, rank, world_size
        self.indices = block_range(len(batch_sampler), rank, world_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[list[int]]:
        for i, batch in enumerate(self.batch_sampler):
            if i in self.indices:
                yield list(batch)


# --------------------------------------------------------------------------- collectives


def all_reduce_sum(value: Tensor, ctx: DistContext) -> Tensor:
    """Sum of ``value`` over ranks (in place; returns it). No-op in one process."""
    if ctx.enabled:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def all_reduce_mean(value: Tensor | float, ctx: DistContext) -> Tensor | float:
    """Mean over ranks: a tensor is reduced in place (on its own device), a float round-trips."""
    if not ctx.enabled:
        return value
    if isinstance(value, Tensor):
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value.div_(ctx.world_size)
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device(ctx))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / ctx.world_size


def broadcast_object(obj: Any, ctx: DistContext, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (pickled; tensors should be on CPU)."""
    if not ctx.enabled:
        return obj
    box = [obj if ctx.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``obj``, in rank order (pickled)."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_module(module: nn.Module, ctx: DistContext, src: int = 0) -> None:
    """Copy ``module``'s parameters and buffers from rank ``src`` (in place, on their devices)."""
    if not ctx.enabled:
        return
    with torch.no_grad():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=src)


def wrap_ddp(model: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(model)`` (rank 0's weights and buffers are broadcast on construction)."""
    if not ctx.enabled:
        return model
    find_unused = os.environ.get(FIND_UNUSED_ENV, "0").lower() in {"1", "true", "yes"}
    device_ids = (
        [device.index if device.index is not None else ctx.local_rank] if device.type == "cuda" else None
    )
    return nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=find_unused
    )


def _comm_device(ctx: DistContext) -> torch.device:
    """Where small tensors for collectives live: the current CUDA device for NCCL, else CPU."""
    if ctx.backend == "nccl" or (dist.is_initialized() and dist.get_backend() == "nccl"):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def cpu_copy(obj: Any) -> Any:
    """Tensors (recursively through dicts/lists/tuples) moved to CPU: safe to pickle across ranks."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v) for v in obj)
    return obj
