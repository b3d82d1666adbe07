"""Hyper-parameter tuning of one ``train.variants`` entry with Optuna: the library side of stage ``tune``.

One Optuna study per variant:

* **search space** from ``params.tune.spaces`` (``<variant>`` or ``default``): keys address the
  variant's trainer overrides (``trainer.lr``) or its model config (``config.dropout``); values are
  ``{type: float|int|categorical, low, high, log, step, choices}`` (:class:`ParamSpec`);
* **seeded TPE** (``TPESampler(seed=tune.sampler_seed)``) and a **MedianPruner** fed the per-epoch
  VALIDATION monitor metric (``train.trainer.monitor``) by a trainer callback;
* **trial 0 is the untuned defaults** (``study.enqueue_trial``), trained on the same budget as
  every other trial, so "tuning beats the defaults" compares like with like;
* each trial trains through the one trainer (:func:`memeops.training.trainer.fit`) on the cached
  features with the variant's own epochs / patience (or the optional caps ``tune.epochs`` /
  ``tune.patience``) and returns its best validation value. The test splits are never built, let
  alone scored;
* **storage**: a sqlite file inside the project by default (``.cache/optuna/<variant>.db``); any
  SQLAlchemy URL (``postgresql://…``, ``mysql://…``) for workers on several machines, or
  ``journal:<file>`` (Optuna's JournalStorage + JournalFileBackend: its recommended multi-process
  file storage) for several local worker processes (flows/tune.py);
* **MLflow**: one parent run per study (:func:`memeops.tracking.runs.tracked_run`: lineage tags,
  stage ``tune@<variant>``) holding the optimisation-history / parameter-importance / intermediate
  value plots and the best value and params; every trial is a child run (tags
  ``memeops.tune.trial_number`` / ``memeops.tune.state``, its params, its per-epoch val curve, its
  value). Workers in other processes attach their child runs to the same parent by id;
* **output** ``reports/tuning/<variant>.json`` (:func:`tuning_report`): the best params as a nested
  override dict (``{"trainer": {...}, "config": {...}}``) that stage ``train`` merges with
  :func:`apply_tuned`, the best and the default validation value, trial counts. The file holds no
  timings, so retuning to the same result leaves ``train`` up to date.

Without caps a trial is the very run stage ``train`` will make with its params, so the best val
value is the tuned model's; an optional cap only makes the search cheaper and is biased towards
fast-learning settings (measured in docs/tuning.md). Epochs, patience, the monitor and the seed are
the budget and the selection rule, so they cannot be searched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from memeops.training.experiment import TrainStageConfig
from memeops.training.trainer import TrainConfig

logger = logging.getLogger(__name__)

STUDY_PREFIX = "memeops"
TAG_TRIAL = "memeops.tune.trial_number"
TAG_STATE = "memeops.tune.state"
TAG_STUDY = "memeops.tune.study"
TAG_DEFAULTS = "memeops.tune.defaults"
#: Trainer fields a search space may not touch: the budget and selection rule every trial shares
#: (and which the full training run sets itself) and runtime-only settings.
FIXED_TRAINER_FIELDS = frozenset({"epochs", "patience", "min_delta", "monitor", "monitor_mode", "seed", "device",
                                  "amp", "num_workers", "threads", "log_every"})  # fmt: skip
SPACE_SECTIONS = ("trainer", "config")


# --------------------------------------------------------------------------- configuration


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
        if self.type == "categorical":
            return trial.suggest_categorical(name, list(self.choices or []))
        if self.type == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(name, float(self.low), float(self.high), step=self.step, log=self.log)

    def contains(self, value: Any) -> bool:
        if self.type == "categorical":
            return value in (self.choices or [])
        try:
            return float(self.low) <= float(value) <= float(self.high)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False


def _one_line(exc: Exception) -> str:
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
        import optuna

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
    # None (default): trials train exactly as train@<variant> will (its epochs and patience), so the
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
        return self.experiment or f"{train_experiment}-tune"


def check_space(space: Mapping[str, ParamSpec], variant: str, cfg: TrainStageConfig) -> None:
    """Every ``config.<field>`` must be a field of the variant's model config (one-line error)."""
    from memeops.models.factory import model_config_class

    fields = model_config_class(cfg.variant(variant).model).model_fields
    bad = [k for k in space if k.startswith("config.") and k.split(".", 1)[1] not in fields]
    if bad:
        model = cfg.variant(variant).model
        raise ValueError(f"tune.spaces for {variant!r}: {', '.join(bad)} not in the {model} config "
                         f"(fields: {', '.join(sorted(fields))})")  # fmt: skip


