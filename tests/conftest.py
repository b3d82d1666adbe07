"""Shared test set-up: tool state in a temp dir, telemetry off, and a loopback-only socket guard.

The offline switches and state locations come from :mod:`memeops.runtime` (the one place that
defines them); here they are pointed at a per-session temp dir before anything else is imported.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
NETGUARD_DIR = Path(__file__).resolve().parent / "netguard"
_STATE = Path(tempfile.mkdtemp(prefix="memeops-test-state-"))

from memeops import runtime

runtime.configure(_STATE, override_state=True)

from benchmarks.pipeline import make_project_copy  # after configure: it imports memeops

sys.path.insert(0, str(NETGUARD_DIR))
import netguard

netguard.install()


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the session's tool-state dir, so repeated runs do not fill the disk of /tmp."""
    shutil.rmtree(_STATE, ignore_errors=True)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def netguard_dir() -> Path:
    return NETGUARD_DIR


@pytest.fixture(scope="session")
def state_dir() -> Path:
    return _STATE


def venv_bin() -> Path:
    """The bin folder of the interpreter running the tests (the project's .venv under make test)."""
    return Path(sys.executable).parent


#: params.yaml overrides of a tiny project copy: the whole pipeline in minutes (test_pipeline_e2e,
#: test_deterministic_outs).
TINY_PARAMS: dict[str, Any] = {
    "synth": {"n_memes": 150, "image_size": 128, "workers": 1},
    "data": {"workers": 1},
    "validate": {"min_class_count": 1},
    "pretrain_clip": {"epochs": 1, "batch_size": 32},
    "encoders": {"clip": {"image_size": 64, "embed_dim": 64}},
    "train": {"trainer": {"epochs": 2, "warmup_epochs": 1, "batch_size": 32}, "bootstrap_samples": 20, "seeds": [0, 1],
              "variants": {name: {"trainer": {"epochs": 2, "patience": 2}}
                           for name in ("gatedclip", "mgmcf", "bilinear", "bilinear_hateful", "gatedclip_bilinear",
                                        "retrieval")}},
    "ocr": {"workers": 1, "cer_sample": 6},
    "detector": {"imgsz": 64, "yolo": {"epochs": 1, "batch": 16}},
    "tune": {"n_trials": 2, "epochs": 2, "n_startup_trials": 1, "pruner": {"n_startup_trials": 1, "n_warmup_steps": 1}},
    "vlm": {"bootstrap_samples": 20, "trainer": {"epochs": 1, "vocab_size": 600, "generate_samples": 8,
                                                 "max_new_tokens": 12, "model": {"hidden": 32, "intermediate": 64}}},
    # gatedclip keeps the default (no protocol override): its baselines are read from stage train's seeds
    "ablate": {"seeds": [0, 1], "n_boot": 100, "groups": {"mgmcf": {"trainer": {"epochs": 2, "patience": 2}}}},
}


@pytest.fixture
def torch_globals() -> Any:
    """fit() turns on deterministic algorithms process-wide; restore them (and the thread count)
    after the test, so other test files get their defaults. Tests run on one torch thread: the
    trainer's default, and the same kernels as the resume tests' child processes."""
    import torch  # here, not at the top: most tests never import torch

    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.set_num_threads(threads)


def make_tiny_project(dest: Path) -> Path:
    """A copy of the project's code (dvc.yaml, stages/, src/) in ``dest`` (must not exist) with
    params.yaml shrunk by :data:`TINY_PARAMS` (``benchmarks.pipeline.make_project_copy``, the bench's
    copy); no data, models or caches. ``dvc init --no-scm`` is left to the caller."""
    return make_project_copy(dest, TINY_PARAMS)


@pytest.fixture(scope="session")
def tiny_project() -> Callable[[Path], Path]:
    """:func:`make_tiny_project`: a tiny copy of the project to run ``dvc repro`` in."""
    return make_tiny_project


@pytest.fixture
def subprocess_env(tmp_path: Path) -> dict[str, str]:
    """Environment for subprocesses: guarded sockets, a fresh empty HOME, tool state in tmp."""
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ)
    env.update(
        HOME=str(home),
        PYTHONPATH=os.pathsep.join([str(NETGUARD_DIR), str(REPO_ROOT)]),
        MEMEOPS_NETGUARD_LOG=str(tmp_path / "netguard.log"),
        PATH=os.pathsep.join([str(venv_bin()), env.get("PATH", "")]),
    )
    return env


def write_cached_features(root: Path, memes: Any, image: Any, text: Any,
                          spec: str = "spec") -> Path:  # fmt: skip
    """A feature cache under ``root/<spec>`` holding ``image`` / ``text`` rows for ``memes`` (keyed by
    their content, flipped image = image), as stage features writes it (``text`` may be wider than
    ``image``, as with a sentence encoder for captions); returns ``root``."""
    import torch

    from memeops.data.features import _write_index, _write_shard, content_key

    folder = Path(root) / spec
    folder.mkdir(parents=True)
    keys = [content_key(s, t) for s, t in zip(memes["image_sha256"], memes["text"])]
    arrays = {"image": torch.from_numpy(image), "image_flip": torch.from_numpy(image.copy()), "text": torch.from_numpy(text)}
    shard = _write_shard(folder, keys, arrays, spec)
    _write_index(folder, {k: (shard, i) for i, k in enumerate(keys)}, spec, image.shape[1], text.shape[1])
    return Path(root)


@pytest.fixture(scope="session")
def cached_features() -> Callable[..., Path]:
    """:func:`write_cached_features`, for tests that train on a tiny hand-made feature cache."""
    return write_cached_features


def _forget_prefect_exit_hooks() -> None:
    """Drain Prefect's queue services and drop the exit hooks they left behind.

    Prefect (3.8.8) registers each queue service's ``_at_exit`` with ``threading._register_atexit``
    and never removes it. In a process forked later (a DataLoader worker of another test) the hook
    runs on a service that the fork handler has reset, asserts, and the child exits with code 1
    ("DataLoader worker exited unexpectedly"). Only tests host Prefect in the pytest process; the
    project runs flows in their own processes, so this clean-up lives here.
    """
    import threading

    from prefect._internal.concurrency.services import _QueueServiceBase

    _QueueServiceBase.drain_all(timeout=10)
    hooks = getattr(threading, "_threading_atexits", None)
    if hooks is not None:
        hooks[:] = [h for h in hooks if not isinstance(getattr(getattr(h, "func", h), "__self__", None), _QueueServiceBase)]


@pytest.fixture(scope="session")
def prefect_harness():
    """``with prefect_harness(home, **harness_kwargs):`` Prefect's test harness with PREFECT_HOME at
    ``home``, leaving no Prefect exit hooks behind in the pytest process (see above)."""
    import contextlib

    @contextlib.contextmanager
    def harness(home: Path, **kwargs):
        from prefect.settings import PREFECT_HOME, temporary_settings
        from prefect.testing.utilities import prefect_test_harness

        try:
            with temporary_settings({PREFECT_HOME: str(home)}), prefect_test_harness(**kwargs):
                yield
        finally:
            _forget_prefect_exit_hooks()

    return harness
