"""One variant's Optuna study: the job a tuning process runs (:class:`TuneJob`, JSON-serialisable
for worker processes), the data its trials share, the storage, and creating / loading the study.

The study is named by a fingerprint of the data, features, variant, trainer, space and budget, so
a shared storage never mixes trials of different set-ups; trial 0 is the variant's untuned
defaults. Optuna (heavy) is imported by the functions that use it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from memeops.config.train import TrainStageConfig
from memeops.data.consolidate import read_memes
from memeops.data.features import FeatureStore
from memeops.training.experiment import FeatureInputs, family_inputs, file_md5, variant_specs
from memeops.training.tune_config import TuneConfig, check_space, default_params

logger = logging.getLogger(__name__)

STUDY_PREFIX = "memeops"


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
    import optuna  # heavy; loaded only when a study is opened
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
        """The MLflow experiment of the study's runs."""
        return self.tune.experiment_name(self.train.experiment)

    def with_(self, **fields: Any) -> TuneJob:
        """A copy with ``fields`` replaced."""
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
    """The memes, feature store, task specs and model inputs of ``job``'s variant (loaded once per
    process; the CLIP encoder only when the job names no feature spec, or for MGMCF's text encoder)."""
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
    """Optuna's direction for the variant's validation monitor."""
    return "maximize" if job.train.trainer_config(job.variant).monitor_mode == "max" else "minimize"


def make_sampler(job: TuneJob, worker: int = 0) -> Any:
    """Seeded TPE. Worker ``i`` of a parallel study seeds with ``sampler_seed + i``: with one seed
    for all, every worker would draw the same random start-up points (duplicate trials)."""
    import optuna  # heavy; loaded only when a study is opened

    return optuna.samplers.TPESampler(seed=job.tune.sampler_seed + worker, n_startup_trials=job.tune.n_startup_trials)


def load_study(job: TuneJob, storage: Any = None, *, sampler: Any = None) -> Any:
    """The existing study ``job.study_name`` (a worker's view of the shared study)."""
    import optuna  # heavy; loaded only when a study is opened

    return optuna.load_study(study_name=job.study_name, storage=storage or open_storage(job.storage),
                             sampler=sampler or make_sampler(job), pruner=job.tune.pruner.build())  # fmt: skip


def create_study(job: TuneJob, *, fresh: bool = True) -> Any:
    """Create ``job.study_name`` (deleting an older study of that name when ``fresh``) and enqueue
    the variant's untuned defaults as trial 0."""
    import optuna  # heavy; loaded only when a study is opened

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