# --------------------------------------------------------------------------- params <-> overrides


def params_to_overrides(params: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"trainer.lr": 1e-3, "config.dropout": 0.1}`` -> ``{"trainer": {"lr": ...}, "config": {...}}``."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in params.items():
        section, _, name = key.partition(".")
        if section not in SPACE_SECTIONS or not name:
            raise ValueError(f"tuned parameter {key!r}: keys are trainer.<field> or config.<field>")
        out.setdefault(section, {})[name] = value
    return out


def apply_tuned(cfg: TrainStageConfig, variant: str, tuned: Mapping[str, Any] | None) -> TrainStageConfig:
    """``cfg`` with ``tuned``'s trainer / config overrides merged into ``train.variants.<variant>``.

    ``tuned`` is a tuning report (its ``overrides`` are used) or the override dict itself
    (``{"trainer": {...}, "config": {...}}``); None or empty leaves ``cfg`` as it is. Tuned values
    win over the variant's params; every other field (epochs, patience, other variants) is
    untouched. Pure: returns a new, re-validated config.
    """
    cfg.variant(variant)  # unknown variant: one-line error
    if not tuned:
        return cfg
    overrides = tuned.get("overrides", tuned) or {}
    unknown = set(overrides) - set(SPACE_SECTIONS)
    if unknown:
        raise ValueError(f"tuned overrides for {variant!r}: unknown sections {sorted(unknown)} (trainer, config)")
    if not any(overrides.get(s) for s in SPACE_SECTIONS):
        return cfg
    data = cfg.model_dump()
    entry = data["variants"][variant]
    for section in SPACE_SECTIONS:
        entry[section] = {**(entry.get(section) or {}), **dict(overrides.get(section) or {})}
    return TrainStageConfig.model_validate(data)


def default_params(space: Mapping[str, ParamSpec], variant: str, cfg: TrainStageConfig) -> dict[str, Any]:
    """The untuned value of every searched key: the variant's merged trainer setting, or its model
    config value (the variant's ``config`` entry, else the model config's default)."""
    from memeops.models.factory import model_config_class

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


# --------------------------------------------------------------------------- storage


def resolve_storage(spec: str, variant: str, root: str | Path = ".") -> str:
    """``{variant}`` filled in, a relative sqlite / journal path made absolute under ``root``."""
    spec = spec.replace("{variant}", variant)
    root = Path(root).resolve()
    if spec.startswith("journal:"):
        path = Path(spec[len("journal:") :])
        return f"journal:{path if path.is_absolute() else root / path}"
    if spec.startswith("sqlite:///"):
        rest = spec[len("sqlite:///") :]
        if rest and rest != ":memory:" and not rest.startswith("/"):
            return f"sqlite:///{root / rest}"
        return spec
    if "://" not in spec:
        raise ValueError(f"tune.storage {spec!r}: an SQLAlchemy URL (sqlite:///…, postgresql://…) or journal:<file>")
    return spec


