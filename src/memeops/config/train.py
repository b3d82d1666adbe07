"""The typed ``train`` section of ``params.yaml``: the trainer settings (:class:`TrainConfig`), the
partial overrides of them that params and tuning give (:class:`TrainerOverrides`), one variant
(:class:`VariantConfig`) and the whole section (:class:`TrainStageConfig`).

Every key of ``train`` is checked when ``params.yaml`` is loaded, so a typo such as
``trainer: {lrr: 0.1}`` fails there with a one-line error naming the key, not later in a stage.
Two sections stay open mappings because their schema belongs to a model family, and are validated
where that family is built: a variant's ``config`` (by the model factory's config class) and its
``inputs`` (MGMCF's :class:`memeops.data.mgmcf_inputs.MgmcfInputsConfig`).

Pydantic only (no torch): :func:`memeops.training.trainer.fit` takes a :class:`TrainConfig`, and the
params can be checked on a machine without the model stack.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from memeops.data.taxonomy import load_taxonomy


class TrainConfig(BaseModel):
    """Optimisation, schedule, early stopping and runtime settings for :func:`fit`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-4, ge=0)
    weight_decay: float = Field(0.01, ge=0, description="AdamW decay; matrices only, not biases/norms")
    warmup_epochs: float = Field(2, ge=0, description="linear warm-up length; then cosine decay to 0")
    grad_clip: float | None = Field(1.0, description="max global grad norm; None or <= 0 disables")
    patience: int = Field(7, ge=1, description="stop after this many epochs without improvement")
    min_delta: float = Field(0.0, ge=0, description="improvement must exceed this")
    monitor: str = Field("hateful/auroc", description="validation metric key, e.g. 'mean/macro_f1', 'loss'")
    monitor_mode: Literal["max", "min"] = "max"
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...")
    seed: int = 0
    num_workers: int = Field(0, ge=0)
    threads: int = Field(1, ge=1, description="torch intra-op threads while fitting: a fixed count, not the "
                         "machine's cores (the split of float sums per thread changes the weights)")
    log_every: int = Field(50, ge=0, description="log the running train loss every N steps (0: never)")
    # Runtime-only, like ``threads``: when to write a checkpoint never changes the maths. Excluded from
    # dumps so it is not part of a run's identity (the resume hash, the stage's run-dir and study
    # fingerprints): a killed run resumes whatever interval the restart uses.
    checkpoint_every_s: float = Field(
        60.0, ge=0, exclude=True,
        description="checkpoint when this many seconds have passed since the last one, and after the "
        "final epoch (0: after every epoch)",
    )  # fmt: skip

    @model_validator(mode="after")
    def _warmup_within_training(self) -> TrainConfig:
        """The warm-up must end within training (else the LR never reaches its peak)."""
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) exceeds epochs ({self.epochs})")
        return self


class TrainerOverrides(BaseModel):
    """Some of :class:`TrainConfig`'s settings: ``train.trainer``, a variant's ``trainer``, or tuned
    values. Every field is optional, each checked like its :class:`TrainConfig` field (type and
    bounds), and an unknown key is an error. Only the keys given count: :meth:`settings` and a dump
    hold just those, so an unset field never overrides a value from an earlier layer.

    Cross-field rules (the warm-up within ``epochs``) need the merged settings, so they are checked
    once, on the merged :class:`TrainConfig` (:meth:`TrainStageConfig.trainer_config`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)
    lr: float | None = Field(None, ge=0)
    weight_decay: float | None = Field(None, ge=0)
    warmup_epochs: float | None = Field(None, ge=0)
    grad_clip: float | None = None  # an explicit null disables clipping (overrides a shared value)
    patience: int | None = Field(None, ge=1)
    min_delta: float | None = Field(None, ge=0)
    monitor: str | None = None
    monitor_mode: Literal["max", "min"] | None = None
    amp: Literal["auto", "off", "bf16", "fp16"] | None = None
    device: str | None = None
    seed: int | None = None
    num_workers: int | None = Field(None, ge=0)
    threads: int | None = Field(None, ge=1)
    log_every: int | None = Field(None, ge=0)
    checkpoint_every_s: float | None = Field(None, ge=0)

    @model_serializer(mode="wrap")
    def _only_given(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Dump only the keys given, so a dumped section re-validates to the same overrides."""
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set}

    def __eq__(self, other: object) -> bool:
        """Equal when the same keys are given with the same values (an explicit ``null`` is not
        the same as a key left out: it overrides an earlier layer)."""
        return isinstance(other, TrainerOverrides) and self.settings() == other.settings()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.settings().items())))

    def __repr_args__(self) -> Any:
        """Show only the keys given (``TrainerOverrides(lr=0.1)``), as :meth:`settings` holds them."""
        return list(self.settings().items())

    def settings(self) -> dict[str, Any]:
        """The keys given, with their values (``{}`` when none)."""
        return {name: getattr(self, name) for name in type(self).model_fields if name in self.model_fields_set}

    def updated(self, *layers: Mapping[str, Any] | TrainerOverrides) -> TrainerOverrides:
        """These overrides with ``layers`` laid over them in order (later wins), validated."""
        merged = self.settings()
        for layer in layers:
            merged.update(layer.settings() if isinstance(layer, TrainerOverrides) else layer)
        return TrainerOverrides.model_validate(merged)


