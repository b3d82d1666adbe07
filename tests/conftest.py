"""Shared test set-up: tool state in a temp dir, telemetry off, and a loopback-only socket guard.

The offline switches and state locations come from :mod:`memeops.runtime` (the one place that
defines them); here they are pointed at a per-session temp dir before anything else is imported.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
NETGUARD_DIR = Path(__file__).resolve().parent / "netguard"
_STATE = Path(tempfile.mkdtemp(prefix="memeops-test-state-"))

from memeops import runtime

runtime.configure(_STATE, override_state=True)

sys.path.insert(0, str(NETGUARD_DIR))
import netguard

netguard.install()


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
