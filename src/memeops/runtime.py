"""Offline hygiene and runtime-state locations, set in exactly one place.

Every entry point (the package import, the stages, the CLI, the Makefile via ``memeops.runtime``'s
``env`` command, and the test conftest) goes through :func:`configure`. It switches off the
telemetry and hub look-ups listed in the project's stack notes and points each tool's state
directory inside the project (``.cache/``) or, when the caller passes one, a temp dir — never the
home directory.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Switches that stop network calls and telemetry. Values are forced, not defaulted: a user who
#: wants a hub must edit this module on purpose.
OFFLINE_SWITCHES: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "YOLO_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "WANDB_DISABLED": "true",
    "TOKENIZERS_PARALLELISM": "false",
}

PROJECT_MARKERS = ("dvc.yaml", "params.yaml")


def find_project_root(start: Path | None = None) -> Path:
    """The nearest directory at or above ``start`` (default: cwd) holding ``dvc.yaml`` or ``params.yaml``.

    Falls back to ``start`` itself, so tool state still lands next to the work, not in ``$HOME``.
    """
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if any((candidate / marker).exists() for marker in PROJECT_MARKERS):
            return candidate
    return here


def state_dirs(root: Path) -> dict[str, str]:
    """Where each tool keeps its state, all under ``root``."""
    cache = root / ".cache"
    return {
        "YOLO_CONFIG_DIR": str(cache / "ultralytics"),
        "PREFECT_HOME": str(root / ".prefect"),
        "HF_HOME": str(cache / "huggingface"),
        "TORCH_HOME": str(cache / "torch"),
        "MPLCONFIGDIR": str(cache / "matplotlib"),
        "XDG_CACHE_HOME": str(cache),
        "XDG_CONFIG_HOME": str(cache / "config"),
        "OPEN_CLIP_CACHE_DIR": str(cache / "open_clip"),
        "DVC_SITE_CACHE_DIR": str(cache / "dvc"),
        "DVC_GLOBAL_CONFIG_DIR": str(cache / "config" / "dvc"),
    }


def default_tracking_uri(root: Path) -> str:
    """MLflow's embedded default: a sqlite file at the project root."""
    return f"sqlite:///{root / 'mlflow.db'}"


def configure(root: Path | None = None, *, override_state: bool = False) -> dict[str, str]:
    """Apply the offline switches and state locations to ``os.environ``; return what was set.

    Offline switches are always forced. State directories and ``MLFLOW_TRACKING_URI`` are only
    defaulted (a user or a test may have pointed them elsewhere) unless ``override_state``.
    """
    root = (root or find_project_root()).resolve()
    applied: dict[str, str] = {}
    for key, value in OFFLINE_SWITCHES.items():
        os.environ[key] = value
        applied[key] = value
    defaults = {**state_dirs(root), "MLFLOW_TRACKING_URI": default_tracking_uri(root)}
    for key, value in defaults.items():
        if override_state or key not in os.environ:
            os.environ[key] = value
        applied[key] = os.environ[key]
    return applied


def shell_exports(root: Path | None = None) -> str:
    """``export K=V`` lines for the Makefile / shell scripts, so they share this one definition."""
    import shlex

    applied = configure(root, override_state=False)
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in applied.items())


if __name__ == "__main__":  # python -m memeops.runtime  -> export lines
    print(shell_exports())
