"""One tuning trial = one training run under the tuning budget = one MLflow child run: the Optuna
objective, the trainer callback that reports and prunes, and a process's share of the trials.

A trial fits on TRAIN and selects on VAL through the one trainer; the test splits are never built.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import optuna
from mlflow.entities import Metric, Param

from memeops.models.factory import build_model
from memeops.tracking.runs import ensure_experiment, flatten_params, lineage_tags, metric_name
from memeops.training.experiment import variant_model_config
from memeops.training.fit_types import FitResult
from memeops.training.seeding import make_generator, seed_everything
from memeops.training.trainer import fit
from memeops.training.tune_config import trial_trainer_overrides
from memeops.training.tune_study import TuneData, TuneJob, load_study, make_sampler
from memeops.training.tuned import apply_tuned, params_to_overrides

TAG_TRIAL = "memeops.tune.trial_number"
TAG_STATE = "memeops.tune.state"
TAG_STUDY = "memeops.tune.study"
TAG_DEFAULTS = "memeops.tune.defaults"


class TrialCallback:
    """Trainer callback: reports the validation monitor to the trial each epoch, prunes, and logs
    the epoch's curve to the trial's MLflow child run."""

    def __init__(self, trial: Any, monitor: str, client: Any = None, run_id: str | None = None):
        self.trial, self.key, self.client, self.run_id = trial, f"val/{monitor}", client, run_id
        self.last_epoch, self.last_value = 0, math.nan

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """Log the epoch's curve, report the monitor to the trial, prune when Optuna says so."""
        value = float(metrics[self.key])
        self.last_epoch, self.last_value = epoch, value
        if self.client is not None and self.run_id is not None:
            now = int(time.time() * 1000)
            keep = {k: v for k, v in metrics.items() if k in (self.key, "val/loss", "train/loss", "train/lr")}
            self.client.log_batch(self.run_id, metrics=[Metric(metric_name(k), float(v), now, epoch) for k, v in keep.items()],
                                  synchronous=True)  # fmt: skip
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}: {self.key} {value:.4f}")

    def on_fit_end(self, result: Any) -> None:
        """Nothing to do: the objective logs the trial's final value."""
        return None


def fit_trial(job: TuneJob, data: TuneData, overrides: Mapping[str, Any], run_dir: Path,
              callbacks: Sequence[object] = ()) -> FitResult:  # fmt: skip
    """Train the variant with ``overrides`` under the tuning budget; fit on TRAIN, select on VAL.

    The same model building as :func:`memeops.training.experiment.train_variant`, minus the scoring
    of the evaluation splits (a trial must never see test). Returns the trainer's FitResult.
    """
    cfg = apply_tuned(job.train, job.variant, overrides)
    budget = trial_trainer_overrides(cfg.trainer_config(job.variant), job.tune)
    cfg = apply_tuned(cfg, job.variant, {"trainer": budget})  # the caps go through the one merge too
    trainer_cfg = cfg.trainer_config(job.variant)
    model_cfg = variant_model_config(job.variant, cfg, data.inputs.model_dims())
    seed_everything(trainer_cfg.seed)
    model = build_model(cfg.variant(job.variant).model, model_cfg, data.specs)
    train_set = data.inputs.dataset("train", train=True, generator=make_generator(trainer_cfg.seed + 1))
    val_set = data.inputs.dataset("val")
    return fit(model, train_set, val_set, data.specs, trainer_cfg, run_dir, callbacks=callbacks, resume=False)


def trial_lineage(job: TuneJob, data: TuneData) -> dict[str, str]:
    """The lineage tags of the study's runs (stage ``tune@<variant>``, data digest, git commit)."""
    return lineage_tags(stage=job.stage or f"tune@{job.variant}", variant=job.variant, seed=job.tune.sampler_seed,
                        data_digest=data.digest, root=job.root)  # fmt: skip


def make_objective(job: TuneJob, data: TuneData, lineage: Mapping[str, str] | None = None) -> Any:
    """The Optuna objective: one trial = one capped training run = one MLflow child run."""
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
            client.log_batch(run_id, params=[Param(k, v) for k, v in flatten_params(params).items()], synchronous=True)
        callback = TrialCallback(trial, monitor, client, run_id)
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
                now = int(time.time() * 1000)
                client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in final.items()], synchronous=True)
                client.set_terminated(run_id, status)

    return objective


def run_trials(job: TuneJob, data: TuneData, n_trials: int, lineage: Mapping[str, str] | None = None,
               worker: int = 0) -> Any:  # fmt: skip
    """This process's share of the study: ``n_trials`` trials (failed ones recorded, not raised)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load_study(job, sampler=make_sampler(job, worker))
    if n_trials > 0:
        study.optimize(make_objective(job, data, lineage), n_trials=n_trials, catch=(Exception,), gc_after_trial=False)
    return study