def open_storage(url: str) -> Any:
    """An Optuna storage for a resolved spec (sqlite waits up to 60 s for a lock instead of failing)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if url.startswith("journal:"):
        path = Path(url[len("journal:") :])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        db = url[len("sqlite:///") :].split("?")[0]
        if db and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def redact(url: str) -> str:
    """The storage URL with any password masked (it goes into MLflow tags and reports)."""
    if url.startswith(("journal:", "sqlite:")):
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - never leak a URL we cannot parse
        return url.split("://", 1)[0] + "://***"


# --------------------------------------------------------------------------- the job


class TuneJob(BaseModel):
    """Everything a tuning process needs, JSON-serialisable: a worker process gets it as a file."""

    model_config = ConfigDict(extra="forbid")

    variant: str
    train: TrainStageConfig
    tune: TuneConfig
    memes_path: str
    feature_dir: str
    feature_spec: str | None = None  # the feature cache's spec key; None: from the encoder
    feature_dim: int | None = None
    encoder: dict[str, Any] | None = None  # ClipEncoderConfig (needed by MGMCF's text encoder)
    region_features: dict[str, Any] | None = None
    regions: dict[str, Any] | None = None
    storage: str = ""  # resolved storage URL (resolve_storage)
    study_name: str | None = None
    parent_run_id: str | None = None
    stage: str | None = None
    root: str = "."

    @property
    def experiment(self) -> str:
        return self.tune.experiment_name(self.train.experiment)

    def with_(self, **fields: Any) -> TuneJob:
        return self.model_copy(update=fields)


@dataclass
class TuneData:
    """The data one process trains its trials on (loaded once, shared by its trials)."""

    memes: Any
    store: Any
    specs: list[Any]
    inputs: Any
    digest: str
    feature_spec: str


def load_data(job: TuneJob) -> TuneData:
    from memeops.data.consolidate import read_memes
    from memeops.data.features import FeatureStore
    from memeops.training.experiment import FeatureInputs, family_inputs, file_md5, variant_specs

    memes = read_memes(Path(job.memes_path))
    digest = file_md5(job.memes_path)
    encoder = None
    if job.encoder is not None and (job.feature_spec is None or job.train.variant(job.variant).model == "mgmcf"):
        from memeops.models.clip import ClipEncoderConfig, load_clip

        encoder = load_clip(ClipEncoderConfig.model_validate(job.encoder))
    spec_key = job.feature_spec or (encoder.spec_key if encoder is not None else None)
    dim = job.feature_dim or (encoder.dim if encoder is not None else None)
    if spec_key is None or dim is None:
        raise ValueError("tune job: give feature_spec + feature_dim, or an encoder config")
    store = FeatureStore(Path(job.feature_dir), spec_key)
    specs, _ = variant_specs(job.variant, memes, job.train)
    region_features = regions = None
    if job.region_features is not None:
        from memeops.data.mgmcf_inputs import RegionFeaturesConfig

        region_features = RegionFeaturesConfig.model_validate(job.region_features)
    if job.regions is not None:
        from memeops.vision.extract import RegionsConfig

        regions = RegionsConfig.model_validate(job.regions)
    family = family_inputs(job.train.variant(job.variant), memes, store, specs, encoder, region_features, regions)
    inputs = family.inputs if family is not None else FeatureInputs(memes, store, specs, dim)
    return TuneData(memes, store, specs, inputs, digest, spec_key)


def study_fingerprint(job: TuneJob, data_digest: str, feature_spec: str) -> str:
    """Names the study: the data, features, variant, shared trainer, space and budget (not n_trials
    or storage). A shared RDB then never mixes trials of different set-ups."""
    v = job.variant
    payload = {"data": data_digest, "features": feature_spec, "variant": job.train.variant(v).model_dump(mode="json"),
               "trainer": job.train.trainer_config(v).model_dump(mode="json"), "tasks": job.train.tasks_for(v),
               "space": {k: s.model_dump(mode="json") for k, s in job.tune.space_for(v).items()},
               "tune": job.tune.model_dump(mode="json", include={"epochs", "patience", "sampler_seed",
                                                                   "n_startup_trials", "pruner"})}  # fmt: skip
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:10]


def direction(job: TuneJob) -> str:
    return "maximize" if job.train.trainer_config(job.variant).monitor_mode == "max" else "minimize"


def make_sampler(job: TuneJob, worker: int = 0) -> Any:
    """Seeded TPE. Worker ``i`` of a parallel study seeds with ``sampler_seed + i``: with one seed
    for all, every worker would draw the same random start-up points (duplicate trials)."""
    import optuna

    return optuna.samplers.TPESampler(seed=job.tune.sampler_seed + worker, n_startup_trials=job.tune.n_startup_trials)


def load_study(job: TuneJob, storage: Any = None, *, sampler: Any = None) -> Any:
    import optuna

    return optuna.load_study(study_name=job.study_name, storage=storage or open_storage(job.storage),
                             sampler=sampler or make_sampler(job), pruner=job.tune.pruner.build())  # fmt: skip


def create_study(job: TuneJob, *, fresh: bool = True) -> Any:
    """Create ``job.study_name`` (deleting an older study of that name when ``fresh``) and enqueue
    the variant's untuned defaults as trial 0."""
    import optuna

    storage = open_storage(job.storage)
    if fresh:
        try:
            optuna.delete_study(study_name=job.study_name, storage=storage)
        except KeyError:
            pass
    study = optuna.create_study(study_name=job.study_name, storage=storage, direction=direction(job),
                                sampler=make_sampler(job), pruner=job.tune.pruner.build(), load_if_exists=not fresh)  # fmt: skip
    if not study.trials:
        space = job.tune.space_for(job.variant)
        defaults = default_params(space, job.variant, job.train)
        outside = [f"{k}={v}" for k, v in defaults.items() if not space[k].contains(v)]
        if outside:
            logger.warning("tune %s: defaults outside the search space (%s); trial 0 uses them anyway",
                           job.variant, ", ".join(outside))  # fmt: skip
        study.enqueue_trial(defaults, user_attrs={"defaults": True})
        study.set_user_attr("variant", job.variant)
        study.set_user_attr("monitor", job.train.trainer_config(job.variant).monitor)
    return study


