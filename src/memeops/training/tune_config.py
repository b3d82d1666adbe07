"""``params.tune``: which variants are tuned, the per-study budget, the seeded sampler, the pruner,
the storage and the search spaces (:class:`TuneConfig`, :class:`ParamSpec`).

Search-space keys address a variant's trainer overrides (``trainer.lr``) or its model config
(``config.dropout``); a bad key or spec is a one-line ValueError when params are loaded, and the
trainer fields that are the tuning budget or the selection rule cannot be searched. Optuna is
imported only where a pruner is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from memeops.config.train import TrainConfig, TrainStageConfig
from memeops.models.factory import model_config_class
from memeops.training.tuned import SPACE_SECTIONS

#: Trainer fields a search space may not touch: the budget and selection rule every trial shares
#: (and which the full training run sets itself) and runtime-only settings.
FIXED_TRAINER_FIELDS = frozenset({"epochs", "patience", "min_delta", "monitor", "monitor_mode", "seed", "device",
                                  "amp", "num_workers", "threads", "log_every",
                                  "checkpoint_every_s"})  # fmt: skip


class ParamSpec(BaseModel):
    """One searched parameter: ``float`` / ``int`` (``low``, ``high``, ``log``, ``step``) or
    ``categorical`` (``choices``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty `choices` list")
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("categorical takes only `choices`")
            if any(not (c is None or isinstance(c, (bool, int, float, str))) for c in self.choices):
                raise ValueError("categorical choices must be scalars (str, number, bool, null)")
            return self
        if self.choices is not None:
            raise ValueError(f"{self.type} takes low/high, not `choices`")
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs `low` and `high`")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("`log` and `step` cannot be combined")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"step must be positive, got {self.step}")
        if self.type == "int" and (not float(self.low).is_integer() or not float(self.high).is_integer()
                                   or (self.step is not None and not float(self.step).is_integer())):  # fmt: skip
            raise ValueError("int bounds and step must be whole numbers")
        return self

    def suggest(self, trial: Any, name: str) -> Any:
        """This parameter's value for ``trial`` (Optuna's suggest_* for its type)."""
        if self.type == "categorical":
            return trial.suggest_categorical(name, list(self.choices or []))
        if self.type == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(name, float(self.low), float(self.high), step=self.step, log=self.log)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` lies in this parameter's range or choices."""
        if self.type == "categorical":
            return value in (self.choices or [])
        try:
            return float(self.low) <= float(value) <= float(self.high)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False


def _one_line(exc: Exception) -> str:
    """A (pydantic) error as one line: ``field: message; ...``."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}" for e in errors())
    return " ".join(str(exc).split())


def parse_space(raw: Mapping[str, Any] | None, where: str = "space") -> dict[str, ParamSpec]:
    """``{"trainer.lr": {type: float, ...}, ...}`` -> validated specs; a bad one is a one-line ValueError."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: a mapping of `trainer.<field>` / `config.<field>` to specs, got {type(raw).__name__}")  # noqa: TRY004 - a config error
    out: dict[str, ParamSpec] = {}
    for key, spec in raw.items():
        section, _, name = str(key).partition(".")
        if section not in SPACE_SECTIONS or not name or "." in name:
            raise ValueError(f"{where}.{key}: keys are `trainer.<field>` or `config.<field>`")
        if section == "trainer":
            if name not in TrainConfig.model_fields:
                raise ValueError(f"{where}.{key}: {name!r} is not a trainer setting")
            if name in FIXED_TRAINER_FIELDS:
                raise ValueError(f"{where}.{key}: {name!r} is fixed by the tuning budget / selection rule, not searched")
        if isinstance(spec, ParamSpec):
            out[str(key)] = spec
            continue
        if not isinstance(spec, Mapping):
            raise ValueError(f"{where}.{key}: expected {{type: float|int|categorical, ...}}, got {spec!r}")  # noqa: TRY004 - a config error
        try:
            out[str(key)] = ParamSpec.model_validate(dict(spec))
        except Exception as exc:  # noqa: BLE001 - pydantic.ValidationError -> one line
            raise ValueError(f"{where}.{key}: {_one_line(exc)}") from None
    return out


class PrunerConfig(BaseModel):
    """``tune.pruner``: Optuna's MedianPruner on the per-epoch validation monitor (or none)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["median", "none"] = "median"
    n_startup_trials: int = Field(2, ge=0, description="trials completed before anything is pruned")
    n_warmup_steps: int = Field(3, ge=0, description="epochs a trial always runs before it may be pruned")
    interval_steps: int = Field(1, ge=1)

    def build(self) -> Any:
        """The Optuna pruner this config describes."""
        import optuna  # heavy; params loading must not pay for it

        if self.kind == "none":
            return optuna.pruners.NopPruner()
        return optuna.pruners.MedianPruner(n_startup_trials=self.n_startup_trials,
                                           n_warmup_steps=self.n_warmup_steps, interval_steps=self.interval_steps)  # fmt: skip


DEFAULT_SPACE = {"trainer.lr": {"type": "float", "low": 3e-4, "high": 1e-2, "log": True},
                 "trainer.weight_decay": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
                 "config.dropout": {"type": "float", "low": 0.0, "high": 0.5}}  # fmt: skip


class TuneConfig(BaseModel):
    """``params.tune``: which variants are tuned, the per-study budget, sampler, pruner, storage, spaces."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    variants: list[str] = Field(default_factory=list, description="variants tuned; the others get an empty tuning file")
    n_trials: int = Field(8, ge=1, description="trials per study, the defaults' trial 0 included")
    # None (default): trials train as stage train trains the variant (its epochs and patience), so the
    # best trial's val value is the tuned model's. A cap makes the search cheaper but favours
    # fast-converging settings: measured on SynthMeme, params tuned under an 8-epoch cap gave a WORSE
    # full-length model than the defaults (docs/tuning.md).
    epochs: int | None = Field(None, ge=1, description="per-trial epoch cap (None: the variant's own epochs)")
    patience: int | None = Field(None, ge=1, description="per-trial patience cap (None: the variant's own)")
    sampler_seed: int = 0
    n_startup_trials: int = Field(3, ge=0, description="TPE's random trials (trial 0, the defaults, counts)")
    storage: str = Field("sqlite:///.cache/optuna/{variant}.db",
                         description="SQLAlchemy URL or journal:<file>; relative paths from the project root")  # fmt: skip
    experiment: str | None = Field(None, description="MLflow experiment (default: <train.experiment>-tune)")
    pruner: PrunerConfig = PrunerConfig()
    spaces: dict[str, dict[str, ParamSpec]] = Field(default_factory=lambda: {"default": parse_space(DEFAULT_SPACE)})

    @field_validator("spaces", mode="before")
    @classmethod
    def _parse_spaces(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            raise ValueError("tune.spaces: a mapping of variant (or `default`) to a search space")  # noqa: TRY004 - a config error
        return {str(k): parse_space(v, f"spaces.{k}") for k, v in value.items()}

    def space_for(self, variant: str) -> dict[str, ParamSpec]:
        """The variant's own space, else ``default``; an empty one is an error for a tuned variant."""
        space = self.spaces.get(variant, self.spaces.get("default", {}))
        if not space:
            raise ValueError(f"tune: no search space for variant {variant!r} (add tune.spaces.{variant} or default)")
        return space

    def experiment_name(self, train_experiment: str) -> str:
        """The MLflow experiment of the studies (default ``<train experiment>-tune``)."""
        return self.experiment or f"{train_experiment}-tune"


def check_space(space: Mapping[str, ParamSpec], variant: str, cfg: TrainStageConfig) -> None:
    """Every ``config.<field>`` must be a field of the variant's model config (one-line error)."""
    fields = model_config_class(cfg.variant(variant).model).model_fields
    bad = [k for k in space if k.startswith("config.") and k.split(".", 1)[1] not in fields]
    if bad:
        model = cfg.variant(variant).model
        raise ValueError(f"tune.spaces for {variant!r}: {', '.join(bad)} not in the {model} config "
                         f"(fields: {', '.join(sorted(fields))})")  # fmt: skip


def default_params(space: Mapping[str, ParamSpec], variant: str, cfg: TrainStageConfig) -> dict[str, Any]:
    """The untuned value of every searched key: the variant's merged trainer setting, or its model
    config value (the variant's ``config`` entry, else the model config's default)."""
    trainer = cfg.trainer_config(variant)
    vcfg = cfg.variant(variant)
    fields = model_config_class(vcfg.model).model_fields
    out: dict[str, Any] = {}
    for key in space:
        section, name = key.split(".", 1)
        if section == "trainer":
            out[key] = getattr(trainer, name)
        else:
            out[key] = vcfg.config[name] if name in vcfg.config else fields[name].default
    return out


def trial_trainer_overrides(base: TrainConfig, tune: TuneConfig) -> dict[str, Any]:
    """The budget caps every trial trains under (the full run keeps the params' epochs/patience)."""
    epochs = base.epochs if tune.epochs is None else min(base.epochs, tune.epochs)
    patience = base.patience if tune.patience is None else min(base.patience, tune.patience)
    return {"epochs": epochs, "patience": patience,
            "warmup_epochs": min(base.warmup_epochs, epochs / 2)}  # fmt: skip
