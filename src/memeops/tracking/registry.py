"""Model registry conventions: ``memeops-<variant>`` names and aliases instead of stages.

A freshly trained model is registered and gets the ``challenger`` alias; promotion (moving
``champion``) is a separate, deliberate step. Consumers load ``models:/memeops-<variant>@<alias>``
and never hard-code version numbers.
"""

from __future__ import annotations

import re
from typing import Any

DEFAULT_ALIAS = "challenger"
CHAMPION_ALIAS = "champion"


def registered_model_name(variant: str) -> str:
    """``memeops-<variant>`` with anything but letters, digits, ``._-`` replaced by ``-``."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", variant).strip("-")
    if not cleaned:
        raise ValueError(f"variant {variant!r} gives an empty registered-model name")
    return f"memeops-{cleaned}"


def alias_uri(name: str, alias: str = DEFAULT_ALIAS) -> str:
    """``models:/<name>@<alias>``: what loaders should use."""
    return f"models:/{name}@{alias}"


def _model_uri(model: Any) -> str:
    """A model URI from a URI string, a ``ModelInfo`` or a ``LoggedModel``."""
    if isinstance(model, str):
        return model
    uri = getattr(model, "model_uri", None)
    if isinstance(uri, str) and uri:
        return uri
    raise TypeError(
        f"cannot get a model URI from {type(model).__name__}; pass a URI, ModelInfo or LoggedModel"
    )


def register_and_alias(
    model: Any, name: str, alias: str = DEFAULT_ALIAS, *, tags: dict[str, str] | None = None
) -> str:
    """Register ``model`` under ``name`` (unless a ``ModelInfo`` already was) and point ``alias``
    at that version; returns the version (a string, as MLflow gives it).

    ``model``: a model URI (``runs:/<run>/model``, ``models:/m-...``), or the ``ModelInfo`` from
    :func:`memeops.serving.pyfunc.log_pyfunc` (its registered version is reused when it was
    logged with ``registered_model_name=name``, so nothing is registered twice).
    """
    import mlflow

    client = mlflow.MlflowClient()
    if _is_registered_as(client, model, name):
        version = str(model.registered_model_version)
    else:
        version = str(mlflow.register_model(_model_uri(model), name).version)
    for key, value in (tags or {}).items():
        client.set_model_version_tag(name, version, key, str(value))
    client.set_registered_model_alias(name, alias, version)
    return version


def _is_registered_as(client: Any, info: Any, name: str) -> bool:
    """Whether ``info`` (a ModelInfo) was registered as a version of ``name`` (ModelInfo carries
    the version number but not the registered name)."""
    from mlflow.exceptions import MlflowException

    version = getattr(info, "registered_model_version", None)
    if version is None:
        return False
    try:
        mv = client.get_model_version(name, str(version))
    except MlflowException:
        return False
    model_id = getattr(info, "model_id", None)
    return (
        bool(model_id)
        and getattr(mv, "model_id", None) == model_id
        or mv.source == getattr(info, "model_uri", None)
    )


def alias_version(name: str, alias: str = DEFAULT_ALIAS) -> str | None:
    """The version ``alias`` points at, or None when the model or the alias does not exist."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return str(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def missing_alias_message(name: str, alias: str) -> str:
    """One line: ``name@alias`` does not exist, and what to run about it (promote a challenger that
    exists, else train)."""
    variant = name.removeprefix("memeops-")
    if alias == CHAMPION_ALIAS and alias_version(name, DEFAULT_ALIAS) is not None:
        return (f"{name}@{alias} does not exist: nothing has been promoted yet; run `memeops promote {variant}` "
                f"(or use @{DEFAULT_ALIAS}, the newest trained version)")  # fmt: skip
    return f"{name}@{alias} does not exist: train and register it first (`make repro`, or `dvc repro` its stage)"


def servable_uri(variant: str, alias: str = CHAMPION_ALIAS) -> tuple[str, str | None]:
    """The ``models:/`` URI to serve for ``variant`` at ``alias``, and a note when it is not that
    alias: right after ``make repro`` nothing is champion yet (promotion is a deliberate step), so
    the champion falls back to the challenger and the note says so. :class:`LookupError` (one line,
    what to run) when neither exists."""
    name = registered_model_name(variant)
    if alias_version(name, alias) is not None:
        return alias_uri(name, alias), None
    if alias == CHAMPION_ALIAS and alias_version(name, DEFAULT_ALIAS) is not None:
        note = (f"no @{CHAMPION_ALIAS} for {name} yet: serving @{DEFAULT_ALIAS} "
                f"(promote it with `memeops promote {variant}`)")  # fmt: skip
        return alias_uri(name, DEFAULT_ALIAS), note
    raise LookupError(missing_alias_message(name, alias))


def explain_missing_alias(model_uri: str) -> str | None:
    """For a ``models:/<name>@<alias>`` URI whose alias does not resolve, :func:`missing_alias_message`;
    otherwise None (the URI is fine, or not an alias URI)."""
    match = re.fullmatch(r"models:/([^@/]+)@([^@/]+)", model_uri.strip())
    if match is None or alias_version(match.group(1), match.group(2)) is not None:
        return None
    return missing_alias_message(match.group(1), match.group(2))


def promote(name: str, from_alias: str = DEFAULT_ALIAS, to_alias: str = CHAMPION_ALIAS) -> str:
    """Point ``to_alias`` at the version ``from_alias`` points at (e.g. challenger -> champion)."""
    import mlflow

    version = alias_version(name, from_alias)
    if version is None:
        raise ValueError(f"registered model {name!r} has no alias {from_alias!r}")
    mlflow.MlflowClient().set_registered_model_alias(name, to_alias, version)
    return version