def prepare(job: TuneJob, data: TuneData | None = None) -> tuple[TuneJob, TuneData]:
    """Validate the space against the model, resolve the storage, name the study."""
    job.train.variant(job.variant)
    check_space(job.tune.space_for(job.variant), job.variant, job.train)
    data = data or load_data(job)
    storage = resolve_storage(job.storage or job.tune.storage, job.variant, job.root)
    name = job.study_name or f"{STUDY_PREFIX}-{job.variant}-{study_fingerprint(job, data.digest, data.feature_spec)}"
    return job.with_(storage=storage, study_name=name), data


# --------------------------------------------------------------------------- one trial


class _TrialCallback:
    """Trainer callback: reports the validation monitor to the trial each epoch, prunes, and logs
    the epoch's curve to the trial's MLflow child run."""

    def __init__(self, trial: Any, monitor: str, client: Any = None, run_id: str | None = None):
        self.trial, self.key, self.client, self.run_id = trial, f"val/{monitor}", client, run_id
        self.last_epoch, self.last_value = 0, math.nan

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        import optuna

        value = float(metrics[self.key])
        self.last_epoch, self.last_value = epoch, value
        if self.client is not None and self.run_id is not None:
            from mlflow.entities import Metric

            from memeops.tracking.runs import metric_name

            now = int(time.time() * 1000)
            keep = {k: v for k, v in metrics.items() if k in (self.key, "val/loss", "train/loss", "train/lr")}
            self.client.log_batch(self.run_id, metrics=[Metric(metric_name(k), float(v), now, epoch) for k, v in keep.items()],
                                  synchronous=True)  # fmt: skip
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}: {self.key} {value:.4f}")

    def on_fit_end(self, result: Any) -> None:
        return None


def fit_trial(job: TuneJob, data: TuneData, overrides: Mapping[str, Any], run_dir: Path,
              callbacks: Sequence[object] = ()) -> Any:  # fmt: skip
    """Train the variant with ``overrides`` under the tuning budget; fit on TRAIN, select on VAL.

    The same model building as :func:`memeops.training.experiment.train_variant`, minus the scoring
    of the evaluation splits (a trial must never see test). Returns the trainer's FitResult.
    """
    from memeops.models.factory import build_model
    from memeops.training.experiment import variant_model_config
    from memeops.training.seeding import make_generator, seed_everything
    from memeops.training.trainer import fit

    cfg = apply_tuned(job.train, job.variant, overrides)
    base = cfg.trainer_config(job.variant)
    trainer_cfg = TrainConfig.model_validate({**base.model_dump(), **trial_trainer_overrides(base, job.tune)})
    model_cfg = variant_model_config(job.variant, cfg, data.inputs.model_dims())
    seed_everything(trainer_cfg.seed)
    model = build_model(cfg.variant(job.variant).model, model_cfg, data.specs)
    train_set = data.inputs.dataset("train", train=True, generator=make_generator(trainer_cfg.seed + 1))
    val_set = data.inputs.dataset("val")
    return fit(model, train_set, val_set, data.specs, trainer_cfg, run_dir, callbacks=callbacks, resume=False)


