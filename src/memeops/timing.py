"""Timings are measurements of the machine, not results: they stay out of every DVC out (and so do
MLflow run ids, drawn at random per run).

Two runs of a stage on the same machine must write the same bytes (docs/reproducibility.md), and a
wall-clock figure never repeats. Stages still measure their speed; the figures go to the stage's
MLflow run and its one-line summary, and ``make bench`` measures speed on its own. This module is
the one rule for what counts as a timing, so that every writer of a DVC out drops the same keys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["RUN_ID_KEYS", "TIMING_SUFFIXES", "is_timing_key", "timings", "without_keys", "without_run_ids", "without_timings"]

#: A key whose last path part ends with one of these is a timing: ``seconds``, ``build_seconds``,
#: ``train/epoch_seconds``, ``images_per_s``, ``train_samples_per_s``, ``memes_per_second``.
TIMING_SUFFIXES = ("seconds", "_per_s", "per_second")


def is_timing_key(key: object) -> bool:
    """Whether ``key`` names a timing or a rate (see :data:`TIMING_SUFFIXES`); non-strings never do."""
    return isinstance(key, str) and key.rsplit("/", 1)[-1].endswith(TIMING_SUFFIXES)


#: Keys that hold an MLflow run id: a random uuid per run, so a second build never repeats it. DVC
#: outs name a run by its (deterministic) run name and registered version instead.
RUN_ID_KEYS = frozenset({"run_id"})


def without_keys(payload: Any, drop: Callable[[object], bool]) -> Any:
    """``payload`` with every key for which ``drop`` is true removed at any depth of nested mappings
    and lists; other values are returned as they are (mappings become plain dicts, in their order)."""
    if isinstance(payload, Mapping):
        return {k: without_keys(v, drop) for k, v in payload.items() if not drop(k)}
    if isinstance(payload, list):
        return [without_keys(v, drop) for v in payload]
    return payload


def without_timings(payload: Any) -> Any:
    """``payload`` without its timing keys (:func:`is_timing_key`) at any depth."""
    return without_keys(payload, is_timing_key)


def without_run_ids(payload: Any) -> Any:
    """``payload`` without its MLflow run ids (:data:`RUN_ID_KEYS`) at any depth."""
    return without_keys(payload, lambda key: key in RUN_ID_KEYS)


def timings(payload: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric timings of ``payload`` at any depth, flattened to ``{"a/b/seconds": value}``: what
    a stage logs to its MLflow run when the out it writes drops them."""
    out: dict[str, float] = {}
    for key, value in payload.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out |= timings(value, prefix=f"{name}/")
        elif is_timing_key(key) and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out
