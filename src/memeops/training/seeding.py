"""Seeding and RNG-state capture, so a run is reproducible and a resumed run is bit-identical.

Every source of randomness a training epoch touches is listed here: Python ``random``, NumPy's
global generator, torch's CPU generator, every CUDA device's generator, and the
:class:`torch.Generator` that drives DataLoader shuffling. :func:`capture_rng_state` snapshots all
of them as plain tensors/tuples (loadable with ``torch.load(..., weights_only=True)``) and
:func:`restore_rng_state` puts them back.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

CUBLAS_WORKSPACE = ":4096:8"
"""cuBLAS needs a fixed workspace to be deterministic (CUDA >= 10.2); set before cuBLAS starts."""


def seed_everything(seed: int) -> None:
    """Seed every global generator and ask torch for deterministic kernels.

    ``warn_only=True``: an op without a deterministic kernel warns instead of failing, so a model
    that needs one (e.g. some scatter ops on CUDA) still trains; on CPU all ops used here are
    deterministic. The cuBLAS variable only takes effect if set before the first cuBLAS call,
    hence ``setdefault`` early in a run (an explicit user value wins).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed Python's and NumPy's generators in a worker process.

    torch seeds each worker's torch generator (and Python's ``random``) from the loader's generator,
    but not NumPy's, which a fork copies unchanged into every worker: a transform drawing from it
    would then repeat the same numbers in all workers and depend on what ran before the fork.
    """
    seed = torch.initial_seed() % 2**32  # base_seed + worker_id, drawn from the loader's generator
    random.seed(seed)
    np.random.seed(seed)


def make_generator(seed: int) -> torch.Generator:
    """A CPU generator for DataLoader shuffling; its state is checkpointed with the run."""
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def capture_rng_state(loader_generator: torch.Generator | None = None) -> dict[str, Any]:
    """All RNG states as tensors / tuples of ints (safe for ``torch.load(weights_only=True)``).

    NumPy's key is stored as an int64 tensor because ``weights_only`` loading refuses ndarrays.
    """
    np_name, np_key, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "name": str(np_name),
            "key": torch.from_numpy(np.asarray(np_key, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if loader_generator is not None:
        state["loader"] = loader_generator.get_state()
    return state


def restore_rng_state(state: dict[str, Any], loader_generator: torch.Generator | None = None) -> None:
    """Inverse of :func:`capture_rng_state`.

    CUDA states are restored only when the same number of devices is visible; a checkpoint moved
    to another machine still resumes (CPU-exactness is what is guaranteed).
    """
    random.setstate(_as_python_state(state["python"]))
    npst = state["numpy"]
    key = npst["key"].numpy().astype(np.uint32)
    np.random.set_state((npst["name"], key, npst["pos"], npst["has_gauss"], npst["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda_states):
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
    if loader_generator is not None and "loader" in state:
        loader_generator.set_state(state["loader"].cpu())


def _as_python_state(value: Any) -> tuple:
    """``random.setstate`` wants ``(version, tuple_of_ints, gauss)``; pickling may yield lists."""
    version, internal, gauss = value
    return (int(version), tuple(int(x) for x in internal), gauss)