def _lineage(job: TuneJob, data: TuneData) -> dict[str, str]:
    from memeops.tracking.runs import lineage_tags

    return lineage_tags(stage=job.stage or f"tune@{job.variant}", variant=job.variant, seed=job.tune.sampler_seed,
                        data_digest=data.digest, root=job.root)  # fmt: skip


def make_objective(job: TuneJob, data: TuneData, lineage: Mapping[str, str] | None = None) -> Any:
    """The Optuna objective: one trial = one capped training run = one MLflow child run."""
    import mlflow
    import optuna

    from memeops.tracking.runs import ensure_experiment, flatten_params

    space = job.tune.space_for(job.variant)
    monitor = job.train.trainer_config(job.variant).monitor
    client = mlflow.MlflowClient() if job.parent_run_id else None
    experiment_id = ensure_experiment(job.experiment) if client is not None else None
    base_tags = dict(lineage or {})

    def objective(trial: optuna.Trial) -> float:
        params = {name: spec.suggest(trial, name) for name, spec in space.items()}
        overrides = params_to_overrides(params)
        run_id = None
        if client is not None:
            tags = {**base_tags, "mlflow.parentRunId": job.parent_run_id, TAG_TRIAL: str(trial.number),
                    TAG_STUDY: job.study_name, TAG_STATE: "RUNNING",
                    TAG_DEFAULTS: str(bool(trial.user_attrs.get("defaults"))).lower()}  # fmt: skip
            run = client.create_run(experiment_id, run_name=f"trial-{trial.number:03d}", tags=tags)
            run_id = run.info.run_id
            trial.set_user_attr("mlflow_run_id", run_id)
            from mlflow.entities import Param

            client.log_batch(run_id, params=[Param(k, v) for k, v in flatten_params(params).items()], synchronous=True)
        callback = _TrialCallback(trial, monitor, client, run_id)
        state, status, value = "FAIL", "FAILED", math.nan
        try:
            with tempfile.TemporaryDirectory(prefix="memeops-tune-") as tmp:
                result = fit_trial(job, data, overrides, Path(tmp), callbacks=[callback])
            value = float(result.best_value)
            if math.isnan(value):
                raise ValueError(f"trial {trial.number}: validation {monitor} is NaN")
            state, status = "COMPLETE", "FINISHED"
            return value
        except optuna.TrialPruned:
            state, status = "PRUNED", "FINISHED"
            raise
        except Exception as exc:
            if client is not None and run_id is not None:
                client.set_tag(run_id, "memeops.tune.error", " ".join(str(exc).split())[:500])
            raise
        finally:
            if client is not None and run_id is not None:
                client.set_tag(run_id, TAG_STATE, state)
                final = {"value": value} if state == "COMPLETE" else {}
                if state == "PRUNED":
                    final = {"pruned_at_epoch": callback.last_epoch, "pruned_value": callback.last_value}
                final["epochs_run"] = callback.last_epoch
                from mlflow.entities import Metric

                now = int(time.time() * 1000)
                client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in final.items()], synchronous=True)
                client.set_terminated(run_id, status)

    return objective


def run_trials(job: TuneJob, data: TuneData, n_trials: int, lineage: Mapping[str, str] | None = None,
               worker: int = 0) -> Any:  # fmt: skip
    """This process's share of the study: ``n_trials`` trials (failed ones recorded, not raised)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load_study(job, sampler=make_sampler(job, worker))
    if n_trials > 0:
        study.optimize(make_objective(job, data, lineage), n_trials=n_trials, catch=(Exception,), gc_after_trial=False)
    return study


# --------------------------------------------------------------------------- results


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) else float(f"{value:.6g}")
    return value


def tuning_report(job: TuneJob, study: Any) -> dict[str, Any]:
    """``reports/tuning/<variant>.json``: overrides to merge, best vs default value, trial counts."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        fails = [t.system_attrs.get("fail_reason", "") for t in trials if t.state == TrialState.FAIL]
        raise RuntimeError(f"tune {job.variant}: no trial completed ({len(trials)} run)"
                           + (f"; first failure: {fails[0]}" if fails else ""))  # fmt: skip
    best = study.best_trial
    default = next((t for t in trials if t.user_attrs.get("defaults")), None)
    default_value = default.value if default is not None and default.state == TrialState.COMPLETE else None
    maximize = direction(job) == "maximize"
    improvement = None
    if default_value is not None:
        improvement = (best.value - default_value) if maximize else (default_value - best.value)
    params = {k: _round(v) for k, v in sorted(best.params.items())}
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    base = job.train.trainer_config(job.variant)
    return {
        "variant": job.variant,
        "tuned": True,
        "study": job.study_name,
        "monitor": base.monitor,
        "direction": direction(job),
        "overrides": params_to_overrides(params),
        "best_params": params,
        "best_value": _round(best.value),
        "best_trial": best.number,
        "default_params": {k: _round(v) for k, v in sorted((default.params if default else {}).items())},
        "default_value": _round(default_value) if default_value is not None else None,
        "improvement": _round(improvement) if improvement is not None else None,
        "n_trials": {"total": len(trials), **counts},
        "budget": {"epochs": trial_trainer_overrides(base, job.tune)["epochs"],
                   "patience": trial_trainer_overrides(base, job.tune)["patience"], "n_trials": job.tune.n_trials},
    }  # fmt: skip


