"""Crash-safe training checkpoints: ``run_dir/checkpoints/``.

Files (all replaced together at each save; the trainer saves after the final epoch and otherwise
at most every ``TrainConfig.checkpoint_every_s`` seconds):

- ``last.safetensors``  model weights after the latest saved epoch (what training resumes from);
- ``best.safetensors``  model weights of the best epoch up to it (the trainer keeps its own copy
                        in memory while it runs, and reads this one back only when it resumes);
- ``optim.pt``          optimizer, LR-scheduler and GradScaler state (``torch.save``);
- ``rng.pt``            Python / NumPy / torch / CUDA / DataLoader-generator RNG states;
- ``state.json``        epoch, best value and epoch, bad-epoch counter, history, config hash.

Why a small commit protocol rather than writing each file atomically: the files only make sense
*together* (epoch-3 weights with epoch-2 optimizer moments would resume a run that never existed).
So a save first writes every payload as ``<name>.e<epoch>.pending`` (fsync'd), then atomically
replaces ``state.json`` — the commit point — and only then renames the pending files into place.
:func:`recover` (run before any read) finishes an interrupted rename phase for the committed epoch
and deletes pending files of an uncommitted one. A SIGKILL at any instant therefore leaves either
the previous epoch or the new one, never a mix and never a half-written file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_file, save_model
from torch import Tensor, nn

from memeops.training.seeding import capture_rng_state, restore_rng_state

CHECKPOINT_DIRNAME = "checkpoints"
STATE_FILE = "state.json"
LAST_WEIGHTS = "last.safetensors"
BEST_WEIGHTS = "best.safetensors"
OPTIM_FILE = "optim.pt"
RNG_FILE = "rng.pt"
FORMAT_VERSION = 1
FILE_MODE = 0o644  # mkstemp creates 0600; checkpoints are shared artefacts (DVC, other users)

_PENDING = re.compile(r"^(?P<name>.+)\.e(?P<epoch>\d+)\.pending$")


def checkpoint_dir(run_dir: Path) -> Path:
    """Where :func:`memeops.training.fit` keeps its checkpoints for ``run_dir``."""
    return Path(run_dir) / CHECKPOINT_DIRNAME


# --------------------------------------------------------------------------- atomic file helpers


def _fsync_dir(directory: Path) -> None:
    """Make renames inside ``directory`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_path(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file in the same folder, fsync, then ``os.replace`` onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    """JSON via :func:`atomic_write_bytes`; NaN is written as ``NaN`` (round-trips in Python).

    Key order is kept (not sorted) so a resumed history reads back exactly as it was recorded.
    """
    atomic_write_bytes(path, json.dumps(obj, indent=1).encode("utf-8"))


# --------------------------------------------------------------------------- weights


def _atomic_safetensors(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` a safetensors file next to ``path``, fsync, then ``os.replace`` it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, FILE_MODE)
        write(tmp)
        _fsync_path(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def save_weights(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Model weights as safetensors, atomically (tied/shared tensors are handled by safetensors)."""
    _atomic_safetensors(path, lambda tmp: save_model(model, tmp, metadata=metadata))


def snapshot_state(model: nn.Module) -> dict[str, Tensor]:
    """A CPU copy of ``model.state_dict()`` that later training steps cannot change.

    Tied weights (one tensor under several names, e.g. shared embeddings) stay one tensor in the
    copy, so :func:`save_state` writes what :func:`save_weights` would have (same tensors, same metadata).
    Copying draws no random numbers and changes nothing in the model.
    """
    copies: dict[tuple[Any, ...], Tensor] = {}
    out: dict[str, Tensor] = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach()
        ptr = tensor.untyped_storage().data_ptr() if tensor.numel() else 0
        # the same view of the same memory: one tensor (empty tensors share nothing)
        key: tuple[Any, ...] = (name,)
        if ptr:
            key = (str(tensor.device), ptr, tensor.storage_offset(), tuple(tensor.shape), tensor.stride(),
                   tensor.dtype)  # fmt: skip
        if key not in copies:
            copies[key] = tensor.to("cpu", copy=True)
        out[name] = copies[key]
    return out


def save_state(state: Mapping[str, Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """A :func:`snapshot_state` copy as safetensors, atomically, in :func:`save_weights`' format:
    a tensor held under several names is stored once, under the first name in sorted order, and
    the others are recorded in the metadata (as ``safetensors.torch.save_model`` does)."""
    kept: dict[int, str] = {}
    tensors: dict[str, Tensor] = {}
    meta = dict(metadata or {})
    for name in sorted(state):
        first = kept.setdefault(id(state[name]), name)
        if first == name:
            tensors[name] = state[name].contiguous()
        else:
            meta.setdefault(name, first)
    _atomic_safetensors(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_weights(model: nn.Module, path: Path) -> None:
    """Load safetensors weights into ``model`` in place (strict: names and shapes must match)."""
    missing, unexpected = load_model(model, str(path), strict=True, device="cpu")
    if missing or unexpected:  # load_model raises on strict; belt and braces
        raise RuntimeError(f"weights mismatch: missing={missing} unexpected={unexpected}")


def weights_hash(model: nn.Module) -> str:
    """SHA-256 over names, dtypes, shapes and raw bytes of the state dict: equal iff bit-identical."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- the checkpoint


def _pending_name(name: str, epoch: int) -> str:
    return f"{name}.e{epoch:06d}.pending"


def _write_pending_torch(directory: Path, name: str, epoch: int, obj: Any) -> None:
    path = directory / _pending_name(name, epoch)
    with open(path, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())


def _discard_pending(directory: Path, keep_epoch: int | None = None) -> None:
    """Delete pending files (and stray temp files) except those of ``keep_epoch``."""
    for path in directory.iterdir():
        match = _PENDING.match(path.name)
        if match and int(match["epoch"]) != keep_epoch or path.name.startswith(".") and path.name.endswith(".tmp"):
            path.unlink(missing_ok=True)


def _promote(directory: Path, epoch: int) -> None:
    """Rename the committed epoch's pending files onto their final names (idempotent)."""
    for path in sorted(directory.iterdir()):
        match = _PENDING.match(path.name)
        if match and int(match["epoch"]) == epoch:
            os.replace(path, directory / match["name"])
    _fsync_dir(directory)


def save_checkpoint(
    directory: Path,
    *,
    state: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    loader_generator: torch.Generator,
    is_best: bool,
    best_state: Mapping[str, Tensor] | None = None,
) -> None:
    """Write one epoch's checkpoint with the stage → commit → promote protocol (module docstring).

    ``state`` must hold an int ``epoch``; it is stored as ``state.json``. RNG states are captured
    here, so call this as the last thing of an epoch (nothing may draw random numbers between
    this save and the next epoch's first batch).

    ``best.safetensors`` is rewritten from the model when ``is_best`` (this epoch is the best), else
    from ``best_state`` (a :func:`snapshot_state` of an earlier best epoch not yet saved) when
    given; with neither, the previous save's best file stays as it is.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    epoch = int(state["epoch"])
    _discard_pending(directory)
    meta = {"epoch": str(epoch)}
    save_weights(model, directory / _pending_name(LAST_WEIGHTS, epoch), metadata=meta)
    if is_best:
        save_weights(model, directory / _pending_name(BEST_WEIGHTS, epoch), metadata=meta)
    elif best_state is not None:
        save_state(best_state, directory / _pending_name(BEST_WEIGHTS, epoch), metadata=meta)
    trainer_state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
    }
    _write_pending_torch(directory, OPTIM_FILE, epoch, trainer_state)
    _write_pending_torch(directory, RNG_FILE, epoch, capture_rng_state(loader_generator))
    atomic_write_json(directory / STATE_FILE, {**state, "format_version": FORMAT_VERSION})  # commit
    _promote(directory, epoch)


def recover(directory: Path) -> dict[str, Any] | None:
    """Finish or roll back an interrupted save; return the committed state (None when there is none)."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    state_path = directory / STATE_FILE
    state = json.loads(state_path.read_text("utf-8")) if state_path.exists() else None
    if state is not None:
        _promote(directory, int(state["epoch"]))
    _discard_pending(directory)
    return state


def load_checkpoint(
    directory: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    loader_generator: torch.Generator,
) -> None:
    """Restore model (last weights), optimizer, scheduler, scaler and every RNG, in place.

    Call :func:`recover` first. Everything is loaded with ``weights_only=True``: a checkpoint can
    only carry tensors and plain containers, never code.
    """
    directory = Path(directory)
    load_weights(model, directory / LAST_WEIGHTS)
    optim = torch.load(directory / OPTIM_FILE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(optim["optimizer"])
    scheduler.load_state_dict(optim["scheduler"])
    scaler.load_state_dict(optim["scaler"])
    rng = torch.load(directory / RNG_FILE, map_location="cpu", weights_only=True)
    restore_rng_state(rng, loader_generator)