class VariantConfig(BaseModel):
    """One entry of ``train.variants``: which model, its config, trainer overrides.

    ``config`` is the model's own config (the fields of the model factory's config class for
    ``model``, checked when the model is built: :func:`memeops.models.factory.model_config_class`);
    ``inputs`` is the model family's input settings (MGMCF: text encoder and region view,
    :class:`memeops.data.mgmcf_inputs.MgmcfInputsConfig`; empty for models on the CLIP feature
    cache, checked when the family's inputs are built). Both are open mappings here because their
    schema depends on ``model``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    config: dict[str, Any] = Field(default_factory=dict)
    trainer: TrainerOverrides = TrainerOverrides()
    tasks: list[str] | None = None  # None: the stage's train.tasks
    inputs: dict[str, Any] = Field(default_factory=dict)


class TrainStageConfig(BaseModel):
    """``params.train``: the task list, the shared trainer settings and the variant matrix."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    experiment: str = "memeops"
    tasks: list[str]
    seed: int = 0  # the bootstrap's seed, and the trainer's when no seed is given
    # Every reported model is trained once per seed; intervals cover seed and test-sample variation.
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    trainer: TrainerOverrides = TrainerOverrides()
    variants: dict[str, VariantConfig]
    bootstrap_samples: int = Field(1000, ge=0)
    register_models: bool = True  # log the pyfunc and register memeops-<variant> @challenger
    # Processes that train a variant's seeds side by side (memeops.training.seed_pool); 1: in the stage's
    # own process. Runtime only: a seed's result does not depend on the process that trains it.
    workers: int = Field(1, ge=1)

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: list[str]) -> list[str]:
        taxonomy = load_taxonomy()
        unknown = [t for t in tasks if t not in taxonomy.tasks]
        if unknown:
            raise ValueError(f"unknown tasks {unknown}; see `memeops taxonomy`")
        if not tasks:
            raise ValueError("train.tasks is empty")
        return tasks

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"train.seeds has repeated seeds: {seeds}")
        return seeds

    def variant(self, name: str) -> VariantConfig:
        """``train.variants.<name>``; an unknown name is a one-line error listing the known ones."""
        if name not in self.variants:
            raise ValueError(f"unknown variant {name!r}; train.variants has: {', '.join(self.variants)}")
        return self.variants[name]

    def tasks_for(self, name: str) -> list[str]:
        """The variant's own task list when it sets one (checked against the taxonomy), else ``tasks``."""
        tasks = self.variant(name).tasks
        return self._known_tasks(tasks) if tasks is not None else self.tasks

    def trainer_config(self, name: str, seed: int | None = None) -> TrainConfig:
        """The variant's :class:`TrainConfig`: ``train.seed``, the shared ``train.trainer``, the
        variant's ``trainer``, then ``seed`` when given (later wins). The one place the merged
        settings are validated (cross-field rules included)."""
        merged = {"seed": self.seed, **self.trainer.settings(), **self.variant(name).trainer.settings()}
        if seed is not None:
            merged["seed"] = seed
        return TrainConfig.model_validate(merged)