def untuned_report(variant: str) -> dict[str, Any]:
    """The file of a variant not in ``tune.variants``: no overrides, so ``train`` uses its params."""
    return {"variant": variant, "tuned": False, "overrides": {}}


def history_rows(study: Any) -> list[dict[str, Any]]:
    """One row per finished trial, by number: state, value (pruned: last reported), best so far."""
    from optuna.trial import TrialState

    maximize = study.direction.name == "MAXIMIZE"
    rows, best = [], None
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if t.state == TrialState.COMPLETE:
            value = t.value
            best = value if best is None or (value > best if maximize else value < best) else best
        elif t.state == TrialState.PRUNED and t.intermediate_values:
            value = t.intermediate_values[max(t.intermediate_values)]
        else:
            value = None
        rows.append({"trial": t.number, "state": t.state.name.lower(), "value": _round(value) if value is not None else None,
                     "best_value": _round(best) if best is not None else None,
                     "epochs": max(t.intermediate_values) if t.intermediate_values else 0})  # fmt: skip
    return rows


def write_outputs(report: Mapping[str, Any], output: Path, plot_csv: Path | None = None,
                  rows: Sequence[Mapping[str, Any]] = ()) -> None:  # fmt: skip
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if plot_csv is not None:
        import csv

        plot_csv.parent.mkdir(parents=True, exist_ok=True)
        with open(plot_csv, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=["trial", "state", "value", "best_value", "epochs"])
            writer.writeheader()
            writer.writerows(rows)


def study_plots(study: Any, folder: Path) -> dict[str, str]:
    """Optuna's matplotlib plots as PNGs: optimisation history, intermediate values and (with at
    least two complete trials) parameter importances. Returns ``{name: path or why skipped}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.exceptions import ExperimentalWarning
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, str] = {}
    n_complete = sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
    plots = {"optimization_history": ovm.plot_optimization_history, "intermediate_values": ovm.plot_intermediate_values,
             "param_importances": ovm.plot_param_importances}  # fmt: skip
    for name, plot in plots.items():
        if name == "param_importances" and n_complete < 2:
            out[name] = f"skipped: {n_complete} complete trial(s), importances need at least 2"
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                warnings.simplefilter("ignore", UserWarning)
                ax = plot(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            path = folder / f"{name}.png"
            fig.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(fig)
            out[name] = str(path)
        except Exception as exc:  # noqa: BLE001 - a plot must never fail the study
            out[name] = f"skipped: {' '.join(str(exc).split())[:200]}"
    return out


def finalize(job: TuneJob, study: Any, output: Path, plot_csv: Path | None = None, *,
             wall_s: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Write the tuning report (+ CSV); log plots, best value/params and the report to the parent run."""
    report = tuning_report(job, study)
    write_outputs(report, output, plot_csv, history_rows(study))
    if job.parent_run_id:
        import mlflow
        from mlflow.entities import Metric

        from memeops.tracking.runs import flatten_metrics

        client = mlflow.MlflowClient()
        metrics = {"best_value": report["best_value"], "default_value": report["default_value"],
                   "improvement": report["improvement"], "best_trial": report["best_trial"],
                   **{f"n_trials/{k}": v for k, v in report["n_trials"].items()},
                   **{f"best_params/{k}": v for k, v in report["best_params"].items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool)},
                   **({"wall_s": wall_s} if wall_s is not None else {})}  # fmt: skip
        now = int(time.time() * 1000)
        flat = flatten_metrics({k: v for k, v in metrics.items() if v is not None})
        client.log_batch(job.parent_run_id, metrics=[Metric(k, v, now, 0) for k, v in flat.items()], synchronous=True)
        client.set_tag(job.parent_run_id, "memeops.tune.best_params", json.dumps(report["best_params"], sort_keys=True))
        with tempfile.TemporaryDirectory(prefix="memeops-tune-plots-") as tmp:
            made = study_plots(study, Path(tmp) / "plots")
            for name, where in made.items():
                if where.startswith("skipped"):
                    client.set_tag(job.parent_run_id, f"memeops.tune.plot.{name}", where)
            client.log_artifacts(job.parent_run_id, str(Path(tmp) / "plots"), artifact_path="plots")
            client.log_artifact(job.parent_run_id, str(output), artifact_path="tuning")
            if plot_csv is not None:
                client.log_artifact(job.parent_run_id, str(plot_csv), artifact_path="tuning")
    return report


