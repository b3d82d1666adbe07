"""Stage tune's best params merged into the train config: the one place where that happens.

``reports/tuning/<variant>.json`` (written by :mod:`memeops.training.tune`) holds a nested override
dict ``{"trainer": {...}, "config": {...}}``. :func:`apply_tuned` is the only merge of such
overrides into a :class:`~memeops.config.train.TrainStageConfig`; :func:`with_tuned` reads
the variants' tuning files and merges each through it (stages ``train`` and ``ablate``), and a
tuning trial merges its sampled params and its budget caps through it too.

The merge dumps nothing: the trainer overrides land in the variant's typed ``trainer``
(:meth:`~memeops.config.train.TrainerOverrides.updated`, which rejects an unknown key or a value
out of bounds right there), the config overrides in its ``config`` mapping. The merged settings are
validated once, where they are used (:meth:`TrainStageConfig.trainer_config` builds the
:class:`TrainConfig`, the model factory the model config), so a typo fails before training.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from memeops.config.train import TrainStageConfig

TUNING_DIR = Path("reports/tuning")
SPACE_SECTIONS = ("trainer", "config")


def tuning_path(variant: str, folder: str | Path = TUNING_DIR) -> Path:
    """The variant's tuning file, ``<folder>/<variant>.json``."""
    return Path(folder) / f"{variant}.json"


def params_to_overrides(params: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"trainer.lr": 1e-3, "config.dropout": 0.1}`` -> ``{"trainer": {"lr": ...}, "config": {...}}``."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in params.items():
        section, _, name = key.partition(".")
        if section not in SPACE_SECTIONS or not name:
            raise ValueError(f"tuned parameter {key!r}: keys are trainer.<field> or config.<field>")
        out.setdefault(section, {})[name] = value
    return out


def untuned_report(variant: str) -> dict[str, Any]:
    """The file of a variant not in ``tune.variants``: no overrides, so ``train`` uses its params."""
    return {"variant": variant, "tuned": False, "overrides": {}}


def apply_tuned(cfg: TrainStageConfig, variant: str, tuned: Mapping[str, Any] | None) -> TrainStageConfig:
    """``cfg`` with ``tuned``'s trainer / config overrides merged into ``train.variants.<variant>``.

    ``tuned`` is a tuning report (its ``overrides`` are used) or the override dict itself
    (``{"trainer": {...}, "config": {...}}``); None or empty leaves ``cfg`` as it is (the same
    object). Tuned values win over the variant's params; every other field (epochs, patience,
    other variants) is untouched. Pure: returns a new config, ``cfg`` is not changed.
    """
    entry = cfg.variant(variant)  # unknown variant: one-line error
    if not tuned:
        return cfg
    overrides = tuned.get("overrides", tuned) or {}
    unknown = set(overrides) - set(SPACE_SECTIONS)
    if unknown:
        raise ValueError(f"tuned overrides for {variant!r}: unknown sections {sorted(unknown)} (trainer, config)")
    if not any(overrides.get(s) for s in SPACE_SECTIONS):
        return cfg
    merged = entry.model_copy(update={
        "trainer": entry.trainer.updated(overrides.get("trainer") or {}),
        "config": {**entry.config, **dict(overrides.get("config") or {})},
    })  # fmt: skip
    return cfg.model_copy(update={"variants": {**cfg.variants, variant: merged}})


def with_tuned(cfg: TrainStageConfig, variants: Iterable[str], folder: str | Path = TUNING_DIR) -> TrainStageConfig:
    """``cfg`` with each variant's tuning file (when it exists) merged by :func:`apply_tuned`; a
    variant without a file keeps its params (stage tune not run, or the variant is not tuned)."""
    for variant in sorted(set(variants)):
        cfg.variant(variant)  # unknown variant: one-line error, file or not
        path = tuning_path(variant, folder)
        if path.is_file():
            cfg = apply_tuned(cfg, variant, json.loads(path.read_text(encoding="utf-8")))
    return cfg