# --------------------------------------------------------------------------- entry points


def _parent_params(job: TuneJob) -> dict[str, Any]:
    base = job.train.trainer_config(job.variant)
    return {"variant": job.variant, "study": job.study_name, "storage": redact(job.storage),
            "n_trials": job.tune.n_trials, "sampler": {"kind": "tpe", "seed": job.tune.sampler_seed,
                                                      "n_startup_trials": job.tune.n_startup_trials},
            "pruner": job.tune.pruner.model_dump(), "trial_budget": trial_trainer_overrides(base, job.tune),
            "monitor": base.monitor, "space": {k: v.model_dump(exclude_none=True) for k, v in job.tune.space_for(job.variant).items()}}  # fmt: skip


def tune_variant(job: TuneJob, *, output: Path, plot_csv: Path | None = None, data: TuneData | None = None) -> dict[str, Any]:
    """Stage ``tune@<variant>`` in one process: a fresh study, ``tune.n_trials`` trials, outputs.

    A variant not in ``tune.variants`` just gets :func:`untuned_report`. Runs under one MLflow
    parent run (tracked_run: lineage tags, stage ``tune@<variant>``) that the trials nest under.
    """
    if job.variant not in job.tune.variants:
        job.train.variant(job.variant)
        write_outputs(untuned_report(job.variant), output, plot_csv)  # header-only CSV: the DVC plot exists
        return untuned_report(job.variant)
    from memeops.tracking.runs import tracked_run

    start = time.perf_counter()
    job, data = prepare(job, data)
    create_study(job, fresh=True)
    with tracked_run(experiment=job.experiment, run_name=f"tune-{job.variant}", stage=job.stage or f"tune@{job.variant}",
                     variant=job.variant, seed=job.tune.sampler_seed, data_digest=data.digest, params=_parent_params(job),
                     extra_tags={TAG_STUDY: job.study_name, "memeops.feature_spec": data.feature_spec},
                     system_metrics=False) as parent:  # fmt: skip
        job = job.with_(parent_run_id=parent.info.run_id)
        study = run_trials(job, data, job.tune.n_trials, _lineage(job, data))
        return finalize(job, study, output, plot_csv, wall_s=time.perf_counter() - start)


def split_trials(n_trials: int, n_workers: int) -> list[int]:
    """``n_trials`` over ``n_workers`` as evenly as possible (workers with 0 trials are dropped)."""
    if n_workers < 1:
        raise ValueError("n_workers must be >= 1")
    base, extra = divmod(n_trials, n_workers)
    return [base + (i < extra) for i in range(n_workers) if base + (i < extra) > 0]


def worker_command(job_file: Path, n_trials: int, worker: int = 0) -> list[str]:
    return [sys.executable, "-m", "memeops.training.tune", "--job", str(job_file), "--n-trials", str(n_trials),
            "--worker-index", str(worker)]  # fmt: skip


def launch_worker(job_file: Path, n_trials: int, *, worker: int = 0, env: Mapping[str, str] | None = None,
                  cwd: str | Path | None = None, log: Path | None = None) -> subprocess.Popen:  # fmt: skip
    """Start one worker process on the shared study (stdout/stderr to ``log`` when given)."""
    out = open(log, "w", encoding="utf-8") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(worker_command(job_file, n_trials, worker), env=dict(env) if env else None, cwd=cwd,
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    finally:
        if log is not None:
            out.close()  # the child holds its own descriptor


def start_parallel(job: TuneJob, data: TuneData | None = None) -> tuple[TuneJob, TuneData]:
    """Coordinator, before the workers: a fresh study with the defaults enqueued."""
    job, data = prepare(job, data)
    create_study(job, fresh=True)
    return job, data


def launch_local(job_file: Path, shares: Sequence[int], *, env: Mapping[str, str] | None = None,
                 log_dir: Path | None = None) -> list[int]:  # fmt: skip
    """Start one worker process per share at once, wait for all; their exit codes."""
    procs = [launch_worker(job_file, k, worker=i, env=env, log=(log_dir / f"worker{i}.log") if log_dir else None)
             for i, k in enumerate(shares)]  # fmt: skip
    return [p.wait() for p in procs]


def run_parallel(job: TuneJob, *, n_workers: int, output: Path, plot_csv: Path | None = None,
                 env: Mapping[str, str] | None = None, work_dir: Path | None = None,
                 data: TuneData | None = None, launcher: Any = None) -> dict[str, Any]:  # fmt: skip
    """``tune.n_trials`` trials over ``n_workers`` worker processes sharing one study and one MLflow
    parent run (the plain-Python core of flows/tune.py). Storage must be multi-process safe:
    ``journal:<file>`` (local processes), an RDB server URL (any machine), or sqlite for a couple of
    local workers. ``launcher(job_file, shares, log_dir) -> exit codes`` runs the workers
    (default :func:`launch_local`; the Prefect flow passes one that runs them as tasks)."""
    from memeops.tracking.runs import tracked_run

    start = time.perf_counter()
    job, data = start_parallel(job, data)
    with tracked_run(experiment=job.experiment, run_name=f"tune-{job.variant}", stage=job.stage or f"tune@{job.variant}",
                     variant=job.variant, seed=job.tune.sampler_seed, data_digest=data.digest, params=_parent_params(job),
                     extra_tags={TAG_STUDY: job.study_name, "memeops.tune.workers": str(n_workers)},
                     system_metrics=False) as parent:  # fmt: skip
        job = job.with_(parent_run_id=parent.info.run_id)
        with tempfile.TemporaryDirectory(prefix="memeops-tune-job-", dir=work_dir) as tmp:
            job_file = Path(tmp) / "job.json"
            job_file.write_text(job.model_dump_json(), encoding="utf-8")
            shares = split_trials(job.tune.n_trials, n_workers)
            if launcher is None:
                codes = launch_local(job_file, shares, env=env, log_dir=Path(tmp))
            else:
                codes = list(launcher(job_file, shares, Path(tmp)))
            if any(codes):
                logs = sorted(Path(tmp).glob("worker*.log"))
                tail = logs[-1].read_text(encoding="utf-8")[-2000:] if logs else ""
                raise RuntimeError(f"tune {job.variant}: worker exit codes {codes}; last worker output:\n{tail}")
        study = load_study(job)
        return finalize(job, study, output, plot_csv, wall_s=time.perf_counter() - start)


def worker_main(argv: Sequence[str] | None = None) -> int:
    """``python -m memeops.training.tune --job job.json --n-trials k``: one worker process."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m memeops.training.tune", description=worker_main.__doc__)
    parser.add_argument("--job", required=True, type=Path)
    parser.add_argument("--n-trials", required=True, type=int)
    parser.add_argument("--worker-index", type=int, default=0, help="offsets the sampler seed")
    args = parser.parse_args(argv)
    job = TuneJob.model_validate_json(args.job.read_text(encoding="utf-8"))
    if not job.study_name or not job.storage:
        raise ValueError("worker job needs study_name and a resolved storage (run the coordinator first)")
    data = load_data(job)
    study = run_trials(job, data, args.n_trials, _lineage(job, data), worker=args.worker_index)
    print(f"worker {os.getpid()}: {args.n_trials} trials on {job.study_name} ({len(study.trials)} in the study)")
    return 0


if __name__ == "__main__":
    raise SystemExit(worker_main())
